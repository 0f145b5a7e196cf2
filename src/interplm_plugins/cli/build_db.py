"""``interplm build-db``: the SQLite feature database (statistics, examples, concept matches) in one pass."""

from __future__ import annotations

from interplm_plugins.cli._common import add_concept_options, add_pipeline_options, load_concept_halves, load_pipeline_from_args, progress_enabled


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "build-db",
        help="build the feature database of an SAE",
        description=(
            "Run ESM-2 and the (normalised) SAE over proteins once, and write one SQLite file with each feature's "
            "activation frequency, maximum, top and quantile examples, and, with --concepts, its Swiss-Prot concept "
            "matches: each concept's best features on the validation half, each at its validation threshold, with the "
            "test metrics there; queries rank by validation F1 and report test F1, and show no concept below "
            "--concept-floor. Written atomically: an "
            "interrupted build leaves any previous database intact."
        ),
    )
    p.add_argument("fasta", help="proteins to scan (.fasta); with --concepts, include the annotated proteins")
    p.add_argument("--out", required=True, help="database file (.sqlite)")
    add_pipeline_options(p, database=False)
    add_concept_options(p, required=False)
    p.add_argument("--top-k", type=int, default=10, help="top examples kept per feature (default 10)")
    p.add_argument("--matches-per-concept", type=int, default=20, help="best features stored per concept (default 20)")
    p.add_argument(
        "--concept-floor", type=float, default=0.2,
        help="validation F1 below which a feature has 'no concept match' (default 0.2; a query can ask for another)",
    )  # fmt: skip
    p.add_argument("--toks-per-batch", type=int, default=4096)
    p.set_defaults(run=run)


def run(args) -> int:
    from interplm_plugins.core.database.from_pipeline import build_database
    from interplm_plugins.core.inputs.sequences import read_fasta

    pipeline = load_pipeline_from_args(args)
    records = read_fasta(args.fasta)
    halves, eligibility = load_concept_halves(args)
    sources = [args.fasta] + ([args.concepts] if args.concepts else [])
    path = build_database(
        pipeline, records, args.out, halves=halves, eligibility=eligibility, matches_per_concept=args.matches_per_concept,
        concept_floor=args.concept_floor, top_k=args.top_k,
        toks_per_batch=args.toks_per_batch, data_sources=sources, progress=progress_enabled(args),
    )  # fmt: skip
    print(f"feature database of {pipeline.num_features} features over {len(records)} proteins: {path}")
    return 0
