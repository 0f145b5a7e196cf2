"""``interplm embed``: FASTA -> per-residue ESM-2 embeddings in an on-disk store (resumable)."""

from __future__ import annotations

from interplm_plugins.cli._common import add_model_option, add_precision_option, precision_from_args, progress_enabled


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "embed",
        help="embed proteins with ESM-2 into an on-disk embedding store",
        description=(
            "Run ESM-2 over every protein of a FASTA file and store the chosen layer's per-residue embeddings "
            "(BOS/EOS removed) as memory-mapped shards. Proteins longer than 1,022 residues are embedded in "
            "overlapping windows. An interrupted run resumes where it stopped. Under torchrun "
            "(torchrun --nproc_per_node N -m interplm_plugins.cli embed ...) the proteins are shared among the "
            "processes (see docs/DISTRIBUTED.md)."
        ),
    )
    p.add_argument("fasta", help="protein FASTA file (.gz ok)")
    p.add_argument("--out", required=True, help="store folder (one layer), or parent folder of layer_<n>/ (several)")
    add_model_option(p)
    p.add_argument("--layer", type=int, action="append", required=True, help="layer to store (repeat for several)")
    p.add_argument("--toks-per-batch", type=int, default=4096, help="token budget per forward pass (default 4096)")
    p.add_argument("--shard-residues", type=int, default=200_000, help="residues per shard file (default 200000)")
    p.add_argument("--dtype", choices=("float32", "float16"), default="float32",
                   help="stored precision of the embeddings (default float32); the compute precision is --precision")
    add_precision_option(p, "the ESM-2 forward pass")
    p.add_argument("--split", choices=("train", "valid", "test"), help="embed only proteins of this split")
    p.add_argument("--no-resume", action="store_true", help="start afresh even if the store exists")
    p.set_defaults(run=run)


def run(args) -> int:
    from interplm_plugins.core.inputs.sequences import protein_split, read_fasta
    from interplm_plugins.core.plm.embed import embed_to_store
    from interplm_plugins.core.plm.loading import load_plm

    precision = precision_from_args(args)
    records = read_fasta(args.fasta)
    if args.split:
        records = [r for r in records if protein_split(r.id) == args.split]
    from interplm_plugins.core import parallel
    from interplm_plugins.core.plm.distributed import embed_to_store_distributed

    options = dict(toks_per_batch=args.toks_per_batch, shard_residues=args.shard_residues, dtype=args.dtype,
                   resume=not args.no_resume, progress=progress_enabled(args), precision=precision)  # fmt: skip
    if parallel.is_distributed():  # launched by torchrun: the proteins are shared among the processes
        with parallel.process_group() as env:
            plm = load_plm(args.model, device=parallel.default_device(env))
            stores = embed_to_store_distributed(plm, records, args.layer, args.out, **options)
            if not env.is_main:
                return 0
    else:
        plm = load_plm(args.model)
        stores = embed_to_store(plm, records, args.layer, args.out, **options)
    for layer, store in stores.items():
        print(f"layer {layer}: {len(store)} proteins, {store.num_residues} residues x {store.dim} -> {store.path}")
    return 0
