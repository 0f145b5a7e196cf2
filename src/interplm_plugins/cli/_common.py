"""Options and helpers shared by the subcommands (one place for the model/SAE/database flags)."""

from __future__ import annotations

import argparse
import json


def add_model_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        "--plm",
        dest="model",
        default="demo",
        help="ESM-2: a fair-esm hub name (esm2_t6_8M_UR50D ...), a local checkpoint path, a Hugging Face repo id "
        "(facebook/esm2_t6_8M_UR50D[@revision]) or folder, or 'demo' (default: the embedded demo model)",
    )


def add_precision_option(parser: argparse.ArgumentParser, what: str = "the ESM-2 forward pass (the SAE encode stays float32)") -> None:
    """--precision {fp32,bf16}: the compute precision of ``what`` (never the stored one: that is ``embed --dtype``).

    Checked by :func:`precision_from_args` (a bad value is the one-line error of every other bad
    input, not argparse's usage text)."""
    from interplm_plugins.core.plm.precision import DEFAULT_PRECISION, PRECISIONS

    parser.add_argument(
        "--precision",
        metavar="{" + ",".join(PRECISIONS) + "}",
        default=DEFAULT_PRECISION,
        help=f"compute precision of {what} (default {DEFAULT_PRECISION}): bf16 runs the matrix products in bfloat16 with float32 "
        "accumulation, float32 where it matters (docs/PRECISION.md); not the stored precision (that is `interplm embed --dtype`)",
    )


def precision_from_args(args: argparse.Namespace) -> str:
    """The checked --precision of a command that has it (``"fp32"`` for one that has not)."""
    from interplm_plugins.core.plm.precision import DEFAULT_PRECISION, check_precision

    return check_precision(getattr(args, "precision", None) or DEFAULT_PRECISION)


def add_sae_kind_option(parser: argparse.ArgumentParser) -> None:
    from interplm_plugins.core.sae.kinds import KINDS

    parser.add_argument(
        "--sae-kind", choices=KINDS, help="how an InterPLM/dictionary_learning ae.pt encodes (default: from its keys and a config.json beside it)"
    )


def add_allow_mismatch_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--allow-mismatch",
        action="store_true",
        help="use an SAE with another PLM, or a database with another SAE, than the ones they were made with (a warning instead of an error)",
    )


def add_pipeline_options(parser: argparse.ArgumentParser, database: bool = True, normalize: bool = True) -> None:
    """--model, --sae, --sae-kind, --layer (and --db): the parts of a :class:`~interplm_plugins.core.interpret.pipeline.Pipeline`;
    --allow-mismatch; with ``normalize``, --normalize-with (commands whose thresholds need a normalised SAE)."""
    add_model_option(parser)
    parser.add_argument(
        "--sae",
        help="SAE weights (.safetensors with its .json, or InterPLM's ae.pt), a Hub spec (hf://owner/repo[@rev]/path) or a "
        "published name (interplm-esm2-8m/layer_4, interprot-esm2-650m/l24_sae4096; docs/MODELS.md); default: the embedded demo SAE",
    )
    add_sae_kind_option(parser)
    parser.add_argument("--layer", type=int, help="layer the SAE reads (default: recorded in the SAE's config)")
    if database:
        parser.add_argument("--db", help="feature database (default: the embedded demo database with the demo SAE)")
    if normalize:
        parser.add_argument("--normalize-with", metavar="STORE", help="embedding store to normalise an un-normalised SAE over first (default: refuse it)")
    add_allow_mismatch_option(parser)


def load_pipeline_from_args(args: argparse.Namespace, require_normalized: bool = True):
    """The pipeline the options of :func:`add_pipeline_options` name, checked (see ``core.interpret.pipeline.load_pipeline``),
    in the compute precision of --precision where the command has it (:func:`add_precision_option`).

    Each command builds its own: the plugins' session pipeline (``interplm_plugins.session``) is not the command line's.
    """
    from interplm_plugins.core.interpret.pipeline import load_pipeline

    model = None if args.model in (None, "demo") else args.model
    database = getattr(args, "db", None)
    store = getattr(args, "normalize_with", None)
    precision = precision_from_args(args)  # before any model loads
    return load_pipeline(
        model=model, sae=args.sae, database=database, layer=args.layer, sae_kind=args.sae_kind, allow_mismatch=args.allow_mismatch,
        require_normalized=require_normalized, normalize_store=store, precision=precision,
    )  # fmt: skip


def progress_enabled(args: argparse.Namespace) -> bool:
    """Progress bars (on stderr) unless ``interplm -q``."""
    return not getattr(args, "quiet", False)


def print_json_or_table(rows: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(rows, indent=2, default=str))
        return
    width = max(len(k) for k in rows) if rows else 0
    for key, value in rows.items():
        text = f"{value:.4g}" if isinstance(value, float) else str(value)
        print(f"{key:<{width}}  {text}")


def add_concept_options(parser: argparse.ArgumentParser, required: bool, test_set: bool = False) -> None:
    """--concepts (and --test-concepts): the annotated proteins a concept evaluation chooses and scores on."""
    parser.add_argument("--concepts", required=required, help="folder written by `interplm concepts` (its validation/test halves)")
    if test_set:
        parser.add_argument(
            "--test-concepts",
            help="a second `interplm concepts` folder: choose each concept's feature on all of --concepts, score on all of this one",
        )


def load_concept_halves(args: argparse.Namespace):
    """``(ConceptHalves, Eligibility)`` from --concepts [--test-concepts], or ``(None, None)`` without --concepts."""
    from interplm_plugins.core.concepts import ConceptHalves, ConceptLabels, Eligibility

    if not getattr(args, "concepts", None):
        return None, None
    labels = ConceptLabels.load(args.concepts)
    test_folder = getattr(args, "test_concepts", None)
    halves = ConceptHalves.from_separate_sets(labels, ConceptLabels.load(test_folder)) if test_folder else ConceptHalves.from_splits(labels)
    return halves, Eligibility.from_settings(labels.settings)
