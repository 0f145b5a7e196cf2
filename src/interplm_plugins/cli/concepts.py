"""``interplm concepts``: Swiss-Prot annotations -> per-residue concept labels (with the valid/test concept split)."""

from __future__ import annotations


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "concepts",
        help="turn UniProt annotations into per-residue concept labels",
        description=(
            "Read UniProt flat text (modern or legacy FT layout), XML, REST JSON (one entry or {\"results\": [...]}, "
            "as rest.uniprot.org serves it) or TSV (.gz ok), keep concepts with enough "
            "examples, and write OUT/labels.npz, OUT/concepts.tsv and OUT/proteins.fasta (the annotated sequences). "
            "Proteins are halved into validation (features chosen) and test (features scored) by a hash of their accession."
        ),
    )
    p.add_argument("uniprot", help="UniProt file")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--min-instances", type=int, default=10, help="keep concepts with at least this many occurrences (default 10)")
    p.add_argument("--min-proteins", type=int, default=3, help="... in at least this many proteins (default 3)")
    p.set_defaults(run=run)


def run(args) -> int:
    from pathlib import Path

    from interplm_plugins.core.concepts import build_concept_labels
    from interplm_plugins.core.sequences import ProteinRecord, write_fasta
    from interplm_plugins.core.uniprot import read_uniprot

    entries = read_uniprot(args.uniprot)
    labels = build_concept_labels(entries, min_instances=args.min_instances, min_proteins=args.min_proteins)
    out = Path(args.out)
    labels.save(out)
    write_fasta([ProteinRecord(e.accession, e.sequence, e.entry_name) for e in entries], out / "proteins.fasta")
    summary = labels.summary()
    valid, test = (len(labels.proteins_in_split(s)) for s in ("valid", "test"))
    print(f"{len(entries)} entries, {len(summary)} concepts ({(summary['level'] == 'residue').sum()} residue-level); "
          f"proteins valid/test {valid}/{test} -> {out}")  # fmt: skip
    return 0
