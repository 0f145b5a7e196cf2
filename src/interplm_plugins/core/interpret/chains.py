"""Activations on structure chains: each residue of a chain with its activation vector.

:func:`chain_activations` embeds a chain's own modelled sequence, or a full-length reference the
chain is aligned to; :func:`chains_with_references` matches each chain of a structure to the
references a user gives (:mod:`~interplm_plugins.core.inputs.references`) and embeds the one it
matches (:func:`matched_activations`). Used by PyMOL, napari and ``interplm color/mutate/export``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from interplm_plugins.core.inputs.references import ReferenceMatch, check_matches, match_chain
from interplm_plugins.core.inputs.sequences import ProteinRecord, clean_sequence
from interplm_plugins.core.inputs.structure import StructureChain, align_to_reference
from interplm_plugins.core.interpret.pipeline import Pipeline


@dataclass
class ChainActivations:
    """A structure chain's residues with their ``[F]`` activation vectors (``None`` where unmapped).

    ``positions[i]`` is residue ``i``'s 0-based index in the sequence that was embedded (the
    chain's own modelled sequence, or the full-length reference), -1 if it has none.
    """

    chain: StructureChain
    sequence: str
    positions: np.ndarray
    activations: np.ndarray  # [len(sequence), F]

    def feature_values(self, feature: int) -> np.ndarray:
        """Per structure residue, the feature's activation (NaN where the residue maps nowhere)."""
        values = np.full(len(self.chain.residues), np.nan, dtype=np.float32)
        ok = self.positions >= 0
        values[ok] = self.activations[self.positions[ok], feature]
        return values

    def residue_vectors(self, residue_indices: Sequence[int]) -> np.ndarray:
        """``[n, F]`` activations of the given structure residues (those that map somewhere)."""
        idx = self.positions[np.asarray(residue_indices, dtype=int)]
        return self.activations[idx[idx >= 0]]


def chain_activations(pipeline: Pipeline, chain: StructureChain, reference: str | None = None, source: str | None = None) -> ChainActivations:
    """Activations for every residue of ``chain``.

    Without ``reference`` the chain's modelled sequence is embedded (residue ``i`` -> position
    ``i``). With a full-length ``reference`` sequence, that is embedded instead and the chain is
    aligned to it, so activations computed with the whole protein's context land on a partial
    structure; residues that do not align get no value.
    """
    record = f"chain {chain.chain_id}"
    if reference:
        reference = clean_sequence(reference, record="reference")
        positions = align_to_reference(chain.sequence, reference, file=source, record=record)
        sequence = reference
    else:
        positions = np.arange(len(chain.residues))
        sequence = chain.sequence
    return ChainActivations(chain, sequence, positions, pipeline.activations(sequence, record=record))


def matched_activations(pipeline: Pipeline, chain: StructureChain, match: ReferenceMatch) -> ChainActivations:
    """The chain's activations with its reference embedded; no values at all if the match fails."""
    if not match.ok:
        return ChainActivations(chain, "", np.full(len(chain), -1, dtype=np.int64), np.zeros((0, pipeline.num_features), dtype=np.float32))
    sequence = match.reference.sequence
    return ChainActivations(chain, sequence, match.positions, pipeline.activations(sequence, record=match.reference.id))


def chains_with_references(
    pipeline: Pipeline, chains: Sequence[StructureChain], references: Sequence[ProteinRecord] | None, source: str | os.PathLike,
    selected: Sequence[Sequence[int] | None] | None = None,
) -> tuple[list[ChainActivations], str | None]:
    """Each chain's activations and the line saying which chain matched which reference.

    Without ``references`` a chain's own sequence is embedded (and the line is None); with them each
    chain is aligned to the record it matches best over its ``selected`` residues, and a chain that
    matches none gets no values (an error only when no chain matches).
    """
    if not references:
        return [chain_activations(pipeline, c, source=str(source)) for c in chains], None
    matches = [match_chain(c, references, s) for c, s in zip(chains, selected or [None] * len(chains))]
    line = check_matches(matches, source=source)
    return [matched_activations(pipeline, c, m) for c, m in zip(chains, matches)], line
