"""``interplm features``: the most active SAE features of sequences (no structure needed), with their concepts."""

from __future__ import annotations

import argparse

from interplm_plugins.cli._common import add_pipeline_options, add_precision_option, load_pipeline_from_args


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "features",
        help="the most active SAE features of a sequence or FASTA file, with their concept matches",
        description=(
            "Embed each protein and print its --top most active features (by maximum activation) with the best "
            "concept each matches in the feature database. With --out PREFIX, also write PREFIX.proteins.tsv, "
            "PREFIX.residues.tsv (per residue its --residue-top features) and PREFIX.json."
        ),
    )
    p.add_argument("query", metavar="FASTA_OR_SEQUENCE", help="a FASTA file, or one protein sequence in one-letter code")
    p.add_argument("--top", type=int, default=10, help="features per protein (default 10)")
    p.add_argument("--residue-top", type=int, default=5, help="features per residue in the residue table (default 5)")
    p.add_argument("--out", help="prefix of the TSV and JSON files to write")
    add_pipeline_options(p)
    add_precision_option(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from interplm_plugins.core.inputs.references import read_references
    from interplm_plugins.core.interpret.features import format_report, sequence_features, write_report
    from interplm_plugins.errors import InterPLMError

    if args.top < 1 or args.residue_top < 1:
        raise InterPLMError("--top and --residue-top must be at least 1")
    records = read_references(args.query, "query")  # before the model loads: a bad query fails fast
    pipeline = load_pipeline_from_args(args)
    report = sequence_features(pipeline, records, top=args.top, residue_top=args.residue_top)
    print(format_report(report, records))
    if args.out:
        for path in write_report(report, args.out):
            print(path)
    return 0
