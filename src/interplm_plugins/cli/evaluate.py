"""``interplm evaluate``: reconstruction, sparsity and fidelity (masked-LM loss recovered) of an SAE."""

from __future__ import annotations

from interplm_plugins.cli._common import add_allow_mismatch_option, add_model_option, add_sae_kind_option, print_json_or_table, progress_enabled


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "evaluate",
        help="MSE, variance explained, L0, dead features and loss recovered of an SAE",
        description=(
            "Reconstruction and sparsity on an embedding store; with --fasta, also the fraction of ESM-2's "
            "masked-LM loss recovered when the SAE reconstruction replaces the layer (against zero-ablation)."
        ),
    )
    p.add_argument("sae", help="SAE weights")
    p.add_argument("--store", required=True, help="embedding store (held-out proteins, ideally)")
    p.add_argument("--max-residues", type=int, default=100_000, help="residues sampled (default 100000)")
    p.add_argument("--fasta", help="proteins for the loss-recovered measurement")
    p.add_argument("--max-proteins", type=int, default=100, help="proteins used for loss recovered (default 100)")
    add_model_option(p)
    add_sae_kind_option(p)
    add_allow_mismatch_option(p)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(run=run)


def run(args) -> int:
    from interplm_plugins.core.inputs.sequences import read_fasta
    from interplm_plugins.core.plm.loading import load_plm
    from interplm_plugins.core.plm.store import EmbeddingStore
    from interplm_plugins.core.sae.evaluate import evaluate_sae, loss_recovered
    from interplm_plugins.core.sae.files import load_sae
    from interplm_plugins.core.sae.provenance import check_sae_matches_plm, check_store_matches_sae

    store = EmbeddingStore(args.store)
    sae = load_sae(args.sae, plm_name=store.metadata.get("plm"), layer=store.metadata.get("layer"), kind=args.sae_kind)
    check_store_matches_sae(sae, store, allow_mismatch=args.allow_mismatch, source=args.sae)
    results: dict = evaluate_sae(sae, store, max_residues=args.max_residues, progress=progress_enabled(args))
    if args.fasta:
        plm = load_plm(args.model)
        layer = sae.config.plm_layer if sae.config.plm_layer is not None else int(store.metadata["layer"])
        check_sae_matches_plm(sae, plm, layer, allow_mismatch=args.allow_mismatch, source=args.sae)
        fidelity = loss_recovered(plm, sae, read_fasta(args.fasta), layer, max_proteins=args.max_proteins, progress=progress_enabled(args))
        results.update(fidelity)
    print_json_or_table(results, args.json)
    return 0
