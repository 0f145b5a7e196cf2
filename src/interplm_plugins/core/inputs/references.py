"""Full-length reference sequences for structure chains: which chain is which protein.

A user gives one or several references (``uniprot=`` in PyMOL, ``--uniprot`` on the command line,
napari's reference field): a sequence, or a FASTA file with one record per protein of a complex.
Each protein chain is aligned to every reference (:func:`~interplm_plugins.core.inputs.structure.reference_mapping`)
and takes the one it matches best; a chain that matches none keeps no values (it is drawn grey),
and only when no chain matches is it an error. The identity and coverage rules count the
residues the user selected, so the lysozyme half of a receptor-lysozyme fusion matches lysozyme.
The chains' activations, computed on the references they match, are
:func:`~interplm_plugins.core.interpret.chains.chains_with_references`.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from interplm_plugins.core.inputs.sequences import ProteinRecord, read_fasta, read_reference_sequence
from interplm_plugins.core.inputs.structure import StructureChain, alignment_quality, reference_mapping
from interplm_plugins.errors import InterPLMError

#: Least fraction of identical residues among the aligned ones for a chain to match a reference.
MIN_IDENTITY = 0.9
#: Least fraction of the (selected) chain residues that must align to the reference.
MIN_COVERAGE = 0.5


@dataclass(frozen=True)
class ReferenceMatch:
    """The best alignment of one chain to the references: which record, where each residue lands."""

    chain_id: str
    reference: ProteinRecord
    positions: np.ndarray  # per chain residue, 0-based reference position or -1
    coverage: float
    identity: float
    aligned: int
    counted: int

    @property
    def ok(self) -> bool:
        """Whether the match passes the identity and coverage rules."""
        return self.coverage >= MIN_COVERAGE and self.identity >= MIN_IDENTITY

    def reason(self) -> str:
        """Why the chain does (not) match, in numbers."""
        return (
            f"chain {self.chain_id}: {self.aligned} of {self.counted} residues align to {self.reference.id} "
            f"({self.coverage:.0%}, need {MIN_COVERAGE:.0%}) at {self.identity:.1%} identity (need {MIN_IDENTITY:.0%})"
        )


def read_references(text: str, field: str = "reference") -> list[ProteinRecord]:
    """The references a user gives: one-letter codes (one record, id ``field``) or a FASTA file
    with one or more records (one per protein of a complex)."""
    text = str(text).strip()
    path = Path(os.path.expanduser(text))
    if re.fullmatch(r"[A-Za-z*\s]+", text) or not path.is_file():  # a sequence, or the error naming the input
        return [ProteinRecord(field, read_reference_sequence(text, field))]
    records = read_fasta(path)
    if not records:
        raise InterPLMError(f"{field}: the FASTA file has no records", file=path)
    return records


def match_chain(chain: StructureChain, references: Sequence[ProteinRecord], selected: Sequence[int] | None = None) -> ReferenceMatch:
    """The reference ``chain`` matches best (most identical residues among the ``selected`` ones;
    a passing match before a failing one). Check :attr:`ReferenceMatch.ok` before using it."""
    best: ReferenceMatch | None = None
    for record in references:
        positions = reference_mapping(chain.sequence, record.sequence)
        coverage, identity, aligned, counted = alignment_quality(chain.sequence, record.sequence, positions, selected)
        match = ReferenceMatch(chain.chain_id, record, positions, coverage, identity, aligned, counted)
        if best is None or (match.ok, match.identity * match.aligned) > (best.ok, best.identity * best.aligned):
            best = match
    if best is None:
        raise InterPLMError("no reference sequence given")
    return best


def check_matches(matches: Sequence[ReferenceMatch], source: str | os.PathLike | None = None) -> str:
    """One line saying which chain matched which reference; raises (naming ``source`` and every
    chain's numbers) when none did."""
    if not any(m.ok for m in matches):
        raise InterPLMError("structure sequence does not match the reference: " + "; ".join(m.reason() for m in matches), file=source)
    return ", ".join(f"chain {m.chain_id} = {m.reference.id}" if m.ok else f"chain {m.chain_id} matches no reference (grey)" for m in matches)


