"""Swiss-Prot concepts and how well SAE features match them (InterPLM's method), in four steps and a report.

- :mod:`~.labels`: UniProt entries -> per-residue concept labels (:class:`ConceptLabels`),
  and the validation/test halves they are evaluated on (:class:`ConceptHalves`);
- :mod:`~.counts`: the counting kernel :func:`count_matches` and the streaming counters
  (:class:`ConceptMatchCounter`, :class:`HalvesCounter`);
- :mod:`~.metrics`: precision, recall, F1 per residue and per domain from the counts;
- :mod:`~.selection`: each concept's feature and threshold chosen on validation and scored
  on test, for the eligible concepts (:class:`Eligibility`); the table the feature database stores;
- :mod:`~.report`: SAE features against single neurons on the same concepts (``interplm report``).

This package gathers the public names of the four steps, so ``from interplm_plugins.core.concepts
import ...`` keeps working.
"""

from interplm_plugins.core.concepts.counts import THRESHOLDS, ConceptCounts, ConceptMatchCounter, HalvesCounter, count_matches
from interplm_plugins.core.concepts.labels import (
    DEFAULT_MIN_INSTANCES,
    DEFAULT_MIN_PROTEINS,
    FAMILIES,
    HALVES,
    Concept,
    ConceptHalves,
    ConceptLabels,
    FamilySpec,
    build_concept_labels,
    concept_kind,
    label_totals,
    read_halves,
    split_into_halves,
)
from interplm_plugins.core.concepts.metrics import concept_metrics
from interplm_plugins.core.concepts.selection import (
    Eligibility,
    best_feature_per_concept,
    choose_on_validation,
    feature_concept_table,
    rank_features_on_validation,
)

__all__ = [
    "THRESHOLDS", "ConceptCounts", "ConceptMatchCounter", "HalvesCounter", "count_matches",
    "DEFAULT_MIN_INSTANCES", "DEFAULT_MIN_PROTEINS", "FAMILIES", "HALVES", "Concept", "ConceptHalves", "ConceptLabels",
    "FamilySpec", "build_concept_labels", "concept_kind", "label_totals", "read_halves", "split_into_halves",
    "concept_metrics", "Eligibility", "best_feature_per_concept", "choose_on_validation", "feature_concept_table",
    "rank_features_on_validation",
]  # fmt: skip
