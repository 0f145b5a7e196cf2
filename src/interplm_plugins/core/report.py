"""SAE features against single neurons: InterPLM's headline comparison, on held-out Swiss-Prot proteins.

For each Swiss-Prot concept, the best SAE feature and the best neuron of the same layer are chosen
on validation proteins (feature/neuron and threshold with the highest selection F1) and scored on
test proteins; the report counts concepts whose test F1 reaches ``f1_cutoff`` (0.5 in InterPLM).

Neurons are put on the SAE's footing as InterPLM does for its baseline: each embedding dimension
``d`` gives two candidates, ``max(x_d, 0)`` and ``max(-x_d, 0)`` (a neuron can signal by going
negative), each divided by its maximum over the scanned proteins, so both lie in [0, 1] and the
same thresholds (0, 0.15, 0.5, 0.6, 0.8) apply.

Counts of a few hundred test proteins are noisy, and a comparison that hinges on one concept near
the cutoff says little, so the summary also gives a bootstrap over test proteins: the chosen unit
and threshold of each concept stay fixed (they were chosen on validation), the test proteins are
resampled with replacement, and each resample's counts give the difference SAE - neurons, whose
95% interval and the share of resamples in which the SAE is ahead are reported.
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
from interplm_plugins.core.concepts import (
    THRESHOLDS,
    ConceptLabels,
    ConceptMatchCounter,
    best_feature_per_concept,
    choose_on_validation,
    concept_metrics,
    count_matches,
    label_totals,
)
from interplm_plugins.core.embed import embed_sequences
from interplm_plugins.core.sequences import CONCEPT_SPLITS, ProteinRecord, concept_split
from interplm_plugins.errors import InterPLMError

F1_CUTOFF = 0.5
#: Further cutoffs the summary counts at, so a comparison that hinges on one concept near 0.5 shows it.
REPORTED_CUTOFFS: tuple[float, ...] = (0.3, 0.4, 0.5, 0.6)
BOOTSTRAP_RESAMPLES = 1000


def signed_neurons(embeddings: np.ndarray, maxima: np.ndarray | None = None) -> np.ndarray:
    """``[L, 2D]``: positive parts then negative parts of each neuron, divided by ``maxima`` (if given)."""
    both = np.concatenate([np.maximum(embeddings, 0), np.maximum(-embeddings, 0)], axis=1).astype(np.float32)
    if maxima is not None:
        both /= np.where(maxima > 0, maxima, 1.0)[None, :]
    return both


@dataclass
class ChosenUnitCounts:
    """For each test protein (rows) and concept (columns), the counts of the unit chosen for that concept.

    Summed over rows they are the test counts behind the report's test F1; resampling rows is the bootstrap.
    """

    tp: np.ndarray
    fp: np.ndarray
    tp_per_domain: np.ndarray
    n_positive: np.ndarray
    n_instances: np.ndarray
    residue_level: np.ndarray  # [C]

    def selection_f1(self, weights: np.ndarray | None = None) -> np.ndarray:
        """``[B, C]`` test F1 of each concept's unit, proteins weighted by ``weights [B, P]`` (default: each once)."""
        if weights is None:
            weights = np.ones((1, self.tp.shape[0]))
        summed = [(weights @ x).T[:, :, None] for x in (self.tp, self.fp, self.tp_per_domain, self.n_positive, self.n_instances)]
        return concept_metrics(*summed, self.residue_level)["selection_f1"][:, :, 0].T


def _chosen_unit_counts(activations, labels, units: np.ndarray, threshold_index: np.ndarray, thresholds: Sequence[float]) -> list[np.ndarray]:
    """One protein's tp, fp, tp_per_domain, n_positive, n_instances ``[C]`` for each concept's ``units[c]`` at its threshold."""
    # count_matches over just the chosen columns, then each concept's own (unit, threshold) entry:
    # the same counting as the full table, so summed over proteins these are the report's test counts.
    tp, fp, tpd = count_matches(activations[:, units], labels, thresholds)
    concept = np.arange(units.size)
    return [tp[concept, concept, threshold_index], fp[concept, concept, threshold_index], tpd[concept, concept, threshold_index], *label_totals(labels)]


def bootstrap_comparison(
    sae: ChosenUnitCounts, neurons: ChosenUnitCounts, cutoffs: Sequence[float], resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0
) -> dict:
    """Resample test proteins: per cutoff, the 95% interval of (SAE - neuron) concepts found and the share with the SAE ahead."""
    n_proteins = sae.tp.shape[0]
    weights = np.random.default_rng(seed).multinomial(n_proteins, np.full(n_proteins, 1.0 / n_proteins), size=resamples).astype(np.float64)
    f1_sae, f1_neurons = sae.selection_f1(weights), neurons.selection_f1(weights)

    def spread(diff: np.ndarray) -> dict:
        low, high = np.percentile(diff, [2.5, 97.5])
        return {"ci95": [float(low), float(high)], "share_sae_ahead": float((diff > 0).mean()), "share_tied": float((diff == 0).mean())}

    wins = (f1_sae > f1_neurons).sum(axis=1) - (f1_sae < f1_neurons).sum(axis=1)
    return {
        "resamples": resamples,
        "seed": seed,
        "sae_minus_neurons_concepts_found": [
            {"f1_cutoff": c, **spread((f1_sae >= c).sum(axis=1) - (f1_neurons >= c).sum(axis=1))} for c in cutoffs
        ],
        "sae_wins_minus_neuron_wins": spread(wins),
    }


@dataclass
class ConceptComparison:
    """Per-concept best SAE feature and best neuron, and how many concepts each finds at F1 >= cutoff."""

    sae: pd.DataFrame
    neurons: pd.DataFrame
    f1_cutoff: float
    n_valid_proteins: int
    n_test_proteins: int
    embed_dim: int  # neuron index n is dimension n % embed_dim, positive part first
    #: Per test protein, each concept's chosen SAE feature / neuron counted at its chosen threshold.
    sae_test_counts: ChosenUnitCounts | None = None
    neuron_test_counts: ChosenUnitCounts | None = None

    @property
    def sae_concepts_found(self) -> int:
        return int((self.sae["test_f1"] >= self.f1_cutoff).sum())

    @property
    def neuron_concepts_found(self) -> int:
        return int((self.neurons["test_f1"] >= self.f1_cutoff).sum())

    def summary(self) -> dict:
        joined = self.joined()
        cutoffs = sorted({*REPORTED_CUTOFFS, self.f1_cutoff})
        bootstrap = {}
        if self.sae_test_counts is not None and self.neuron_test_counts is not None:
            bootstrap = {"bootstrap_over_test_proteins": bootstrap_comparison(self.sae_test_counts, self.neuron_test_counts, cutoffs)}
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
                for c in cutoffs
            ],
            **bootstrap,
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

    def embeddings(subset: list[ProteinRecord]):
        for pid, reps in embed_sequences(pipeline.plm, subset, [layer], toks_per_batch=toks_per_batch):
            yield pid, reps[layer]

    def units(emb: np.ndarray):
        return (("sae", encode_features(pipeline.sae, emb)), ("neurons", signed_neurons(emb, maxima)))

    # Pass 1: each signed neuron's maximum (the model is small next to the metric work; passes
    # avoid holding every embedding in memory).
    maxima = np.zeros(2 * pipeline.plm.embed_dim, dtype=np.float32)
    for _, emb in embeddings(records):
        maxima = np.maximum(maxima, signed_neurons(emb).max(axis=0))
    widths = {"sae": pipeline.num_features, "neurons": maxima.size}
    counters = {(unit, split): ConceptMatchCounter(labels, width, thresholds) for unit, width in widths.items() for split in CONCEPT_SPLITS}
    by_split = {split: [r for r in records if concept_split(r.id) == split] for split in CONCEPT_SPLITS}

    # Pass 2, validation proteins: choose each concept's feature / neuron and threshold.
    for pid, emb in embeddings(by_split["valid"]):
        for unit, activations in units(emb):
            counters[(unit, "valid")].add(pid, activations)
    valid_counts = {unit: counters[(unit, "valid")].result() for unit in widths}
    chosen = {unit: choose_on_validation(valid_counts[unit]) for unit in widths}

    # Pass 3, test proteins: the full test counts, and per protein the counts of each concept's
    # chosen unit (they sum to the test counts at the chosen entries), for the bootstrap.
    rows: dict[str, list[list[np.ndarray]]] = {unit: [] for unit in widths}
    for pid, emb in embeddings(by_split["test"]):
        concept_labels = labels.matrix(pid)
        for unit, activations in units(emb):
            counters[(unit, "test")].add(pid, activations)
            rows[unit].append(_chosen_unit_counts(activations, concept_labels, *chosen[unit], thresholds))
    test_counts = {unit: counters[(unit, "test")].result() for unit in widths}
    tables = {unit: best_feature_per_concept(valid_counts[unit], test_counts[unit]) for unit in widths}

    # The tables keep the concepts with labelled residues in both halves; so do the per-protein counts.
    concept_names = [c.name for c in labels.concepts]
    columns = [concept_names.index(name) for name in tables["sae"]["concept"]]
    chosen_counts = {
        unit: ChosenUnitCounts(*(np.array([r[i] for r in rows[unit]], dtype=np.float64)[:, columns] for i in range(5)), residue_level=labels.residue_level[columns])
        for unit in widths
    }
    return ConceptComparison(
        tables["sae"], tables["neurons"], f1_cutoff, valid_counts["sae"].n_proteins, test_counts["sae"].n_proteins, pipeline.plm.embed_dim,
        chosen_counts["sae"], chosen_counts["neurons"],
    )  # fmt: skip


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
