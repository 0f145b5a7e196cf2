"""Protein sequences: reading FASTA strictly, and the deterministic splits of proteins.

Policy for imperfect FASTA (each case is tested, see ``tests/bad_inputs/README.md``):
- lowercase letters are upper-cased; CRLF or CR line endings, blank lines, ASCII spaces and tabs
  inside a sequence, a UTF-8 byte-order mark and ``;`` comment lines are accepted;
- one trailing ``*`` (stop) is dropped; a ``*`` inside a sequence is an error;
- gaps (``-`` or ``.``), digits and other symbols are errors naming the record and position, and
  so is any non-ASCII character (``"ß".upper()`` is ``"SS"``: upper-casing one would invent
  residues, and a no-break space is not silently dropped either);
- empty records and duplicate ids are errors; so is a file that is not UTF-8 text;
- X, U, O, B, Z are kept: ESM's alphabet has tokens for them;
- a sequence of nucleotide letters only (A, C, G, T/U, N; at least 20, three or more of ACGTU) is
  an error: DNA or RNA would otherwise embed as a nonsense protein.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import re
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

from interplm_plugins.errors import InterPLMError

#: Letters a protein sequence may contain (the 20 standard residues and X, U, O, B, Z).
PROTEIN_LETTERS = frozenset("ACDEFGHIKLMNPQRSTVWYXUOBZ")
#: Longest sequence accepted; longer ones are almost certainly not a single protein chain.
MAX_SEQUENCE_LENGTH = 100_000

#: A sequence of these letters only, long and varied enough, is DNA/RNA, not a protein.
NUCLEOTIDE_LETTERS = frozenset("ACGTUN")
MIN_NUCLEOTIDE_LENGTH = 20

_UNIPROT_ID = re.compile(r"^(?:sp|tr)\|([^|]+)\|")
#: Whitespace removed from inside a sequence: ASCII only (``str.split()`` would also drop
#: no-break spaces and control characters such as ``\x1c``).
_ASCII_WHITESPACE = re.compile(r"[ \t\n\r\f\v]+")


@dataclass(frozen=True)
class ProteinRecord:
    """One protein: ``id`` is the UniProt accession for ``sp|ACC|NAME`` headers, else the first word."""

    id: str
    sequence: str
    description: str = ""


def protein_id_from_header(header: str) -> str:
    """The id of a FASTA header (without ``>``): the accession of UniProt headers, else the first word."""
    first = header.split(None, 1)[0] if header.strip() else ""
    match = _UNIPROT_ID.match(first)
    return match.group(1) if match else first


def looks_like_nucleotides(sequence: str) -> bool:
    """Whether an upper-case sequence is DNA/RNA rather than protein (see the module policy)."""
    letters = set(sequence)
    return len(sequence) >= MIN_NUCLEOTIDE_LENGTH and letters <= NUCLEOTIDE_LETTERS and len(letters - {"N"}) >= 3


def clean_sequence(sequence: str, *, file: str | os.PathLike | None = None, record: str | None = None) -> str:
    """Validate and normalise one sequence (see the module policy); raise :class:`InterPLMError`."""
    seq = _ASCII_WHITESPACE.sub("", sequence)
    # Upper-case ASCII letters only: "ß".upper() == "SS", "\ufb01".upper() == "FI" would invent
    # residues; a non-ASCII character stays itself and is reported below.
    seq = seq.upper() if seq.isascii() else "".join(c.upper() if c.isascii() else c for c in seq)
    if seq.endswith("*"):
        seq = seq[:-1]
    if not seq:
        raise InterPLMError("empty sequence", file=file, record=record)
    if len(seq) > MAX_SEQUENCE_LENGTH:
        raise InterPLMError(
            f"sequence of {len(seq)} residues exceeds the {MAX_SEQUENCE_LENGTH}-residue limit", file=file, record=record
        )
    bad = set(seq) - PROTEIN_LETTERS
    if bad:
        pos = next(i for i, c in enumerate(seq) if c in bad)
        char = seq[pos]
        what = "gap" if char in "-." else "stop codon" if char == "*" else "invalid character"
        raise InterPLMError(
            f"{what} {char!r} at position {pos + 1} (allowed: {''.join(sorted(PROTEIN_LETTERS))})",
            file=file,
            record=record,
        )
    if looks_like_nucleotides(seq):
        raise InterPLMError(
            "looks like a nucleotide sequence (only A, C, G, T/U, N), not a protein; translate it first (e.g. Biopython's Seq.translate)",
            file=file,
            record=record,
        )
    return seq


def _open_text(path: Path):
    # utf-8-sig: a byte-order mark (Windows editors write one) is dropped, not read as text
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8-sig", errors="strict", newline=None)
    return open(path, "r", encoding="utf-8-sig", errors="strict", newline=None)


def iter_fasta(path: str | os.PathLike) -> Iterator[ProteinRecord]:
    """Stream the records of a FASTA file (plain or .gz), validated; raise :class:`InterPLMError`."""
    path = Path(path)
    if not path.is_file():
        raise InterPLMError("no such file", file=path)
    seen: set[str] = set()
    header: str | None = None
    chunks: list[str] = []
    line_no = 0

    def finish() -> ProteinRecord:
        assert header is not None
        pid = protein_id_from_header(header)
        if not pid:
            raise InterPLMError(f"empty header before line {line_no}", file=path)
        if pid in seen:
            raise InterPLMError("duplicate id", file=path, record=pid)
        seen.add(pid)
        seq = clean_sequence("".join(chunks), file=path, record=pid)
        desc = header.split(None, 1)[1].strip() if len(header.split(None, 1)) > 1 else ""
        return ProteinRecord(pid, seq, desc)

    try:
        with _open_text(path) as handle:
            for line_no, line in enumerate(handle, 1):
                line = line.rstrip("\r\n")
                if line.startswith(">"):
                    if header is not None:
                        yield finish()
                    header, chunks = line[1:].strip(), []
                elif line.startswith(";"):  # comment line of the original FASTA format
                    continue
                elif line.strip():
                    if header is None:
                        raise InterPLMError(f"line {line_no}: sequence data before the first '>' header", file=path)
                    chunks.append(line)
    except UnicodeDecodeError as exc:
        raise InterPLMError(f"not a text FASTA file ({exc.reason} at byte {exc.start})", file=path) from None
    except (EOFError, gzip.BadGzipFile, zlib.error, OSError) as exc:
        raise InterPLMError(f"cannot read file ({exc})", file=path) from None
    if header is None:
        raise InterPLMError("no FASTA records found", file=path)
    yield finish()


def read_fasta(path: str | os.PathLike) -> list[ProteinRecord]:
    """Read every record of a FASTA file (see :func:`iter_fasta`)."""
    return list(iter_fasta(path))


def write_fasta(records: Iterable[ProteinRecord], path: str | os.PathLike, width: int = 60) -> None:
    """Write records as FASTA, atomically.

    What is written reads back equal with :func:`read_fasta` (sequences as :func:`clean_sequence`
    gives them, descriptions stripped); a record that could not raises :class:`InterPLMError`
    and nothing is written: an id that is empty, holds whitespace or would read back as another
    id (``sp|ACC|NAME`` reads as ``ACC``), a description with a line break, a bad sequence.
    """
    from interplm_plugins.core.atomic import atomic_path

    if int(width) < 1:
        raise InterPLMError(f"FASTA line width must be positive, not {width}", file=path)
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as out:
        for rec in records:
            pid, description = str(rec.id), str(rec.description or "")
            if not pid:
                raise InterPLMError("cannot write an empty id to FASTA", file=path)
            if protein_id_from_header(pid) != pid:
                raise InterPLMError(
                    f"cannot write id {pid!r} to FASTA: it would read back as {protein_id_from_header(pid)!r}",
                    file=path,
                    record=pid,
                )
            if any(c in description for c in "\r\n"):
                raise InterPLMError("cannot write a description with a line break to FASTA", file=path, record=pid)
            sequence = clean_sequence(rec.sequence, file=path, record=pid)
            out.write(f">{pid} {description}".rstrip() + "\n")
            for i in range(0, len(sequence), width):
                out.write(sequence[i : i + width] + "\n")


def read_reference_sequence(text: str, field: str = "reference") -> str:
    """A full-length reference sequence as a user gives it: one-letter codes, or a FASTA file with one record.

    ``field`` names the input in errors (the PyMOL argument ``uniprot``, napari's ``reference``).
    """
    text = str(text).strip()
    if re.fullmatch(r"[A-Za-z*\s]+", text):  # letters only: a sequence (file names have a dot or a slash)
        return clean_sequence(text, record=field)
    path = Path(os.path.expanduser(text))
    if not path.is_file():
        raise InterPLMError(f"{field}: neither a protein sequence nor a FASTA file", file=path)
    records = read_fasta(path)
    if len(records) != 1:
        raise InterPLMError(f"{field}: the FASTA file has {len(records)} records; give a file with one, or the sequence itself", file=path)
    return records[0].sequence


SPLITS = ("train", "valid", "test")


def _hash64(key: bytes) -> int:
    """The first 64 bits of ``key``'s SHA-1: the same on every machine and run, unlike ``hash()``."""
    return int.from_bytes(hashlib.sha1(key).digest()[:8], "big")


def protein_split(protein_id: str, valid_fraction: float = 0.15, test_fraction: float = 0.15) -> str:
    """Deterministic split of a protein by a hash of its id: ``"train"``, ``"valid"`` or ``"test"``.

    The same id always lands in the same split, so the demo PLM, the SAE and the concept metrics
    agree on which proteins are held out, across machines and runs.
    """
    u = _hash64(protein_id.encode("utf-8")) / 2**64
    if u < test_fraction:
        return "test"
    if u < test_fraction + valid_fraction:
        return "valid"
    return "train"
