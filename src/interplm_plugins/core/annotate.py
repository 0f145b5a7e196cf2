"""From an SAE to its feature database in one pass: activations, statistics, examples and concept matches.

:func:`build_database` streams every protein once through the PLM and the SAE; each protein's
activations feed the database builder (statistics, top and quantile examples) and, when the
protein has Swiss-Prot concept labels, the concept counters of its half (:func:`concept_split`). The
concept table (every concept's best features at their best validation threshold, scored on test)
is written into the same file at the end. The file appears atomically.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import pandas as pd
from scipy import sparse

from interplm_plugins.core.activations import Pipeline, iter_feature_activations
from interplm_plugins.core.concepts import THRESHOLDS, ConceptLabels, ConceptMatchCounter, feature_concept_table
from interplm_plugins.core.database import build_feature_database
from interplm_plugins.core.sequences import CONCEPT_SPLITS, ProteinRecord, concept_split
from interplm_plugins.errors import InterPLMError


def build_database(
    pipeline: Pipeline,
    records: Sequence[ProteinRecord],
    out_path: str | os.PathLike,
    labels: ConceptLabels | None = None,
    thresholds: Sequence[float] = THRESHOLDS,
    matches_per_concept: int = 20,
    top_k: int = 10,
    toks_per_batch: int = 4096,
    data_sources: Sequence[str] = (),
    progress: bool = True,
) -> Path:
    """Build the feature database of ``pipeline`` over ``records`` (and ``labels``' concepts) at ``out_path``."""
    if not records:
        raise InterPLMError("no proteins to build the feature database from", file=out_path)
    counters: dict[str, ConceptMatchCounter] = {}
    if labels is not None:
        for protein in records:
            if protein.id in labels.sequences and labels.sequences[protein.id] != protein.sequence:
                raise InterPLMError("sequence differs from the one in the concept annotations", record=protein.id)
        counters = {s: ConceptMatchCounter(labels, pipeline.num_features, thresholds) for s in CONCEPT_SPLITS}

    def stream() -> Iterator[tuple[ProteinRecord, np.ndarray]]:
        for record, acts in iter_feature_activations(pipeline.plm, pipeline.sae, pipeline.layer, records, toks_per_batch):
            if counters and record.id in labels.sequences:
                counters[concept_split(record.id)].add(record.id, sparse.csr_matrix(acts))  # SAE activations are >= 0: zeros drop out
            yield record, acts

    def concept_table() -> pd.DataFrame | None:
        if not counters:
            return None
        valid, test = counters["valid"].result(), counters["test"].result()
        if valid.n_proteins == 0 or test.n_proteins == 0:
            raise InterPLMError(
                f"concept metrics need annotated proteins in both validation and test splits "
                f"(got {valid.n_proteins} and {test.n_proteins})"
            )
        return feature_concept_table(valid, test, per_concept=matches_per_concept)

    def concept_summary() -> pd.DataFrame | None:
        if labels is None:
            return None
        summary = labels.summary()
        return summary.rename(columns={"instances": "n_instances", "residues": "n_residues", "proteins": "n_proteins"})

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
    return build_feature_database(
        out_path,
        stream(),
        provenance=provenance,
        concept_table=concept_table,
        concept_summary=concept_summary,
        top_k=top_k,
        progress=progress,
        total=len(records),
    )
