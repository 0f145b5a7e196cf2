"""``interplm mutate``: an in-silico mutation scan of a structure's chains or a FASTA record."""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from interplm_plugins.cli._common import add_pipeline_options, load_pipeline_from_args, progress_enabled
from interplm_plugins.errors import InterPLMError

_STRUCTURE_SUFFIXES = (".pdb", ".ent", ".cif", ".mmcif")


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "mutate",
        help="in-silico mutation scan: how each single-residue mutant changes one SAE feature",
        description=(
            "Embed every single-residue mutant of the chosen positions (one forward batch per position, cached) and report "
            "the change of the feature's activation at the mutated residue and summed over the chain, strongest drops first."
        ),
    )
    p.add_argument("input", help="PDB/mmCIF structure (every protein chain, or --chain) or FASTA file (one record, or --record)")
    p.add_argument("--feature", type=int, required=True, help="SAE feature index")
    p.add_argument("--positions", default="all", help="residue numbers as in the file, e.g. 10-20,25,52A (FASTA: 1-based); default all")
    p.add_argument("--to", default="all", help="amino acids to mutate to: all (default), one-letter codes (A, AG) or ALA,GLY")
    p.add_argument("--chain", help="structure: scan only this chain")
    p.add_argument("--record", help="FASTA: the record id to scan (needed when the file has several)")
    p.add_argument("--uniprot", help="structure: full-length reference(s) to embed instead (FASTA, one record per protein, or a sequence)")
    p.add_argument("--out", help="write the table (.csv, or .tsv); default: print the strongest drops only")
    p.add_argument("--top", type=int, default=20, help="rows of the strongest drops to print (default 20)")
    add_pipeline_options(p)
    p.set_defaults(run=run)


def _structure_scans(args: argparse.Namespace, pipeline, path: Path) -> list[pd.DataFrame]:
    from interplm_plugins.core.inputs.references import read_references
    from interplm_plugins.core.inputs.structure import read_structure
    from interplm_plugins.core.interpret.chains import chains_with_references
    from interplm_plugins.core.interpret.mutate import scan_chain, select_labels

    chains = [c for c in read_structure(path) if args.chain is None or c.chain_id == args.chain]
    if not chains:
        raise InterPLMError(f"no protein chain {args.chain!r}", file=path)
    selected = [select_labels([r.label for r in c.residues], args.positions, record=f"chain {c.chain_id}") for c in chains]
    references = read_references(args.uniprot, "--uniprot") if args.uniprot else None
    acts, matched = chains_with_references(pipeline, chains, references, path, selected)
    if matched:
        print(f"{path}: {matched}")
    progress = progress_enabled(args)
    return [scan_chain(pipeline, a, args.feature, s, args.to, progress=progress) for a, s in zip(acts, selected) if (a.positions >= 0).any()]


def _fasta_scan(args: argparse.Namespace, pipeline, path: Path) -> pd.DataFrame:
    from interplm_plugins.core.inputs.sequences import read_fasta
    from interplm_plugins.core.interpret.mutate import mutation_scan, select_labels

    records = read_fasta(path)
    if args.record is None and len(records) != 1:
        raise InterPLMError(f"the file has {len(records)} records: say which with --record", file=path)
    record = next((r for r in records if args.record in (None, r.id)), None)
    if record is None:
        raise InterPLMError(f"no record {args.record!r}", file=path)
    positions = select_labels([str(i + 1) for i in range(len(record.sequence))], args.positions, record=record.id)
    table = mutation_scan(pipeline, record.sequence, args.feature, positions, args.to, record=record.id, progress=progress_enabled(args))
    return table.assign(record=record.id)


def run(args: argparse.Namespace) -> int:
    from interplm_plugins.core.interpret.mutate import mutant_letters, write_scan_table

    path = Path(args.input)
    if not path.is_file():
        raise InterPLMError("no such file", file=path)
    pipeline = load_pipeline_from_args(args)
    pipeline.check_feature(args.feature)
    mutant_letters(args.to)  # checked before the model runs
    if path.name.lower().removesuffix(".gz").endswith(_STRUCTURE_SUFFIXES):
        table = pd.concat(_structure_scans(args, pipeline, path), ignore_index=True)
    else:
        table = _fasta_scan(args, pipeline, path)
    if args.out:
        print(f"{write_scan_table(table, args.out)}: {len(table)} mutants")
    strongest = table.nsmallest(max(args.top, 0), "site_change")
    print(strongest.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    return 0
