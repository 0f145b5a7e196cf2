"""``interplm cluster``: UMAP + HDBSCAN clusters of SAE features, stored in the feature database."""

from __future__ import annotations

import argparse

from interplm_plugins.cli._common import add_allow_mismatch_option, add_sae_kind_option
from interplm_plugins.errors import InterPLMError


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "cluster",
        help="cluster SAE features by decoder direction (UMAP + HDBSCAN) into the feature database",
        description=(
            "Embed the SAE's unit-normalised decoder directions with UMAP (cosine), cluster them with HDBSCAN, and "
            "store each feature's cluster (-1 = unclustered) and 2-D map position in the database, where the "
            "PyMOL and napari plugins show a feature's cluster neighbours. --out also draws the map as a PNG, "
            "coloured by each feature's best concept."
        ),
    )
    p.add_argument("database", help="feature database (.sqlite) built from this SAE")
    p.add_argument("--sae", required=True, help="the SAE file the database was built with")
    add_sae_kind_option(p)
    add_allow_mismatch_option(p)
    p.add_argument("--out", help="write the map as this PNG")
    p.add_argument("--min-cluster-size", type=int, default=5, help="HDBSCAN's smallest cluster (default 5)")
    p.add_argument("--min-samples", type=int, help="HDBSCAN's density neighbourhood (default: the min cluster size)")
    p.add_argument("--n-neighbors", type=int, default=15, help="UMAP neighbours (default 15, capped for small SAEs)")
    p.add_argument("--seed", type=int, default=0, help="UMAP seed (default 0): the same seed gives the same map")
    p.add_argument("--profiles", metavar="FASTA", help="also cluster by co-activation over these proteins' residues")
    p.add_argument("--plm", help="ESM-2 for --profiles: checkpoint path or hub name (default: the embedded demo)")
    p.add_argument("--profile-weight", type=float, default=0.5, help="weight of the profiles against directions (default 0.5)")
    p.add_argument("--max-residues", type=int, default=4096, help="residues sampled for --profiles (default 4096)")
    p.set_defaults(run=run)


def _profiles(args: argparse.Namespace, sae):
    """Activation profiles of the SAE over the residues of ``--profiles``' proteins."""
    import numpy as np

    from interplm_plugins.core.inputs.sequences import read_fasta
    from interplm_plugins.core.interpret.clusters import activation_profiles
    from interplm_plugins.core.plm.loading import load_plm
    from interplm_plugins.core.sae.encode import iter_feature_activations
    from interplm_plugins.core.sae.provenance import check_sae_matches_plm

    plm = load_plm(args.plm or "demo")
    layer = sae.config.plm_layer if sae.config.plm_layer is not None else plm.num_layers
    check_sae_matches_plm(sae, plm, layer, allow_mismatch=args.allow_mismatch, source=args.sae)
    acts = [a for _, a in iter_feature_activations(plm, sae, layer, read_fasta(args.profiles), progress=not args.quiet)]
    return activation_profiles(np.concatenate(acts), max_residues=args.max_residues, seed=args.seed)


def run(args: argparse.Namespace) -> int:
    from interplm_plugins.core.interpret.clusters import cluster_database
    from interplm_plugins.core.sae.files import load_sae

    if args.plm and not args.profiles:
        raise InterPLMError("--plm is only used with --profiles")
    sae = load_sae(args.sae, kind=args.sae_kind)
    clusters = cluster_database(
        args.database, sae,
        plot=args.out,
        profiles=_profiles(args, sae) if args.profiles else None,
        profile_weight=args.profile_weight,
        min_cluster_size=args.min_cluster_size,
        min_samples=args.min_samples,
        n_neighbors=args.n_neighbors,
        seed=args.seed,
        allow_mismatch=args.allow_mismatch,
    )  # fmt: skip
    sizes = sorted((int((clusters.cluster == c).sum()) for c in range(clusters.num_clusters)), reverse=True)
    shown = f" (sizes {', '.join(map(str, sizes[:10]))}{', ...' if len(sizes) > 10 else ''})" if sizes else ""
    merged = clusters.params["duplicates_merged"]
    twins = f", {merged} near-duplicates share another feature's map point" if merged else ""
    print(f"{clusters.cluster.size} features: {clusters.num_clusters} clusters{shown}, {clusters.num_noise} unclustered{twins}; stored in {args.database}")
    if args.out:
        print(f"map written to {args.out}")
    return 0
