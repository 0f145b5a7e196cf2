"""``interplm export``: per-residue activations of structures as TSV, B-factor PDB/mmCIF and ChimeraX ``.defattr``."""

from __future__ import annotations

import argparse

from interplm_plugins.cli._common import add_pipeline_options, load_pipeline_from_args


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "export",
        help="write per-residue feature activations for any viewer (TSV, B-factor PDB/mmCIF, ChimeraX .defattr)",
        description=(
            "Embed every protein chain of each structure and write, into --out: STEM.interplm.tsv (one row per "
            "residue, one column interplm_N per feature), STEM.interplm_N.pdb (.cif for mmCIF input) with the "
            "activation as every atom's B-factor (0 where a residue has no value), and STEM.interplm.defattr, a "
            "ChimeraX attribute file (open x.pdb; open x.interplm.defattr; color byattribute interplm_N)."
        ),
    )
    p.add_argument("structures", nargs="+", metavar="STRUCTURE", help="PDB or mmCIF files")
    p.add_argument("--feature", type=int, nargs="+", required=True, help="SAE feature indices")
    p.add_argument("--out", required=True, help="folder to write into (created if missing)")
    p.add_argument("--chain", help="export only this chain")
    p.add_argument("--uniprot", help="full-length sequence(s) to embed: the sequence, or a FASTA file with one record per protein "
                                     "of a complex; each chain is aligned to the record it matches, the others get no values")  # fmt: skip
    p.add_argument("--format", default="tsv,pdb,defattr", help="comma-separated subset of tsv,pdb,defattr (default all three)")
    add_pipeline_options(p, database=False)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from interplm_plugins.core.inputs.references import read_references
    from interplm_plugins.core.interpret.export import export_structure

    pipeline = load_pipeline_from_args(args)
    references = read_references(args.uniprot, "--uniprot") if args.uniprot else None
    formats = [f.strip() for f in args.format.split(",") if f.strip()]
    for structure in args.structures:
        written, matched = export_structure(pipeline, structure, args.feature, args.out, references=references, chain=args.chain, formats=formats)
        if matched:
            print(f"{structure}: {matched}")
        for path in written:
            print(path)
    return 0
