"""``interplm normalize``: scale each SAE feature by its maximum activation (InterPLM), so activations lie in [0, 1]."""

from __future__ import annotations

from interplm_plugins.cli._common import add_allow_mismatch_option, add_sae_kind_option, progress_enabled


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "normalize",
        help="scale SAE features so that activations lie in [0, 1]",
        description="Find each feature's maximum activation over (a sample of) an embedding store and fold it into the weights.",
    )
    p.add_argument("sae", help="SAE weights (.safetensors or InterPLM ae.pt)")
    p.add_argument("--store", required=True, help="embedding store the maxima are taken over")
    p.add_argument("--out", required=True, help="normalised SAE (.safetensors; its .json is written beside it)")
    p.add_argument("--max-residues", type=int, default=None, help="sample at most this many residues (default: all)")
    add_sae_kind_option(p)
    add_allow_mismatch_option(p)
    p.set_defaults(run=run)


def run(args) -> int:
    import numpy as np

    from interplm_plugins.core.plm.store import EmbeddingStore
    from interplm_plugins.core.sae.files import load_sae, save_sae
    from interplm_plugins.core.sae.normalize import feature_max_activations, normalize_sae
    from interplm_plugins.core.sae.provenance import check_store_matches_sae

    store = EmbeddingStore(args.store)
    sae = load_sae(args.sae, plm_name=store.metadata.get("plm"), layer=store.metadata.get("layer"), kind=args.sae_kind)
    check_store_matches_sae(sae, store, allow_mismatch=args.allow_mismatch, source=args.sae)
    maxes = feature_max_activations(sae, store, max_residues=args.max_residues, progress=progress_enabled(args))
    save_sae(normalize_sae(sae, maxes), args.out)
    print(f"normalised {sae.d_hidden} features ({int((maxes == 0).sum())} never active, median max {np.median(maxes):.3g}): {args.out}")
    return 0
