"""Sequence clusters, so that splits keep close homologs on one side of the line.

Proteins are clustered at :data:`DEFAULT_MIN_SEQ_ID` (30%) sequence identity with alignments
covering :data:`DEFAULT_COVERAGE` (80%) of both sequences, and splits are then made of whole
clusters (:func:`assign_clusters_to_splits`). 30% is the usual "no close homolog" line (the
twilight zone of pairwise identity begins below it); UniRef50 clusters at 50% are coarser-grained
guards and would let 30-50% homologs straddle a split.

:func:`cluster_sequences` runs MMseqs2 (``mmseqs easy-cluster``, Debian package ``mmseqs2``,
installed by ``scripts/install_system_deps.sh``). Only where no ``mmseqs`` is found does it fall
back, with a warning, to :func:`_cluster_python`: a greedy CD-HIT-style clustering (longest
sequence first; each sequence joins the first representative that passes, else becomes one)
whose candidate representatives are those sharing exact 5-mers, confirmed by a Biopython local
alignment (BLOSUM62, BLAST's gap costs). It is an approximation of MMseqs2, and a weaker one at
30% identity: two 30%-identical proteins share an exact 5-mer only about once per 400 residues,
so the k-mer prefilter misses many remote homologs that MMseqs2's similar-k-mer prefilter finds.
Splits made from its clusters are therefore leakier; install MMseqs2.

Measured at 0.3 / 0.8 on the 727 Swiss-Prot proteins of ``shared/data/sequences/swissprot_train.fasta``
(2 shared CPU cores; more in docs/HOMOLOGY.md): MMseqs2 14-7e284 (1 thread) 623 clusters, the
largest of 19, in 19-42 s (mostly its fixed start-up); the fallback 625 clusters, largest 19, in
3 s, grouping 278 of the 295 pairs MMseqs2 groups. On 7936 Swiss-Prot human and maize proteins:
MMseqs2 5422 clusters (largest 349) in 113 s, the fallback 5643 (largest 169) in 159 s; for
100,000 it would need about an hour.
"""

from __future__ import annotations

import hashlib
import math
import os
import shutil
import subprocess
import tempfile
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from interplm_plugins.core.atomic import atomic_path
from interplm_plugins.core.inputs.sequences import PROTEIN_LETTERS, ProteinRecord, clean_sequence, write_fasta
from interplm_plugins.errors import InterPLMError

#: Identity at which proteins count as homologs: below ~30% pairwise identity homology is no longer evident.
DEFAULT_MIN_SEQ_ID = 0.3
#: Fraction of both sequences an alignment must cover (MMseqs2's ``-c`` with ``--cov-mode 0``).
DEFAULT_COVERAGE = 0.8

#: k-mer length of the fallback's candidate index (CD-HIT's word size for identities >= 0.7; shorter words
#: would find more remote candidates at the cost of many more alignments).
FALLBACK_KMER = 5
#: Candidate representatives the fallback aligns per sequence (those sharing the most k-mers).
FALLBACK_CANDIDATES = 4
#: Shared k-mers (one per k-long stretch of a diagonal) a candidate needs within FALLBACK_BAND diagonals: chance matches are common
#: (on the 727 Swiss-Prot proteins, 2 let 138 chance pairs through to the alignment for 3 more true ones).
FALLBACK_MIN_SHARED_KMERS = 3
#: Width (in diagonals) of the band in which shared k-mers count together; allows small indels between them.
FALLBACK_BAND = 16

_TSV_COLUMNS = "protein_id\tcluster"


@dataclass(frozen=True)
class SequenceClusters:
    """A clustering of proteins by sequence identity.

    ``representative`` maps each protein id (in input order) to the id of its cluster's
    representative, itself a member mapped to itself. ``method`` says how it was made.
    """

    representative: dict[str, str]
    method: str
    min_seq_id: float
    coverage: float

    def members(self) -> dict[str, list[str]]:
        """Representative -> its cluster's member ids, clusters and members in input order."""
        clusters: dict[str, list[str]] = {}
        for protein, rep in self.representative.items():
            clusters.setdefault(rep, []).append(protein)
        return clusters

    def save(self, path: str | os.PathLike) -> Path:
        """Write a TSV (``protein_id``, ``cluster``) after ``# method:``, ``# min_seq_id:`` and ``# coverage:`` lines; atomic."""
        path = Path(path)
        lines = [f"# method: {self.method}", f"# min_seq_id: {self.min_seq_id!r}", f"# coverage: {self.coverage!r}", _TSV_COLUMNS]
        lines += [f"{protein}\t{rep}" for protein, rep in self.representative.items()]
        with atomic_path(path) as tmp:
            tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "SequenceClusters":
        """Read what :meth:`save` wrote; a bad file raises :class:`InterPLMError` naming it and the line."""
        path = Path(path)
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            raise InterPLMError("no such file", file=path) from None
        except (UnicodeDecodeError, OSError) as exc:
            raise InterPLMError(f"cannot read the cluster file ({exc})", file=path) from None
        header: dict[str, str] = {}
        representative: dict[str, str] = {}
        rep_line: dict[str, int] = {}
        columns_seen = False
        for line_no, line in enumerate(lines, 1):
            if not columns_seen:
                if line.startswith("# ") and ": " in line:
                    key, value = line[2:].split(": ", 1)
                    header[key.strip()] = value.strip()
                    continue
                if line != _TSV_COLUMNS:
                    raise InterPLMError(f"line {line_no}: expected the column line {_TSV_COLUMNS!r}", file=path)
                columns_seen = True
                continue
            fields = line.split("\t")
            if len(fields) != 2 or not all(fields):
                raise InterPLMError(f"line {line_no}: expected 'protein_id<TAB>cluster', got {line!r}", file=path)
            protein, rep = fields
            if protein in representative:
                raise InterPLMError(f"line {line_no}: duplicate protein id", file=path, record=protein)
            representative[protein] = rep
            rep_line.setdefault(rep, line_no)
        if not columns_seen:
            raise InterPLMError(f"no {_TSV_COLUMNS!r} column line: not a cluster file", file=path)
        for rep, line_no in rep_line.items():
            if representative.get(rep) != rep:
                raise InterPLMError(f"line {line_no}: cluster {rep!r} is not a protein of the file mapped to itself", file=path)
        return cls(representative, _header_field(header, "method", path), *(_header_float(header, k, path) for k in ("min_seq_id", "coverage")))


def _header_field(header: Mapping[str, str], key: str, path: Path) -> str:
    if key not in header:
        raise InterPLMError(f"missing the '# {key}: ...' header line", file=path)
    return header[key]


def _header_float(header: Mapping[str, str], key: str, path: Path) -> float:
    text = _header_field(header, key, path)
    try:
        return float(text)
    except ValueError:
        raise InterPLMError(f"header '# {key}:' is not a number: {text!r}", file=path) from None


def cluster_sequences(
    records: Sequence[ProteinRecord],
    min_seq_id: float = DEFAULT_MIN_SEQ_ID,
    coverage: float = DEFAULT_COVERAGE,
    threads: int | None = None,
    mmseqs: str | None = None,
    linear: bool = False,
) -> SequenceClusters:
    """Cluster by sequence identity with MMseqs2 (`mmseqs easy-cluster`, found on PATH or given), else the pure-Python fallback (a warning says so).

    ``linear=True`` runs ``mmseqs easy-linclust`` instead: linear in the number of sequences (about a
    minute for 100,000 proteins on 2 cores, where easy-cluster needs an hour at 30%), at the cost of
    missing more remote homologs; fit for 50% identity (UniRef50-style) on large sets, not for 30%.

    ``mmseqs`` is the executable (``None``: ``mmseqs`` on PATH; ``""``: use the fallback without a
    warning). ``threads`` defaults to the machine's CPUs. Duplicate ids, bad sequences (see
    :func:`~interplm_plugins.core.inputs.sequences.clean_sequence`) and thresholds outside [0, 1] raise
    :class:`InterPLMError`.
    """
    records = _checked_records(records, min_seq_id, coverage)
    if mmseqs is None:
        mmseqs = shutil.which("mmseqs") or ""
        if not mmseqs:
            warnings.warn(
                "mmseqs not found on PATH: clustering with the pure-Python approximation, which misses remote "
                "homologs at 30% identity; install MMseqs2 (Debian package mmseqs2, scripts/install_system_deps.sh)",
                stacklevel=2,
            )
    if not mmseqs:
        return _cluster_python(records, min_seq_id, coverage)
    if shutil.which(mmseqs) is None:
        raise InterPLMError("not an executable mmseqs", file=mmseqs)
    return _cluster_mmseqs(records, min_seq_id, coverage, threads or os.cpu_count() or 1, mmseqs, linear)


def _checked_records(records: Sequence[ProteinRecord], min_seq_id: float, coverage: float) -> list[ProteinRecord]:
    """The records with cleaned sequences; :class:`InterPLMError` for thresholds outside [0, 1], duplicate ids, bad sequences."""
    for name, value in (("min_seq_id", min_seq_id), ("coverage", coverage)):
        if not 0.0 <= float(value) <= 1.0:
            raise InterPLMError(f"{name} must lie in [0, 1], not {value}")
    seen: set[str] = set()
    checked = []
    for rec in records:
        if rec.id in seen:
            raise InterPLMError("duplicate protein id: clusters need unique ids", record=rec.id)
        seen.add(rec.id)
        checked.append(ProteinRecord(rec.id, clean_sequence(rec.sequence, record=rec.id), rec.description))
    return checked


def _cluster_mmseqs(
    records: Sequence[ProteinRecord], min_seq_id: float, coverage: float, threads: int, mmseqs: str, linear: bool = False
) -> SequenceClusters:
    """``mmseqs easy-cluster`` (or ``easy-linclust``) in a temporary folder, proteins renamed ``p0, p1, ...`` (MMseqs2 keeps a header's first word only)."""
    options = ["--min-seq-id", f"{min_seq_id:g}", "-c", f"{coverage:g}", "--cov-mode", "0"]
    module = "easy-linclust" if linear else "easy-cluster"
    method = f"mmseqs2 {_run(mmseqs, ['version']).strip()} {module} {' '.join(options)}"
    if not records:
        return SequenceClusters({}, method, min_seq_id, coverage)
    with tempfile.TemporaryDirectory(prefix="interplm_mmseqs_") as tmp:
        folder = Path(tmp)
        write_fasta([ProteinRecord(f"p{i}", rec.sequence) for i, rec in enumerate(records)], folder / "in.fasta")
        args = [module, str(folder / "in.fasta"), str(folder / "clu"), str(folder / "work")]
        _run(mmseqs, args + options + ["--threads", str(int(threads)), "-v", "1"])
        rep_index = _read_mmseqs_clusters(folder / "clu_cluster.tsv", len(records))
    ids = [rec.id for rec in records]
    return SequenceClusters({ids[i]: ids[rep_index[i]] for i in range(len(ids))}, method, min_seq_id, coverage)


def _run(mmseqs: str, args: list[str]) -> str:
    """Run ``mmseqs ARGS``; its stdout, or :class:`InterPLMError` with the last line it printed."""
    try:
        proc = subprocess.run([mmseqs, *args], capture_output=True, text=True, check=False)
    except OSError as exc:
        raise InterPLMError(f"cannot run mmseqs ({exc})", file=mmseqs) from None
    if proc.returncode != 0:
        # its errors go to stderr (the usage text it prints with them to stdout)
        said = [line for line in proc.stderr.splitlines() if line.strip()] or [line for line in proc.stdout.splitlines() if line.strip()]
        reason = said[-1].strip() if said else "no message"
        raise InterPLMError(f"mmseqs {args[0]} failed (exit status {proc.returncode}): {reason}", file=mmseqs)
    return proc.stdout


def _read_mmseqs_clusters(path: Path, count: int) -> list[int]:
    """Index of each protein's representative from MMseqs2's ``representative<TAB>member`` TSV of ``p<i>`` ids."""
    rep_index = [-1] * count
    for line in path.read_text(encoding="utf-8").splitlines():
        rep, member = (int(field[1:]) for field in line.split("\t"))
        rep_index[member] = rep
    missing = rep_index.count(-1)
    if missing:
        raise InterPLMError(f"mmseqs easy-cluster left {missing} of {count} proteins out of its clusters", file=path)
    return rep_index


# The pure-Python fallback

_RESIDUE_CODE = np.full(256, 0, dtype=np.int64)
for _code, _letter in enumerate(sorted(PROTEIN_LETTERS)):
    _RESIDUE_CODE[ord(_letter)] = _code
_ALPHABET_SIZE = len(PROTEIN_LETTERS)


def _kmer_positions(sequence: str, k: int = FALLBACK_KMER) -> tuple[np.ndarray, np.ndarray]:
    """The distinct k-mers of a sequence as integers (base-25 digits), sorted, and where each first occurs."""
    if len(sequence) < k:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    residues = _RESIDUE_CODE[np.frombuffer(sequence.encode("ascii"), dtype=np.uint8)]
    codes = np.zeros(len(sequence) - k + 1, dtype=np.int64)
    for offset in range(k):
        codes = codes * _ALPHABET_SIZE + residues[offset : len(residues) - k + 1 + offset]
    return np.unique(codes, return_index=True)


def _diagonal_hits(query: tuple[np.ndarray, np.ndarray], target: tuple[np.ndarray, np.ndarray]) -> tuple[int, int]:
    """Most separate k-mer matches lying within :data:`FALLBACK_BAND` diagonals of each other (BLAST's two-hit idea), and their median diagonal.

    Chance matches scatter over diagonals, a homolog's line up along its alignment. Matches in
    one k-long stretch of a diagonal count once, so a chance 7-mer (three 5-mers) is not three hits.
    """
    _, in_query, in_target = np.intersect1d(query[0], target[0], assume_unique=True, return_indices=True)
    query_pos = query[1][in_query]
    diagonals = query_pos - target[1][in_target]
    # one hit per (diagonal, k-long stretch of the query); np.unique sorts them by diagonal
    stretch = np.unique(np.stack([diagonals, query_pos // FALLBACK_KMER], axis=1), axis=0)
    diagonals = stretch[:, 0]
    if len(diagonals) == 0:
        return 0, 0
    # for each match, the matches on diagonals up to FALLBACK_BAND above it
    in_band = np.searchsorted(diagonals, diagonals + FALLBACK_BAND, side="right") - np.arange(len(diagonals))
    start = int(in_band.argmax())
    return int(in_band[start]), int(diagonals[start + int(in_band[start]) // 2])


def _ungapped_identity(a: str, b: str, diagonal: int) -> tuple[float, float]:
    """``(identity, coverage)`` of the gapless alignment pairing ``a[i]`` with ``b[i - diagonal]``, defined as in :func:`alignment_identity`."""
    start, end = max(0, diagonal), min(len(a), len(b) + diagonal)
    if end <= start:
        return 0.0, 0.0
    same = np.frombuffer(a[start:end].encode("ascii"), np.uint8) == np.frombuffer(b[start - diagonal : end - diagonal].encode("ascii"), np.uint8)
    return int(same.sum()) / min(len(a), len(b)), (end - start) / max(len(a), len(b))


def _local_aligner():
    """Biopython local aligner with BLOSUM62 and BLAST's protein gap costs (11 to open, 1 per residue)."""
    from Bio.Align import PairwiseAligner

    return PairwiseAligner(scoring="blastp", mode="local")


def alignment_identity(aligner, a: str, b: str) -> tuple[float, float]:
    """``(identity, coverage)`` of the best local alignment of ``a`` and ``b``.

    identity = identical aligned pairs / length of the shorter sequence (CD-HIT's definition; for
    alignments covering most of both sequences it is close to MMseqs2's identity per aligned column,
    a little lower); coverage = the smaller of the fractions of ``a`` and of ``b`` inside the alignment.
    """
    alignment = aligner.align(a, b)[0]
    coords = alignment.coordinates
    covered = min((coords[0, -1] - coords[0, 0]) / len(a), (coords[1, -1] - coords[1, 0]) / len(b))
    return alignment.counts().identities / min(len(a), len(b)), float(covered)


def _matching_representative(
    aligner, sequences: Sequence[str], query: int, kmers: tuple[np.ndarray, np.ndarray], shared: Counter,
    min_seq_id: float, coverage: float,
) -> int:
    """The first of the top candidate representatives (most shared k-mers) that passes the alignment check, else ``query``."""
    tried = 0
    for rep, count in shared.most_common():
        if count < FALLBACK_MIN_SHARED_KMERS or tried == FALLBACK_CANDIDATES:
            break
        # cov-mode 0: the alignment must also cover `coverage` of the (longer) representative
        if len(sequences[query]) < coverage * len(sequences[rep]):
            continue
        hits, diagonal = _diagonal_hits(kmers, _kmer_positions(sequences[rep]))
        if hits < FALLBACK_MIN_SHARED_KMERS:
            continue
        # a close homolog passes on its k-mers' diagonal without a gap; the costly alignment is for the others
        identity, covered = _ungapped_identity(sequences[query], sequences[rep], diagonal)
        if identity >= min_seq_id and covered >= coverage:
            return rep
        tried += 1
        identity, covered = alignment_identity(aligner, sequences[rep], sequences[query])
        if identity >= min_seq_id and covered >= coverage:
            return rep
    return query


def _cluster_python(
    records: Sequence[ProteinRecord], min_seq_id: float = DEFAULT_MIN_SEQ_ID, coverage: float = DEFAULT_COVERAGE
) -> SequenceClusters:
    """Greedy clustering, longest first, of k-mer candidates confirmed by local alignment (see the module docstring)."""
    aligner = _local_aligner()
    sequences = [rec.sequence for rec in records]
    order = sorted(range(len(sequences)), key=lambda i: (-len(sequences[i]), i))
    index: dict[int, list[int]] = {}  # k-mer -> representatives holding it
    rep_index = [-1] * len(sequences)
    for i in order:
        kmers = _kmer_positions(sequences[i])
        codes = kmers[0].tolist()
        shared = Counter(rep for code in codes for rep in index.get(code, ()))
        rep_index[i] = _matching_representative(aligner, sequences, i, kmers, shared, min_seq_id, coverage)
        if rep_index[i] == i:
            for code in codes:
                index.setdefault(code, []).append(i)
    method = (
        f"python fallback: greedy, longest first, candidates sharing >= {FALLBACK_MIN_SHARED_KMERS} exact "
        f"{FALLBACK_KMER}-mers within {FALLBACK_BAND} diagonals (top {FALLBACK_CANDIDATES} aligned), Biopython local alignment (blastp scoring), "
        f"identity of the shorter >= {min_seq_id:g}, coverage of both >= {coverage:g}"
    )
    ids = [rec.id for rec in records]
    return SequenceClusters({ids[i]: ids[rep_index[i]] for i in range(len(ids))}, method, min_seq_id, coverage)


def stable_hash(text: str) -> int:
    """64 bits of SHA-1: the same on every machine and run, unlike ``hash()``."""
    return int.from_bytes(hashlib.sha1(text.encode("utf-8")).digest()[:8], "big")


def assign_clusters_to_splits(clusters: SequenceClusters, fractions: Mapping[str, float], salt: str = "") -> dict[str, str]:
    """Whole clusters to splits (e.g. ``{"valid": 0.5, "test": 0.5}``), balancing the number of proteins per split.

    Clusters go largest first (ties in the order of a SHA-1 of ``salt`` and the representative
    id) to the split furthest below its target count of proteins (ties: the first named in
    ``fractions``). Deterministic; a different ``salt`` gives a different assignment. Each split
    ends within one largest cluster of its target. Returns protein id -> split, in input order.
    Adding proteins can move clusters between splits (balance is global), unlike per-id hashing.
    """
    names = list(fractions)
    weights = [float(fractions[name]) for name in names]
    if not names or any(not math.isfinite(w) or w < 0 for w in weights) or sum(weights) <= 0:
        raise InterPLMError(f"split fractions must be non-negative with a positive sum, not {dict(fractions)}")
    members = clusters.members()
    total = sum(len(m) for m in members.values())
    targets = [w / sum(weights) * total for w in weights]
    assigned = [0] * len(names)
    order = sorted(members, key=lambda rep: (-len(members[rep]), stable_hash(f"{salt}\0{rep}"), rep))
    split_of: dict[str, str] = {}
    for rep in order:
        j = max(range(len(names)), key=lambda k: (targets[k] - assigned[k], -k))
        assigned[j] += len(members[rep])
        split_of[rep] = names[j]
    return {protein: split_of[rep] for protein, rep in clusters.representative.items()}
