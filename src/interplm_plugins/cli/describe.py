"""``interplm describe``: Claude descriptions of SAE features, scored on held-out proteins, into the database."""

from __future__ import annotations

import argparse

from interplm_plugins.cli._ranges import parse_ranges
from interplm_plugins.errors import InterPLMError


def add_parser(subparsers) -> None:
    from interplm_plugins.core.interpret.describe import API_KEY_ENV, DEFAULT_MODEL

    p = subparsers.add_parser(
        "describe",
        help="describe features with Claude and score each description on held-out proteins",
        description=(
            "For each feature, Claude reads half of its top and quantile example proteins (windows around the peak, "
            "per-residue activations, Swiss-Prot annotations, matched concepts) and writes a description; a second "
            "request predicts per-residue activations of the other half from the description alone, and the score is "
            "the Pearson correlation of predicted and real activations. Descriptions and scores are stored in the "
            f"database. The API key is read from {API_KEY_ENV} only."
        ),
    )
    p.add_argument("database", help="feature database (.sqlite); descriptions are added to it")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--features", help="features to describe, e.g. 1,2,5-9")
    which.add_argument("--top", type=int, metavar="N", help="describe the N features with the best concept matches")
    p.add_argument("--llm", default=DEFAULT_MODEL, metavar="MODEL", help=f"Claude model (default {DEFAULT_MODEL})")
    p.add_argument("--uniprot", metavar="FILE", help="UniProt file (flat, XML or TSV) whose annotations go into the prompts")
    p.add_argument("--base-url", help="Messages API base URL (default: the SDK's, i.e. Anthropic's)")
    p.add_argument("--examples", type=int, default=10, metavar="K", help="top examples per feature, plus its quantile examples (default 10)")
    p.add_argument("--max-attempts", type=int, default=6, help="attempts per request on rate limits or overload (default 6)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from interplm_plugins.core.database.schema import FeatureDatabase
    from interplm_plugins.core.interpret.describe import LLMClient, annotations_from_uniprot, describe_features, select_features

    if args.top is not None and args.top < 1:
        raise InterPLMError(f"--top must be >= 1, got {args.top}")
    llm = LLMClient(args.llm, base_url=args.base_url, max_attempts=args.max_attempts)  # fails first without a key
    if args.features is not None:
        features = list(dict.fromkeys(parse_ranges(args.features, "--features")))  # once each, in the order given
    else:
        with FeatureDatabase(args.database) as db:
            features = select_features(db, args.top)
    annotations = annotations_from_uniprot(args.uniprot) if args.uniprot else None
    results = describe_features(args.database, features, llm, top_k=args.examples, annotations=annotations, progress=not args.quiet)
    for r in results:
        score = "unscored" if r.score is None else f"r={r.score:+.3f}"
        print(f"feature {r.feature} ({score}, {r.n_proteins} proteins): {r.description}")
        if r.note:
            print(f"  note: {r.note}")
    print(f"{len(results)} description(s) by {llm.model} stored in {args.database}")
    return 0
