"""Structures to sequences: the protein chains of a PDB/mmCIF file and their residue-level mapping.

Which residues make up a protein chain (the same rules for Biopython's parse of a file and for the
atom table PyMOL hands over, because both go through :func:`residue_letter`):

- the first model only (or ``model_index``) of NMR ensembles;
- alternate locations are one residue (for point mutations, the alternative listed first names it);
- insertion codes are distinct residues (``52``, ``52A``, ``52B``); negative and offset numbering is
  kept as it is in the file;
- the 20 standard amino acids from ATOM records; ``UNK`` -> ``X``, ``SEC`` -> ``U``, ``PYL`` -> ``O``;
- modified residues (HETATM or ATOM) map to their parent amino acid by Biopython's table of the PDB
  Chemical Component Dictionary (``Bio.Data.PDBData.protein_letters_3to1_extended``, ~1000 entries:
  ``MSE`` -> ``M``, ``SEP`` -> ``S``, ``MLY`` -> ``K``, ...);
- everything else is left out: water, ligands, ions, sugars, nucleotides, D-amino acids, and a
  standard amino acid in a HETATM record (a free amino-acid ligand, not part of the chain);
- a chain with no amino-acid residue at all (only ligands or water, a nucleic acid) is not a
  protein chain and is not returned.

Chains and residues are kept in the order the file first lists them.
"""

from __future__ import annotations

import gzip
import io
import os
import re
import zlib
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from interplm_plugins.errors import InterPLMError

#: The 20 standard amino acids (three-letter -> one-letter).
STANDARD_AMINO_ACIDS: dict[str, str] = {
    "ALA": "A", "ARG": "R", "ASN": "N", "ASP": "D", "CYS": "C", "GLN": "Q", "GLU": "E", "GLY": "G",
    "HIS": "H", "ILE": "I", "LEU": "L", "LYS": "K", "MET": "M", "PHE": "F", "PRO": "P", "SER": "S",
    "THR": "T", "TRP": "W", "TYR": "Y", "VAL": "V",
}  # fmt: skip
#: Residues that are not one of the 20 but have their own letter in ESM's alphabet.
SPECIAL_AMINO_ACIDS: dict[str, str] = {"UNK": "X", "SEC": "U", "PYL": "O"}

_STRUCTURE_SUFFIXES = (".pdb", ".ent", ".cif", ".mmcif")
_RESI = re.compile(r"^\s*(-?\d+)\s*([A-Za-z]?)\s*$")


def _modified_residue_parents() -> dict[str, str]:
    from Bio.Data.PDBData import protein_letters_3to1_extended

    return {name: letter for name, letter in protein_letters_3to1_extended.items() if name not in STANDARD_AMINO_ACIDS}


_MODIFIED_PARENTS = _modified_residue_parents()


def residue_letter(resn: str, hetero: bool = False) -> str | None:
    """One-letter code of a residue of a protein chain, or ``None`` if it is not part of one (see module rules)."""
    name = resn.strip().upper()
    if name in STANDARD_AMINO_ACIDS:
        return None if hetero else STANDARD_AMINO_ACIDS[name]
    return SPECIAL_AMINO_ACIDS.get(name) or _MODIFIED_PARENTS.get(name)


@dataclass(frozen=True)
class StructureResidue:
    """One modelled residue: chain id, residue number, insertion code (``""`` if none), name, letter."""

    chain: str
    resi: int
    icode: str
    resn: str
    one_letter: str

    @property
    def label(self) -> str:
        """The residue number as PyMOL's ``resi`` string and PDB files write it: ``"52"``, ``"52A"``, ``"-3"``."""
        return f"{self.resi}{self.icode}"


@dataclass(frozen=True)
class StructureChain:
    """The modelled protein residues of one chain, in file order."""

    chain_id: str
    residues: tuple[StructureResidue, ...]

    @cached_property
    def sequence(self) -> str:
        """The one-letter sequence of the modelled residues (gaps of unmodelled residues are not filled)."""
        return "".join(r.one_letter for r in self.residues)

    def __len__(self) -> int:
        return len(self.residues)


def chain_sequence(chain: StructureChain) -> str:
    """The one-letter sequence of ``chain``'s modelled residues."""
    return chain.sequence


def parse_resi(resi: str | int, *, file: str | os.PathLike | None = None, record: str | None = None) -> tuple[int, str]:
    """Split a residue label such as ``"52A"``, ``"-3"`` or ``7`` into (number, insertion code)."""
    match = _RESI.match(str(resi))
    if not match:
        raise InterPLMError(f"residue number {str(resi)!r} is not an integer with an optional insertion code", file=file, record=record)
    return int(match.group(1)), match.group(2).upper()


class _ChainBuilder:
    """Collects residues into chains by the module rules; the single place both parsers go through."""

    def __init__(self) -> None:
        self._chains: dict[str, list[StructureResidue]] = {}
        self._seen: set[tuple[str, int, str]] = set()

    def add(self, chain: str, resi: int, icode: str, resn: str, hetero: bool) -> StructureResidue | None:
        """Add a residue; returns it if it became part of a chain (``None`` if left out or seen before)."""
        chain = chain.strip()
        icode = icode.strip().upper()
        key = (chain, resi, icode)
        residues = self._chains.setdefault(chain, [])  # chains come in the order the file first names them
        if key in self._seen:  # alternate locations (or more atoms) of a residue already taken
            return None
        letter = residue_letter(resn, hetero)
        if letter is None:
            return None
        self._seen.add(key)
        residue = StructureResidue(chain, resi, icode, resn.strip().upper(), letter)
        residues.append(residue)
        return residue

    def chains(self) -> list[StructureChain]:
        return [StructureChain(cid, tuple(residues)) for cid, residues in self._chains.items() if residues]


def chain_from_atoms(rows: Iterable[Sequence]) -> list[StructureChain]:
    """Protein chains from an atom table such as PyMOL's: rows of ``(chain, resi, resn)`` or ``(chain, resi, resn, hetatm)``.

    ``resi`` is a residue label (``"52A"``, ``"-3"``); one row per atom is fine (atoms of a residue
    collapse into it). The residue rules are those of :func:`read_structure`.
    """
    builder = _ChainBuilder()
    for row in rows:
        if len(row) not in (3, 4):
            raise InterPLMError(f"atom row {tuple(row)!r} is not (chain, resi, resn[, hetatm])")
        chain, resi, resn = row[0], row[1], row[2]
        hetero = bool(row[3]) if len(row) == 4 else False
        number, icode = parse_resi(resi, record=f"chain {chain}")
        builder.add(str(chain), number, icode, str(resn), hetero)
    return builder.chains()


def _read_text(path: Path) -> str:
    try:
        if path.suffix.lower() == ".gz":
            with gzip.open(path, "rt", encoding="utf-8") as fh:
                return fh.read()
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise InterPLMError(f"not a text structure file ({exc.reason} at byte {exc.start})", file=path) from None
    except (EOFError, gzip.BadGzipFile, zlib.error, OSError) as exc:
        raise InterPLMError(f"cannot read structure file ({exc})", file=path) from None


def _is_mmcif(text: str) -> bool:
    for line in text.splitlines():
        if line.strip() and not line.startswith("#"):
            return line.startswith("data_")
    return False


def read_structure(path: str | os.PathLike, model_index: int = 0) -> list[StructureChain]:
    """The protein chains of a PDB or mmCIF file (``.pdb``, ``.ent``, ``.cif``, ``.mmcif``, optionally ``.gz``).

    The format is recognised from the content (mmCIF starts with ``data_``). Raises
    :class:`InterPLMError` for unreadable files, broken records and files without a protein chain.
    """
    return _model_chains(_parse_model(Path(path), model_index), Path(path))[0]


def read_structure_ca(path: str | os.PathLike, model_index: int = 0) -> tuple[list[StructureChain], list[np.ndarray]]:
    """:func:`read_structure`'s chains and, per chain, its residues' Cα coordinates ``[len(chain), 3]`` (x, y, z).

    A residue without a Cα atom has a row of NaN; alternate locations give the Cα Biopython selects
    (highest occupancy) of the residue :func:`read_structure` keeps.
    """
    path = Path(path)
    chains, ca = _model_chains(_parse_model(path, model_index), path)
    missing = (np.nan, np.nan, np.nan)
    coords = [np.array([ca.get(r, missing) for r in chain.residues], dtype=np.float64).reshape(-1, 3) for chain in chains]
    return chains, coords


def _parse_model(path: Path, model_index: int):
    """Biopython's model ``model_index`` of a structure file, with the project's errors."""
    from Bio.PDB import MMCIFParser, PDBParser
    from Bio.PDB.PDBExceptions import PDBConstructionException

    if not path.is_file():
        raise InterPLMError("no such file", file=path)
    text = _read_text(path)
    if not text.strip():
        raise InterPLMError("empty file", file=path)
    mmcif = _is_mmcif(text)
    parser = MMCIFParser(QUIET=True) if mmcif else PDBParser(QUIET=True)
    try:
        structure = parser.get_structure(path.stem, io.StringIO(text))
    except PDBConstructionException as exc:
        raise InterPLMError(f"broken {'mmCIF' if mmcif else 'PDB'} record ({exc})", file=path) from None
    except Exception as exc:
        # MMCIF2Dict and the PDB column parser fail with KeyError, ValueError, IndexError, TypeError,
        # even ZeroDivisionError (fuzzing found a loop_ with no tags) on files that are not what they
        # claim to be: whatever Biopython raises on a file, the file is unreadable.
        what = "mmCIF" if mmcif else "PDB"
        reason = " ".join(str(exc).split())[:200]
        raise InterPLMError(f"not a readable {what} file ({type(exc).__name__}: {reason})", file=path) from None
    models = list(structure)
    if not models:
        known = path.name.lower().removesuffix(".gz").endswith(_STRUCTURE_SUFFIXES)
        hint = "" if known else f" (expected a PDB or mmCIF file: {', '.join(_STRUCTURE_SUFFIXES)})"
        raise InterPLMError(f"no atoms found: not a structure file{hint}", file=path)
    if not 0 <= model_index < len(models):
        raise InterPLMError(f"model index {model_index} out of range: the file has {len(models)} model(s)", file=path)
    return models[model_index]


def _model_chains(model, path: Path) -> tuple[list[StructureChain], dict[StructureResidue, tuple[float, float, float]]]:
    """The protein chains of a Biopython model and the Cα coordinates of their residues that have one."""
    from Bio.PDB.Residue import DisorderedResidue

    builder = _ChainBuilder()
    ca: dict[StructureResidue, tuple[float, float, float]] = {}
    for chain in model:
        for residue in chain:
            if isinstance(residue, DisorderedResidue):  # a point mutation: Biopython selects the last one
                residue = residue.disordered_get_list()[0]
            hetflag, number, icode = residue.id
            added = builder.add(chain.id, int(number), icode, residue.get_resname(), hetero=hetflag.strip() != "")
            if added is not None and "CA" in residue:
                ca[added] = tuple(float(v) for v in residue["CA"].coord)
    chains = builder.chains()
    if not chains:
        raise InterPLMError("no protein chain (only ligands, water or nucleic acids)", file=path)
    return chains, ca


def _scoring_letters(sequence: str) -> str:
    # BLOSUM62 has no rows for selenocysteine and pyrrolysine; score them as their parents.
    return sequence.upper().replace("U", "C").replace("O", "K").replace("J", "X")


def _aligner():
    from Bio.Align import PairwiseAligner, substitution_matrices

    aligner = PairwiseAligner()
    aligner.mode = "global"
    aligner.substitution_matrix = substitution_matrices.load("BLOSUM62")
    aligner.open_gap_score = -10.0
    aligner.extend_gap_score = -0.5
    # Free end gaps on both sides: a structure covers part of the protein and may carry a tag.
    aligner.end_gap_score = 0.0
    return aligner


def align_to_reference(
    chain_sequence: str,
    reference_sequence: str,
    *,
    min_identity: float = 0.9,
    min_coverage: float = 0.5,
    selected: Sequence[int] | None = None,
    file: str | os.PathLike | None = None,
    record: str | None = None,
) -> np.ndarray:
    """Map each structure residue to its 0-based position in ``reference_sequence``, or -1 if it has none.

    Semi-global alignment (BLOSUM62, free end gaps), so a partial structure, unmodelled loops and
    expression tags map correctly. Raises :class:`InterPLMError` if fewer than ``min_coverage`` of
    the structure residues align or their identity is below ``min_identity`` (wrong protein).
    With ``selected`` (indices of chain residues) both rules apply to those residues only: the
    T4-lysozyme part of a receptor fusion matches lysozyme although most of the chain does not.
    """
    if not chain_sequence or not reference_sequence:
        raise InterPLMError("cannot align an empty sequence", file=file, record=record)
    mapping = reference_mapping(chain_sequence, reference_sequence)
    coverage, identity, mapped, total = alignment_quality(chain_sequence, reference_sequence, mapping, selected)
    if coverage < min_coverage or identity < min_identity:
        what = "residues" if selected is None else "selected residues"
        raise InterPLMError(
            f"structure sequence does not match the reference: {mapped} of {total} {what} "
            f"align ({coverage:.0%}, need {min_coverage:.0%}) at {identity:.1%} identity (need {min_identity:.0%})",
            file=file,
            record=record,
        )
    return mapping


def reference_mapping(chain_sequence: str, reference_sequence: str) -> np.ndarray:
    """The semi-global alignment of :func:`align_to_reference`, unchecked: per structure residue its
    0-based reference position or -1."""
    alignment = _aligner().align(_scoring_letters(chain_sequence), _scoring_letters(reference_sequence))[0]
    mapping = np.full(len(chain_sequence), -1, dtype=np.int64)
    for (s0, s1), (r0, r1) in zip(*alignment.aligned):
        mapping[s0:s1] = np.arange(r0, r1)
    return mapping


def alignment_quality(
    chain_sequence: str, reference_sequence: str, mapping: np.ndarray, selected: Sequence[int] | None = None
) -> tuple[float, float, int, int]:
    """``(coverage, identity, aligned, counted)`` of a residue -> reference ``mapping`` over the
    ``selected`` residues (all by default): the fraction aligned, and identical among those."""
    counted = np.arange(len(mapping)) if selected is None else np.unique(np.asarray(selected, dtype=int))
    mapped = counted[mapping[counted] >= 0]
    same = sum(chain_sequence[i].upper() == reference_sequence[mapping[i]].upper() for i in mapped)
    coverage = len(mapped) / len(counted) if len(counted) else 0.0
    identity = same / len(mapped) if len(mapped) else 0.0
    return coverage, identity, len(mapped), len(counted)
