"""Choosing each concept's feature on the validation half and scoring it on the test half.

The one selection rule (:func:`rank_features_on_validation`): per concept and feature, the
threshold with the best validation selection F1 (ties: higher plain F1, then the lower
threshold); features ranked by that F1 (ties: higher plain F1, then the lower index). The
concept's chosen unit (:func:`choose_on_validation`) is rank 0; the feature database stores the
first ranks of every concept. Test counts are only ever read at the validation's choice.

A concept is evaluated only with enough examples in each half (:class:`Eligibility`, InterPLM
likewise evaluates a concept only where its split has enough examples): a concept with one or two
test proteins gives an F1 that says more about those proteins than about the feature.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from interplm_plugins.core.concepts.counts import ConceptCounts
from interplm_plugins.core.concepts.labels import ConceptHalves
from interplm_plugins.errors import InterPLMError

DEFAULT_MIN_PROTEINS_PER_HALF = 3
DEFAULT_MIN_INSTANCES_PER_HALF = 3


@dataclass(frozen=True)
class Eligibility:
    """Which concepts are evaluated: at least ``min_proteins`` proteins and ``min_instances``
    instances (domains, sites, bonds) in each half."""

    min_proteins: int = DEFAULT_MIN_PROTEINS_PER_HALF
    min_instances: int = DEFAULT_MIN_INSTANCES_PER_HALF

    def __post_init__(self) -> None:
        if self.min_proteins < 1 or self.min_instances < 1:
            raise InterPLMError(f"eligibility needs at least 1 protein and 1 instance per half, got {self}")

    def admits(self, valid_proteins, valid_instances, test_proteins, test_instances) -> np.ndarray:
        """``[C]`` True where a concept has enough proteins and instances in both halves (arrays ``[C]`` each)."""
        return (
            (np.asarray(valid_proteins) >= self.min_proteins) & (np.asarray(valid_instances) >= self.min_instances)
            & (np.asarray(test_proteins) >= self.min_proteins) & (np.asarray(test_instances) >= self.min_instances)
        )  # fmt: skip

    def mask(self, valid: ConceptCounts, test: ConceptCounts) -> np.ndarray:
        """:meth:`admits` of the counts of the two halves."""
        if valid.n_proteins_with is None or test.n_proteins_with is None:
            raise InterPLMError("concept counts lack per-concept protein counts (count with ConceptMatchCounter)")
        return self.admits(valid.n_proteins_with, valid.n_instances, test.n_proteins_with, test.n_instances)

    def describe(self) -> str:
        return f">= {self.min_proteins} proteins and >= {self.min_instances} instances in each half"

    def to_dict(self) -> dict[str, int]:
        return asdict(self)

    @classmethod
    def from_settings(cls, settings: dict) -> "Eligibility":
        """The rule recorded by ``interplm concepts`` (defaults where none is)."""
        return cls(**settings.get("eligibility", {}))


def _check_same_design(valid: ConceptCounts, test: ConceptCounts) -> None:
    if [c.name for c in valid.concepts] != [c.name for c in test.concepts] or valid.thresholds != test.thresholds:
        raise InterPLMError("validation and test counts are over different concepts or thresholds")


def _best_threshold(metrics: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per (concept, feature): the best threshold index and the selection F1 and plain F1 there, each ``[C, F]``."""
    sel, f1 = metrics["selection_f1"], metrics["f1"]
    top = sel == sel.max(axis=2, keepdims=True)
    t_index = np.argmax(np.where(top, f1, -1.0), axis=2)  # argmax: the lowest threshold among equals
    c_idx, f_idx = np.indices(t_index.shape)
    return t_index, sel[c_idx, f_idx, t_index], f1[c_idx, f_idx, t_index]


def rank_features_on_validation(valid: ConceptCounts, k: int, metrics: dict[str, np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per concept, the ``k`` best features on validation and each one's threshold index, each ``[C, k]``."""
    metrics = valid.metrics() if metrics is None else metrics
    t_index, sel, f1 = _best_threshold(metrics)
    k = min(int(k), sel.shape[1])
    features = np.empty((sel.shape[0], k), dtype=np.int64)
    for c in range(sel.shape[0]):  # lexsort: last key first; index ascending breaks the remaining ties
        features[c] = np.lexsort((np.arange(sel.shape[1]), -f1[c], -sel[c]))[:k]
    return features, np.take_along_axis(t_index, features, axis=1)


def choose_on_validation(valid: ConceptCounts, metrics: dict[str, np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per concept, the chosen feature and threshold index ``([C], [C])``: rank 0 of :func:`rank_features_on_validation`."""
    features, t_index = rank_features_on_validation(valid, 1, metrics)
    return features[:, 0], t_index[:, 0]


def _scored_rows(
    valid: ConceptCounts, vm: dict[str, np.ndarray], tm: dict[str, np.ndarray], concept: np.ndarray, feature: np.ndarray, t_index: np.ndarray
) -> pd.DataFrame:
    """One row per chosen (concept, feature, threshold): validation metrics ``vm`` and test metrics ``tm`` at that choice."""
    columns = {
        "concept": [valid.concepts[c].name for c in concept],
        "family": [valid.concepts[c].family for c in concept],
        "level": ["residue" if valid.concepts[c].residue_level else "domain" for c in concept],
        "feature": feature.astype(np.int64),
        "threshold": np.asarray(valid.thresholds)[t_index],
    }
    for prefix, metrics in (("valid", vm), ("test", tm)):
        at = (concept, feature, t_index)
        columns[f"{prefix}_f1"] = metrics["selection_f1"][at]
        columns[f"{prefix}_precision"] = metrics["precision"][at]
        columns[f"{prefix}_recall"] = metrics["selection_recall"][at]
    columns["test_f1_residue"] = tm["f1"][concept, feature, t_index]
    columns["test_recall_residue"] = tm["recall"][concept, feature, t_index]
    columns["test_f1_per_domain"] = tm["f1_per_domain"][concept, feature, t_index]
    columns["test_recall_per_domain"] = tm["recall_per_domain"][concept, feature, t_index]
    return pd.DataFrame(columns)


def best_feature_per_concept(valid: ConceptCounts, test: ConceptCounts, eligibility: Eligibility | None = None) -> pd.DataFrame:
    """For each eligible concept, the feature and threshold chosen on validation, scored on test.

    Columns: concept, family, level, feature, threshold; valid_f1, valid_precision, valid_recall
    and test_f1, test_precision, test_recall (F1 and recall at the concept's level: per residue
    for residue-level concepts, per domain otherwise); test_f1_residue, test_recall_residue,
    test_f1_per_domain, test_recall_per_domain; valid/test proteins and instances.
    """
    _check_same_design(valid, test)
    eligibility = eligibility or Eligibility()
    vm, tm = valid.metrics(), test.metrics()
    feature, t_index = choose_on_validation(valid, vm)
    concept = np.arange(len(valid.concepts))
    table = _scored_rows(valid, vm, tm, concept, feature, t_index)
    table["valid_proteins"], table["test_proteins"] = valid.n_proteins_with, test.n_proteins_with
    table["valid_instances"], table["test_instances"] = valid.n_instances, test.n_instances
    return table[eligibility.mask(valid, test)].reset_index(drop=True)


def feature_concept_table(
    valid: ConceptCounts, test: ConceptCounts, per_concept: int = 20, eligibility: Eligibility | None = None, min_valid_f1: float = 0.0
) -> pd.DataFrame:
    """Every eligible concept's ``per_concept`` best features on validation, each at its validation threshold, scored on test.

    What the feature database stores (its queries rank by ``valid_f1`` and report ``test_f1``).
    Columns as :func:`best_feature_per_concept`'s first eleven; rows with validation F1 <=
    ``min_valid_f1`` are dropped. Row order: concept, then validation rank.
    """
    _check_same_design(valid, test)
    eligibility = eligibility or Eligibility()
    vm, tm = valid.metrics(), test.metrics()
    features, t_index = rank_features_on_validation(valid, per_concept, vm)
    concept = np.repeat(np.arange(len(valid.concepts)), features.shape[1])
    table = _scored_rows(valid, vm, tm, concept, features.ravel(), t_index.ravel())
    keep = eligibility.mask(valid, test)[concept] & (table["valid_f1"].to_numpy() > min_valid_f1)
    return table[keep].reset_index(drop=True)


def concept_vocabulary(halves: ConceptHalves, eligibility: Eligibility) -> pd.DataFrame:
    """One row per concept: family, level, instances, residues and proteins overall and per half, and whether it is evaluated."""
    valid, test = halves.valid.summary(), halves.test.summary()
    return pd.DataFrame(
        {
            "concept": valid["concept"],
            "family": valid["family"],
            "level": valid["level"],
            "n_instances": valid["instances"] + test["instances"],
            "n_residues": valid["residues"] + test["residues"],
            "n_proteins": valid["proteins"] + test["proteins"],
            "valid_proteins": valid["proteins"],
            "test_proteins": test["proteins"],
            "evaluated": eligibility.admits(valid["proteins"], valid["instances"], test["proteins"], test["instances"]).astype(int),
        }
    )
