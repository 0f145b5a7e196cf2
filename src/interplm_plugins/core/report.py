"""SAE features against single neurons: InterPLM's headline comparison, on held-out Swiss-Prot proteins.

For each Swiss-Prot concept, the best SAE feature and the best neuron of the same layer are chosen
on validation proteins (feature/neuron and threshold with the highest selection F1) and scored on
test proteins; the report counts concepts whose test F1 reaches ``f1_cutoff`` (0.5 in InterPLM).

Neurons are put on the SAE's footing as InterPLM does for its baseline: each embedding dimension
``d`` gives two candidates, ``max(x_d, 0)`` and ``max(-x_d, 0)`` (a neuron can signal by going
negative), each divided by its maximum over the scanned proteins, so both lie in [0, 1] and the
same thresholds (0, 0.15, 0.5, 0.6, 0.8) apply.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from interplm_plugins.core.activations import Pipeline, encode_features
from interplm_plugins.core.atomic import save_figure_png, write_text_atomic
from interplm_plugins.core.concepts import THRESHOLDS, ConceptLabels, ConceptMatchCounter, best_feature_per_concept
from interplm_plugins.core.embed import embed_sequences
from interplm_plugins.core.sequences import CONCEPT_SPLITS, ProteinRecord, concept_split
from interplm_plugins.errors import InterPLMError

F1_CUTOFF = 0.5
#: Further cutoffs the summary counts at, so a comparison that hinges on one concept near 0.5 shows it.
REPORTED_CUTOFFS: tuple[float, ...] = (0.3, 0.4, 0.5, 0.6)


def signed_neurons(embeddings: np.ndarray, maxima: np.ndarray | None = None) -> np.ndarray:
    """``[L, 2D]``: positive parts then negative parts of each neuron, divided by ``maxima`` (if given)."""
    both = np.concatenate([np.maximum(embeddings, 0), np.maximum(-embeddings, 0)], axis=1).astype(np.float32)
    if maxima is not None:
        both /= np.where(maxima > 0, maxima, 1.0)[None, :]
    return both


@dataclass
class ConceptComparison:
    """Per-concept best SAE feature and best neuron, and how many concepts each finds at F1 >= cutoff."""

    sae: pd.DataFrame
    neurons: pd.DataFrame
    f1_cutoff: float
    n_valid_proteins: int
    n_test_proteins: int
    embed_dim: int  # neuron index n is dimension n % embed_dim, positive part first

    @property
    def sae_concepts_found(self) -> int:
        return int((self.sae["test_f1"] >= self.f1_cutoff).sum())

    @property
    def neuron_concepts_found(self) -> int:
        return int((self.neurons["test_f1"] >= self.f1_cutoff).sum())

    def summary(self) -> dict:
        joined = self.joined()
        return {
            "concepts_evaluated": int(len(self.sae)),
            "valid_proteins": self.n_valid_proteins,
            "test_proteins": self.n_test_proteins,
            "f1_cutoff": self.f1_cutoff,
            "sae_concepts_with_f1_at_cutoff": self.sae_concepts_found,
            "neuron_concepts_with_f1_at_cutoff": self.neuron_concepts_found,
            "sae_median_test_f1": float(self.sae["test_f1"].median()),
            "neuron_median_test_f1": float(self.neurons["test_f1"].median()),
            "concepts_where_sae_beats_neurons": int((joined["sae_test_f1"] > joined["neuron_test_f1"]).sum()),
            "concepts_where_neurons_beat_sae": int((joined["sae_test_f1"] < joined["neuron_test_f1"]).sum()),
            "concepts_found_by_cutoff": [
                {"f1_cutoff": c, "sae": int((self.sae["test_f1"] >= c).sum()), "neurons": int((self.neurons["test_f1"] >= c).sum())}
                for c in sorted({*REPORTED_CUTOFFS, self.f1_cutoff})
            ],
        }

    def joined(self) -> pd.DataFrame:
        """One row per concept: the SAE's and the neurons' best unit and test F1."""
        left = self.sae[["concept", "family", "level", "feature", "threshold", "test_f1"]].rename(
            columns={"feature": "sae_feature", "threshold": "sae_threshold", "test_f1": "sae_test_f1"}
        )
        right = self.neurons[["concept", "feature", "test_f1"]].rename(columns={"feature": "neuron", "test_f1": "neuron_test_f1"})
        joined = left.merge(right, on="concept")
        dim = self.embed_dim
        joined["neuron"] = [f"{n % dim}{'+' if n < dim else '-'}" for n in joined["neuron"]]
        return joined.sort_values("sae_test_f1", ascending=False).reset_index(drop=True)


def compare_with_neurons(
    pipeline: Pipeline, labels: ConceptLabels, thresholds: Sequence[float] = THRESHOLDS, f1_cutoff: float = F1_CUTOFF,
    toks_per_batch: int = 4096,
) -> ConceptComparison:
    """Score SAE features and signed neurons on all of ``labels``' proteins, halved by :func:`concept_split` (see module docstring)."""
    records = [ProteinRecord(pid, seq) for pid, seq in labels.sequences.items()]
    if not records:
        raise InterPLMError("no annotated proteins to compare on")
    layer = pipeline.layer

    def embeddings():
        for pid, reps in embed_sequences(pipeline.plm, records, [layer], toks_per_batch=toks_per_batch):
            yield pid, reps[layer]

    # Pass 1: each signed neuron's maximum (the model is small next to the metric work; two passes
    # avoid holding every embedding in memory).
    maxima = np.zeros(2 * pipeline.plm.embed_dim, dtype=np.float32)
    for _, emb in embeddings():
        maxima = np.maximum(maxima, signed_neurons(emb).max(axis=0))
    counters = {
        (unit, split): ConceptMatchCounter(labels, width, thresholds)
        for unit, width in (("sae", pipeline.num_features), ("neurons", maxima.size))
        for split in CONCEPT_SPLITS
    }
    for pid, emb in embeddings():
        split = concept_split(pid)
        counters[("sae", split)].add(pid, encode_features(pipeline.sae, emb))
        counters[("neurons", split)].add(pid, signed_neurons(emb, maxima))
    counts = {key: counter.result() for key, counter in counters.items()}
    tables = {unit: best_feature_per_concept(counts[(unit, "valid")], counts[(unit, "test")]) for unit in ("sae", "neurons")}
    n_valid, n_test = counts[("sae", "valid")].n_proteins, counts[("sae", "test")].n_proteins
    return ConceptComparison(tables["sae"], tables["neurons"], f1_cutoff, n_valid, n_test, pipeline.plm.embed_dim)


def plot_f1_distribution(comparison: ConceptComparison, out_png: str | os.PathLike, title: str = "") -> Path:
    """Histogram of per-concept test F1, SAE features against neurons, with the cutoff marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=120)
    bins = np.linspace(0, 1, 21)
    ax.hist(comparison.neurons["test_f1"], bins=bins, alpha=0.6, label=f"best neuron ({comparison.neuron_concepts_found} ≥ {comparison.f1_cutoff})", color="#999999")
    ax.hist(comparison.sae["test_f1"], bins=bins, alpha=0.6, label=f"best SAE feature ({comparison.sae_concepts_found} ≥ {comparison.f1_cutoff})", color="#0072B2")
    ax.axvline(comparison.f1_cutoff, color="k", linestyle="--", linewidth=1)
    ax.set_xlabel("test F1 of the concept's best unit (chosen on validation)")
    ax.set_ylabel("Swiss-Prot concepts")
    ax.set_title(title or "Concept detection: SAE features vs neurons")
    ax.legend(frameon=False)
    fig.tight_layout()
    return save_figure_png(fig, out_png)


def write_report(comparison: ConceptComparison, out_dir: str | os.PathLike, provenance: dict | None = None) -> dict[str, Path]:
    """Write ``report.json`` (summary + per-concept rows), ``concepts.tsv`` and ``f1_distribution.png``."""
    out_dir = Path(out_dir)
    joined = comparison.joined()
    payload = {"summary": comparison.summary(), "provenance": provenance or {}, "concepts": json.loads(joined.to_json(orient="records"))}
    files = {"json": out_dir / "report.json", "tsv": out_dir / "concepts.tsv", "png": out_dir / "f1_distribution.png"}
    write_text_atomic(files["json"], json.dumps(payload, indent=1))
    write_text_atomic(files["tsv"], joined.to_csv(sep="\t", index=False, float_format="%.4f"))
    plot_f1_distribution(comparison, files["png"])
    return files
