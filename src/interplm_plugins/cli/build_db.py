"""``interplm build-db``: the SQLite feature database (statistics, examples, concept matches) in one pass."""

from __future__ import annotations

from interplm_plugins.cli._common import add_pipeline_options, load_pipeline_from_args, progress_enabled


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "build-db",
        help="build the feature database of an SAE",
        description=(
            "Run ESM-2 and the (normalised) SAE over proteins once, and write one SQLite file with each feature's "
            "activation frequency, maximum, top and quantile examples, and, with --concepts, its Swiss-Prot concept "
            "matches (threshold chosen on validation proteins, scored on test proteins). Written atomically: an "
            "interrupted build leaves any previous database intact."
        ),
    )
    p.add_argument("fasta", help="proteins to scan (.fasta); with --concepts, include the annotated proteins")
    p.add_argument("--out", required=True, help="database file (.sqlite)")
    add_pipeline_options(p, database=False)
    p.add_argument("--concepts", help="folder written by `interplm concepts`")
    p.add_argument("--top-k", type=int, default=10, help="top examples kept per feature (default 10)")
    p.add_argument("--matches-per-concept", type=int, default=20, help="best features stored per concept (default 20)")
    p.add_argument("--toks-per-batch", type=int, default=4096)
    p.set_defaults(run=run)


def run(args) -> int:
    from interplm_plugins.core.annotate import build_database
    from interplm_plugins.core.concepts import ConceptLabels
    from interplm_plugins.core.sequences import read_fasta

    pipeline = load_pipeline_from_args(args)
    records = read_fasta(args.fasta)
    labels = ConceptLabels.load(args.concepts) if args.concepts else None
    sources = [args.fasta] + ([args.concepts] if args.concepts else [])
    path = build_database(
        pipeline, records, args.out, labels=labels, matches_per_concept=args.matches_per_concept, top_k=args.top_k,
        toks_per_batch=args.toks_per_batch, data_sources=sources, progress=progress_enabled(args),
    )  # fmt: skip
    print(f"feature database of {pipeline.num_features} features over {len(records)} proteins: {path}")
    return 0
