"""Features of sequences without a structure: per protein the most active SAE features with their concept
matches, and per residue its top features (``interplm features``; DataFrames for Python).

Proteins rank features by their maximum activation over the protein (InterPLM's normalised scale: 1 is
the feature's maximum on the SAE's training residues), ties by the mean. A feature's concept is its best
match in the pipeline's feature database (``best_concepts``: chosen on validation, above the floor; its
test F1 is shown, worded by :func:`~interplm_plugins.core.database.schema.concept_label`).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from interplm_plugins.core.inputs.sequences import ProteinRecord
from interplm_plugins.core.interpret.pipeline import Pipeline, load_pipeline

PROTEIN_COLUMNS = ("protein", "rank", "feature", "max_activation", "mean_activation", "active_residues", "peak_position",
                   "peak_residue", "concept", "concept_f1", "concept_label")  # fmt: skip
RESIDUE_COLUMNS = ("protein", "position", "aa", "rank", "feature", "activation", "concept")


@dataclass
class FeatureReport:
    """``proteins``: one row per (protein, top feature); ``residues``: one row per (residue, top feature)."""

    proteins: pd.DataFrame
    residues: pd.DataFrame

    def to_json(self) -> str:
        """Both tables as JSON: per protein its top features and, per residue, its top features."""
        out = []
        for protein, rows in self.proteins.groupby("protein", sort=False):
            residues = self.residues[self.residues["protein"] == protein]
            out.append({
                "protein": protein,
                "top_features": _records(rows.drop(columns="protein")),
                "residues": [{"position": int(pos), "aa": group["aa"].iloc[0], "features": _records(group[["feature", "activation", "concept"]])}
                             for pos, group in residues.groupby("position", sort=True)],
            })  # fmt: skip
        return json.dumps({"proteins": out}, indent=1) + "\n"


def _records(frame: pd.DataFrame) -> list[dict]:
    """Rows as dicts with NaN as null (JSON has no NaN)."""
    return json.loads(frame.to_json(orient="records"))


def _top_features(acts: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` features with the highest maximum (then mean) activation that fire at all."""
    peak, mean = acts.max(axis=0), acts.mean(axis=0)
    order = np.lexsort((-mean, -peak))[:k]
    return order[peak[order] > 0]


def sequence_features(pipeline: Pipeline, records: Iterable[ProteinRecord], top: int = 10, residue_top: int = 5) -> FeatureReport:
    """Top ``top`` features per protein and top ``residue_top`` per residue (only features that fire)."""
    from interplm_plugins.core.database.schema import concept_label

    database = pipeline.database
    protein_rows, residue_rows = [], []
    for record in records:
        acts = pipeline.activations(record.sequence, record=record.id)
        tops = _top_features(acts, top)
        order = np.argsort(-acts, axis=1, kind="stable")[:, :residue_top]
        wanted = sorted({int(f) for f in tops} | {int(f) for f in order[np.take_along_axis(acts, order, axis=1) > 0]})
        best = database.best_concepts(wanted) if database is not None else {}  # one query per protein
        for rank, f in enumerate(tops, start=1):
            peak, match = int(acts[:, f].argmax()), best.get(int(f))
            protein_rows.append((record.id, rank, int(f), float(acts[peak, f]), float(acts[:, f].mean()), int((acts[:, f] > 0).sum()),
                                 peak + 1, record.sequence[peak], match.concept if match else None, match.f1 if match else None,
                                 concept_label(match)))  # fmt: skip
        for position, features in enumerate(order):
            for rank, f in enumerate(features[acts[position, features] > 0], start=1):
                match = best.get(int(f))
                residue_rows.append((record.id, position + 1, record.sequence[position], rank, int(f), float(acts[position, f]),
                                     match.concept if match else None))  # fmt: skip
    return FeatureReport(pd.DataFrame(protein_rows, columns=PROTEIN_COLUMNS), pd.DataFrame(residue_rows, columns=RESIDUE_COLUMNS))


def protein_features(sequence: str, pipeline: Pipeline | None = None, top: int = 10) -> pd.DataFrame:
    """The ``top`` most active features of one protein sequence with their concepts.

    ``pipeline`` defaults to the embedded demo's (:func:`~interplm_plugins.core.interpret.pipeline.load_pipeline`
    with no arguments); in a PyMOL or napari session pass :func:`interplm_plugins.session.current_pipeline`.
    """
    return sequence_features(pipeline or load_pipeline(), [ProteinRecord("query", sequence)], top=top).proteins


def write_report(report: FeatureReport, prefix: str | os.PathLike) -> list[Path]:
    """``PREFIX.proteins.tsv``, ``PREFIX.residues.tsv`` and ``PREFIX.json``, each written atomically."""
    from interplm_plugins.core.atomic import atomic_path, write_text_atomic

    prefix = Path(prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    paths = [prefix.with_name(prefix.name + suffix) for suffix in (".proteins.tsv", ".residues.tsv", ".json")]
    for frame, path in zip((report.proteins, report.residues), paths):
        with atomic_path(path) as tmp:
            frame.to_csv(tmp, sep="\t", index=False, float_format="%.4f", na_rep="")
    write_text_atomic(paths[2], report.to_json())
    return paths


def format_report(report: FeatureReport, sequences: Sequence[ProteinRecord]) -> str:
    """The per-protein table as text, for the terminal."""
    lines = []
    for record in sequences:
        rows = report.proteins[report.proteins["protein"] == record.id]
        lines.append(f"{record.id} ({len(record.sequence)} residues): {len(rows)} features")
        lines.append(f"  {'rank':>4} {'feature':>7} {'max':>6} {'mean':>6} {'active':>6} {'peak':>7}  concept")
        for row in rows.itertuples(index=False):
            lines.append(f"  {row.rank:>4} {row.feature:>7} {row.max_activation:6.3f} {row.mean_activation:6.3f} "
                         f"{row.active_residues:>6} {row.peak_residue}{row.peak_position:<6}  {row.concept_label}")  # fmt: skip
    return "\n".join(lines)
