"""``interplm concepts``: UniProt annotations -> per-residue concept labels, halved into validation and test by sequence clusters."""

from __future__ import annotations


def add_parser(subparsers) -> None:
    # Defaults are None here and filled from core in run(): importing core's modules would slow every `interplm`.
    p = subparsers.add_parser(
        "concepts",
        help="turn UniProt annotations into per-residue concept labels",
        description=(
            "Read UniProt flat text (modern or legacy FT layout), XML, TSV or REST JSON (one entry or {\"results\": [...]}, as "
            "rest.uniprot.org serves it; .gz ok; several files: each "
            "accession once), keep concepts with enough examples, and halve the proteins into validation (each "
            "concept's feature and threshold are chosen there) and test (they are scored there) by sequence clusters: "
            "MMseqs2 easy-cluster at --min-seq-id identity and --coverage, whole clusters to one half, so no protein has "
            "a close homolog across the line. A concept is evaluated only with at least --min-proteins-per-half "
            "proteins and --min-instances-per-half instances in each half. Writes OUT/labels.npz, OUT/concepts.tsv, "
            "OUT/splits.tsv (each protein's half), OUT/clusters.tsv (the clustering), OUT/concepts.json (these "
            "settings) and OUT/proteins.fasta (the annotated sequences)."
        ),
    )
    p.add_argument("uniprot", nargs="+", help="UniProt file(s)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--min-instances", type=int, default=10, help="keep concepts with at least this many occurrences (default 10)")
    p.add_argument("--min-proteins", type=int, default=3, help="... in at least this many proteins (default 3)")
    p.add_argument("--min-proteins-per-half", type=int, help="evaluate a concept only with this many proteins in each half (default 3)")
    p.add_argument("--min-instances-per-half", type=int, help="... and this many instances (domains, sites, bonds) in each half (default 3)")
    p.add_argument("--min-seq-id", type=float, help="sequence identity that puts two proteins in one cluster (default 0.3)")
    p.add_argument("--coverage", type=float, help="alignment coverage for that (default 0.8)")
    p.set_defaults(run=run)  # fmt: skip


def run(args) -> int:
    from pathlib import Path

    from interplm_plugins.core.concepts import ConceptHalves, Eligibility, build_concept_labels, split_into_halves
    from interplm_plugins.core.concepts.selection import concept_vocabulary
    from interplm_plugins.core.inputs.homology import DEFAULT_COVERAGE, DEFAULT_MIN_SEQ_ID, cluster_sequences
    from interplm_plugins.core.inputs.sequences import ProteinRecord, write_fasta
    from interplm_plugins.core.inputs.uniprot import read_uniprot_files

    rule = {"min_proteins": args.min_proteins_per_half, "min_instances": args.min_instances_per_half}
    eligibility = Eligibility(**{k: v for k, v in rule.items() if v is not None})
    entries, skipped = read_uniprot_files(args.uniprot)
    records = [ProteinRecord(e.accession, e.sequence, e.entry_name) for e in entries]
    clusters = cluster_sequences(
        records,
        min_seq_id=DEFAULT_MIN_SEQ_ID if args.min_seq_id is None else args.min_seq_id,
        coverage=DEFAULT_COVERAGE if args.coverage is None else args.coverage,
    )
    labels = build_concept_labels(entries, min_instances=args.min_instances, min_proteins=args.min_proteins)
    labels = split_into_halves(labels, clusters)
    labels.settings.update(eligibility=eligibility.to_dict(), sources=[str(p) for p in args.uniprot])
    out = Path(args.out)
    clusters.save(out / "clusters.tsv")
    labels.save(out)
    write_fasta(records, out / "proteins.fasta")
    summary = concept_vocabulary(ConceptHalves.from_splits(labels), eligibility)
    valid, test = (len(labels.proteins_in_split(s)) for s in ("valid", "test"))
    again = f" ({len(skipped)} repeated accessions skipped)" if skipped else ""
    print(f"{len(entries)} entries{again}, {len(summary)} concepts ({(summary['level'] == 'residue').sum()} residue-level, "
          f"{summary['evaluated'].sum()} evaluable: {eligibility.describe()}); {labels.settings['clustering']['clusters']} "
          f"sequence clusters; proteins valid/test {valid}/{test} -> {out}")  # fmt: skip
    return 0
