"""SAE features against single neurons: InterPLM's headline comparison, on held-out Swiss-Prot proteins.

For each eligible Swiss-Prot concept, the best SAE feature and the best neuron of the same layer
are chosen on the validation half (unit and threshold with the highest selection F1) and scored on
the test half; the report counts concepts whose test F1 is above ``f1_cutoff`` (``F1 > 0.5``, as
InterPLM counts). The halves are those of ``interplm concepts`` (whole sequence clusters) or, with
``--test-concepts``, all of one annotated set against all of another
(:class:`~.labels.ConceptHalves`).

The neuron baseline. InterPLM's baseline (its ``IdentityDict``) scores each embedding dimension's
raw value. This report extends it: each dimension ``d`` gives two candidates, ``max(x_d, 0)`` and
``max(-x_d, 0)``, because a neuron can signal a concept by going negative. SAE features and
signed neurons are put on one footing by scaling both on the same sample, the validation half
(each unit divided by its maximum there, so both lie in [0, 1] where they were chosen and the
thresholds 0, 0.15, 0.5, 0.6, 0.8 mean the same for both); nothing is scaled on the test half.
(The feature database keeps the SAE's own normalisation, over its training residues, so its test
F1 of a concept can differ slightly from this report's.)

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
from typing import Callable, Iterator, Sequence

import numpy as np
import pandas as pd

from interplm_plugins.core.atomic import save_figure_png, write_text_atomic
from interplm_plugins.core.concepts.counts import THRESHOLDS, HalvesCounter, count_matches
from interplm_plugins.core.concepts.labels import ConceptHalves, label_totals
from interplm_plugins.core.concepts.metrics import concept_metrics
from interplm_plugins.core.concepts.selection import Eligibility, best_feature_per_concept, choose_on_validation
from interplm_plugins.core.inputs.sequences import ProteinRecord
from interplm_plugins.core.plm.embed import embed_sequences
from interplm_plugins.core.sae.encode import encode_features
from interplm_plugins.errors import InterPLMError

F1_CUTOFF = 0.5
#: Further cutoffs the summary counts at, so a comparison that hinges on one concept near 0.5 shows it.
REPORTED_CUTOFFS: tuple[float, ...] = (0.3, 0.4, 0.5, 0.6)
BOOTSTRAP_RESAMPLES = 1000


def signed_neurons(embeddings: np.ndarray) -> np.ndarray:
    """``[L, 2D]``: positive parts then negative parts of each neuron (InterPLM's raw neurons, split by sign)."""
    return np.concatenate([np.maximum(embeddings, 0), np.maximum(-embeddings, 0)], axis=1).astype(np.float32)


def scaled(units: np.ndarray, maxima: np.ndarray) -> np.ndarray:
    """``units [L, U]`` divided by per-unit ``maxima`` (units never active there stay as they are: 0)."""
    return units / np.where(maxima > 0, maxima, 1.0).astype(np.float32)[None, :]


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
    """Resample test proteins: per cutoff, the 95% interval of (SAE - neuron) concepts with F1 > cutoff and the share with the SAE ahead."""
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
            {"f1_cutoff": c, **spread((f1_sae > c).sum(axis=1) - (f1_neurons > c).sum(axis=1))} for c in cutoffs
        ],
        "sae_wins_minus_neuron_wins": spread(wins),
    }


@dataclass
class ConceptComparison:
    """Per-concept best SAE feature and best neuron, and how many concepts each finds at F1 > cutoff."""

    sae: pd.DataFrame
    neurons: pd.DataFrame
    f1_cutoff: float
    n_valid_proteins: int
    n_test_proteins: int
    embed_dim: int  # neuron index n is dimension n % embed_dim, positive part first
    #: Per test protein, each concept's chosen SAE feature / neuron counted at its chosen threshold.
    sae_test_counts: ChosenUnitCounts | None = None
    neuron_test_counts: ChosenUnitCounts | None = None
    halves: str = ""
    eligibility: str = ""
    concepts_in_vocabulary: int = 0
    #: Each unit's maximum over the validation half, by which it was divided: ``{"sae": [F], "neurons": [2D]}``.
    scales: dict[str, np.ndarray] | None = None

    @property
    def sae_concepts_found(self) -> int:
        return int((self.sae["test_f1"] > self.f1_cutoff).sum())

    @property
    def neuron_concepts_found(self) -> int:
        return int((self.neurons["test_f1"] > self.f1_cutoff).sum())

    def summary(self) -> dict:
        joined = self.joined()
        cutoffs = sorted({*REPORTED_CUTOFFS, self.f1_cutoff})
        bootstrap = {}
        if self.sae_test_counts is not None and self.neuron_test_counts is not None:
            bootstrap = {"bootstrap_over_test_proteins": bootstrap_comparison(self.sae_test_counts, self.neuron_test_counts, cutoffs)}
        return {
            "halves": self.halves,
            "eligibility": self.eligibility,
            "concepts_in_vocabulary": self.concepts_in_vocabulary,
            "concepts_evaluated": int(len(self.sae)),
            "valid_proteins": self.n_valid_proteins,
            "test_proteins": self.n_test_proteins,
            "f1_cutoff": self.f1_cutoff,
            "sae_concepts_above_cutoff": self.sae_concepts_found,
            "neuron_concepts_above_cutoff": self.neuron_concepts_found,
            "sae_median_test_f1": float(self.sae["test_f1"].median()),
            "neuron_median_test_f1": float(self.neurons["test_f1"].median()),
            "concepts_where_sae_beats_neurons": int((joined["sae_test_f1"] > joined["neuron_test_f1"]).sum()),
            "concepts_where_neurons_beat_sae": int((joined["sae_test_f1"] < joined["neuron_test_f1"]).sum()),
            "concepts_found_by_cutoff": [
                {"f1_cutoff": c, "sae": int((self.sae["test_f1"] > c).sum()), "neurons": int((self.neurons["test_f1"] > c).sum())}
                for c in cutoffs
            ],
            **bootstrap,
        }

    def joined(self) -> pd.DataFrame:
        """One row per concept: the SAE's and the neurons' best unit, with validation and test F1 and the halves' sizes."""
        left = self.sae[["concept", "family", "level", "feature", "threshold", "valid_f1", "test_f1", "valid_proteins", "test_proteins"]].rename(
            columns={"feature": "sae_feature", "threshold": "sae_threshold", "valid_f1": "sae_valid_f1", "test_f1": "sae_test_f1"}
        )
        right = self.neurons[["concept", "feature", "valid_f1", "test_f1"]].rename(
            columns={"feature": "neuron", "valid_f1": "neuron_valid_f1", "test_f1": "neuron_test_f1"}
        )
        joined = left.merge(right, on="concept")
        dim = self.embed_dim
        joined["neuron"] = [f"{n % dim}{'+' if n < dim else '-'}" for n in joined["neuron"]]
        return joined.sort_values("sae_test_f1", ascending=False).reset_index(drop=True)


EmbeddingSource = Callable[[Sequence[ProteinRecord]], Iterator[tuple[str, np.ndarray]]]


def compare_units(
    halves: ConceptHalves,
    embeddings: EmbeddingSource,
    encode_sae: Callable[[np.ndarray], np.ndarray],
    num_features: int,
    embed_dim: int,
    eligibility: Eligibility | None = None,
    thresholds: Sequence[float] = THRESHOLDS,
    f1_cutoff: float = F1_CUTOFF,
) -> ConceptComparison:
    """SAE features (``encode_sae`` of embeddings) against signed neurons on ``halves`` (see the module docstring).

    ``embeddings(records)`` yields ``(protein id, [L, embed_dim] embeddings)`` of the layer the SAE reads.
    """
    eligibility = eligibility or Eligibility()
    records = {half: [ProteinRecord(p, s) for p, s in halves.labels(half).sequences.items()] for half in ("valid", "test")}
    if not records["valid"] or not records["test"]:
        raise InterPLMError("no annotated proteins to compare on in one of the halves")

    def raw_units(emb: np.ndarray) -> dict[str, np.ndarray]:
        return {"sae": encode_sae(emb), "neurons": signed_neurons(emb)}

    # Pass 1, validation proteins: each unit's maximum there, the one scale of both unit types.
    maxima = {"sae": np.zeros(num_features, dtype=np.float32), "neurons": np.zeros(2 * embed_dim, dtype=np.float32)}
    for _, emb in embeddings(records["valid"]):
        for unit, values in raw_units(emb).items():
            maxima[unit] = np.maximum(maxima[unit], values.max(axis=0, initial=0.0))

    def units(emb: np.ndarray) -> dict[str, np.ndarray]:
        return {unit: scaled(values, maxima[unit]) for unit, values in raw_units(emb).items()}

    counters = {unit: HalvesCounter(halves, scale.size, thresholds) for unit, scale in maxima.items()}
    # Pass 2, validation proteins: choose each concept's feature / neuron and threshold.
    for pid, emb in embeddings(records["valid"]):
        for unit, activations in units(emb).items():
            counters[unit].add(pid, activations)
    valid_counts = {unit: counter.result("valid") for unit, counter in counters.items()}
    chosen = {unit: choose_on_validation(counts) for unit, counts in valid_counts.items()}

    # Pass 3, test proteins: the full test counts, and per protein the counts of each concept's
    # chosen unit (they sum to the test counts at the chosen entries), for the bootstrap.
    rows: dict[str, list[list[np.ndarray]]] = {unit: [] for unit in counters}
    for pid, emb in embeddings(records["test"]):
        concept_labels = halves.test.matrix(pid)
        for unit, activations in units(emb).items():
            counters[unit].add(pid, activations)
            rows[unit].append(_chosen_unit_counts(activations, concept_labels, *chosen[unit], thresholds))
    test_counts = {unit: counter.result("test") for unit, counter in counters.items()}
    tables = {unit: best_feature_per_concept(valid_counts[unit], test_counts[unit], eligibility) for unit in counters}

    # The tables keep the eligible concepts; so do the per-protein counts.
    evaluated = np.flatnonzero(eligibility.mask(valid_counts["sae"], test_counts["sae"]))
    residue_level = halves.valid.residue_level[evaluated]
    chosen_counts = {
        unit: ChosenUnitCounts(*(np.array([r[i] for r in rows[unit]], dtype=np.float64)[:, evaluated] for i in range(5)), residue_level=residue_level)
        for unit in counters
    }
    return ConceptComparison(
        tables["sae"], tables["neurons"], f1_cutoff, valid_counts["sae"].n_proteins, test_counts["sae"].n_proteins, embed_dim,
        chosen_counts["sae"], chosen_counts["neurons"], halves.how, eligibility.describe(), len(halves.concepts), maxima,
    )  # fmt: skip


def compare_with_neurons(
    pipeline, halves: ConceptHalves, eligibility: Eligibility | None = None, thresholds: Sequence[float] = THRESHOLDS,
    f1_cutoff: float = F1_CUTOFF, toks_per_batch: int = 4096,
) -> ConceptComparison:
    """:func:`compare_units` with ``pipeline``'s PLM layer and SAE (``pipeline``: a
    :class:`~interplm_plugins.core.interpret.pipeline.Pipeline`, read for its parts; the concept
    stage does not import the interpretation stage that defines it)."""
    layer = pipeline.layer

    def embeddings(subset: Sequence[ProteinRecord]) -> Iterator[tuple[str, np.ndarray]]:
        for pid, reps in embed_sequences(pipeline.plm, list(subset), [layer], toks_per_batch=toks_per_batch, precision=pipeline.precision):
            yield pid, reps[layer]

    return compare_units(
        halves, embeddings, lambda emb: encode_features(pipeline.sae, emb), pipeline.num_features, pipeline.plm.embed_dim,
        eligibility, thresholds, f1_cutoff,
    )  # fmt: skip


def plot_f1_distribution(comparison: ConceptComparison, out_png: str | os.PathLike, title: str = "") -> Path:
    """Histogram of per-concept test F1, SAE features against neurons, with the cutoff marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=120)
    bins = np.linspace(0, 1, 21)
    ax.hist(comparison.neurons["test_f1"], bins=bins, alpha=0.6, label=f"best neuron ({comparison.neuron_concepts_found} > {comparison.f1_cutoff})", color="#999999")
    ax.hist(comparison.sae["test_f1"], bins=bins, alpha=0.6, label=f"best SAE feature ({comparison.sae_concepts_found} > {comparison.f1_cutoff})", color="#0072B2")
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
