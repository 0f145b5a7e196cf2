"""``interplm train``: a sparse autoencoder on an embedding store, checkpointed and resumable."""

from __future__ import annotations

from interplm_plugins.cli._common import add_precision_option, precision_from_args, progress_enabled
from interplm_plugins.core.sae.kinds import KINDS


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "train",
        help="train a sparse autoencoder (ReLU-L1, TopK, BatchTopK, JumpReLU or Matryoshka BatchTopK) on stored embeddings",
        description=(
            "Train an SAE on an embedding store written by `interplm embed`. Checkpoints go to OUT every "
            "--checkpoint-every steps; rerunning the same command after an interruption resumes exactly. "
            "Writes OUT/sae.safetensors (+ .json config) and OUT/train_log.jsonl. Under torchrun "
            "(torchrun --nproc_per_node N -m interplm_plugins.cli train ...) the processes share each batch "
            "(data parallel; see docs/DISTRIBUTED.md)."
        ),
    )
    p.add_argument("store", help="embedding store folder")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--kind", choices=KINDS, default="relu", help="SAE kind (default relu, InterPLM's; see docs/SAE.md)")
    width = p.add_mutually_exclusive_group()
    width.add_argument("--width", type=int, help="number of features")
    width.add_argument("--expansion", type=int, default=8, help="features per embedding dimension (default 8)")
    p.add_argument("--k", type=int, default=32, help="active features per residue for topk/batchtopk/matryoshka (default 32)")
    p.add_argument("--l1", type=float, default=0.06, help="L1 coefficient of the ReLU SAE (default 0.06)")
    p.add_argument("--l0", type=float, default=0.1, help="L0 coefficient of the JumpReLU SAE, per active feature in squared-error units (default 0.1)")
    p.add_argument("--prefixes", help="matryoshka: nested prefix ends, e.g. 256,512,1024 (default: width/8, width/4, width/2)")
    p.add_argument("--steps", type=int, default=20_000, help="optimisation steps (default 20000)")
    p.add_argument("--batch-size", type=int, default=2048, help="residues per step (default 2048)")
    p.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (default 1e-3)")
    p.add_argument("--warmup", type=int, default=500, help="learning-rate warm-up steps (default 500)")
    p.add_argument("--no-dead-remedy", action="store_true", help="no resampling / auxiliary loss for dead features")
    p.add_argument("--checkpoint-every", type=int, default=500, help="steps between checkpoints (default 500)")
    p.add_argument("--seed", type=int, default=0)
    add_precision_option(p, "the SAE's matrix products (weights, optimiser state, loss and the saved SAE stay float32)")
    p.add_argument("--no-resume", action="store_true", help="ignore an existing checkpoint in OUT")
    p.set_defaults(run=run)


def run(args) -> int:
    from interplm_plugins.cli._ranges import parse_ranges
    from interplm_plugins.core.plm.store import EmbeddingStore
    from interplm_plugins.core.sae.kinds import K_KINDS
    from interplm_plugins.core.sae.matryoshka import default_prefixes
    from interplm_plugins.core.sae.model import SAEConfig
    from interplm_plugins.core.sae.train import SAE_NAME, TrainConfig, train_sae

    precision = precision_from_args(args)
    store = EmbeddingStore(args.store)
    width = args.width or store.dim * args.expansion
    prefixes = None
    if args.kind == "matryoshka":
        prefixes = sorted(set(parse_ranges(args.prefixes, "--prefixes"))) if args.prefixes else default_prefixes(width)
    sparsity = {"relu": args.l1, "jumprelu": args.l0}.get(args.kind, 0.0)
    sae_config = SAEConfig(
        d_in=store.dim, d_hidden=width, kind=args.kind, k=args.k if args.kind in K_KINDS else None, l1_coefficient=sparsity,
        prefixes=prefixes,
    )  # fmt: skip
    config = TrainConfig(
        steps=args.steps, batch_size=args.batch_size, lr=args.lr, warmup_steps=args.warmup,
        dead_feature_remedy=not args.no_dead_remedy, checkpoint_every=args.checkpoint_every, seed=args.seed, precision=precision,
    )  # fmt: skip
    from interplm_plugins.core import parallel
    from interplm_plugins.core.sae.distributed import train_sae_distributed

    if parallel.is_distributed():  # launched by torchrun: data-parallel over the job's processes
        with parallel.process_group() as env:
            sae = train_sae_distributed(
                store, sae_config, config, args.out, resume=not args.no_resume, progress=progress_enabled(args)
            )
            if not env.is_main:
                return 0
    else:
        sae = train_sae(store, sae_config, config, args.out, resume=not args.no_resume, progress=progress_enabled(args))
    print(f"trained {sae.kind} SAE {sae.d_in} -> {sae.d_hidden} on layer {sae.config.plm_layer} ({precision} compute): {args.out}/{SAE_NAME}")
    return 0
