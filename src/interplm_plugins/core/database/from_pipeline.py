"""From an SAE to its feature database in one pass: activations, statistics, examples and concept matches.

:func:`build_database` streams every protein once through a pipeline's PLM and SAE; each protein's
activations feed the database builder (:func:`~interplm_plugins.core.database.build.build_feature_database`:
statistics, top and quantile examples) and, when the protein is annotated, the
:class:`~interplm_plugins.core.concepts.counts.HalvesCounter` of the concept halves. The concept
table (every eligible concept's best features on validation, each at its validation threshold,
with the test metrics there) is written into the same file at the end. The file appears
atomically.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import pandas as pd
from scipy import sparse

from interplm_plugins.core.concepts.counts import THRESHOLDS, HalvesCounter
from interplm_plugins.core.concepts.labels import ConceptHalves
from interplm_plugins.core.concepts.selection import Eligibility, concept_vocabulary, feature_concept_table
from interplm_plugins.core.database.build import build_feature_database
from interplm_plugins.core.database.schema import DEFAULT_CONCEPT_FLOOR
from interplm_plugins.core.inputs.sequences import ProteinRecord
from interplm_plugins.core.sae.encode import iter_feature_activations
from interplm_plugins.errors import InterPLMError


def build_database(
    pipeline,
    records: Sequence[ProteinRecord],
    out_path: str | os.PathLike,
    halves: ConceptHalves | None = None,
    eligibility: Eligibility | None = None,
    thresholds: Sequence[float] = THRESHOLDS,
    matches_per_concept: int = 20,
    concept_floor: float = DEFAULT_CONCEPT_FLOOR,
    top_k: int = 10,
    toks_per_batch: int = 4096,
    data_sources: Sequence[str] = (),
    progress: bool = True,
) -> Path:
    """Build the feature database of ``pipeline`` over ``records`` (and ``halves``' concepts) at ``out_path``.

    ``pipeline`` is a :class:`~interplm_plugins.core.interpret.pipeline.Pipeline` (read for its PLM,
    SAE, layer, compute precision and provenance; the database stage does not import the
    interpretation stage that defines it).
    """
    if not records:
        raise InterPLMError("no proteins to build the feature database from", file=out_path)
    eligibility = eligibility or Eligibility()
    counter: HalvesCounter | None = None
    if halves is not None:
        annotated = halves.sequences
        for protein in records:
            if protein.id in annotated and annotated[protein.id] != protein.sequence:
                raise InterPLMError("sequence differs from the one in the concept annotations", record=protein.id)
        counter = HalvesCounter(halves, pipeline.num_features, thresholds)
    def stream() -> Iterator[tuple[ProteinRecord, np.ndarray]]:
        for record, acts in iter_feature_activations(pipeline.plm, pipeline.sae, pipeline.layer, records, toks_per_batch, precision=pipeline.precision):
            if counter is not None:
                counter.add(record.id, sparse.csr_matrix(acts))  # SAE activations are >= 0: zeros drop out
            yield record, acts

    def concept_table() -> pd.DataFrame | None:
        if counter is None:
            return None
        valid, test = counter.results()
        return feature_concept_table(valid, test, per_concept=matches_per_concept, eligibility=eligibility)

    def concept_summary() -> pd.DataFrame | None:
        if halves is None:
            return None
        return concept_vocabulary(halves, eligibility)

    provenance = {
        "plm": pipeline.plm.name,
        "plm_identity": pipeline.plm.identity,
        "layer": pipeline.layer,
        "sae": pipeline.sae_source,
        "sae_hash": pipeline.sae_hash,
        "sae_kind": pipeline.sae.kind,
        "normalized": bool(pipeline.sae.config.normalized),
        "thresholds": [float(t) for t in thresholds],
        "data_sources": [str(s) for s in data_sources],
    }
    if halves is not None:
        provenance.update(concept_selection="validation", concept_halves=halves.how, concept_eligibility=eligibility.describe())
    return build_feature_database(
        out_path,
        stream(),
        provenance=provenance,
        concept_table=concept_table,
        concept_summary=concept_summary,
        top_k=top_k,
        concept_floor=concept_floor,
        progress=progress,
        total=len(records),
    )
