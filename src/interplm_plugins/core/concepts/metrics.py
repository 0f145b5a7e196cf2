"""InterPLM's concept metrics, computed from match counts (:mod:`~.counts`).

For a feature ``f`` at threshold ``t`` and a concept ``c``: a residue is *active* when its
normalised activation is strictly greater than ``t`` (``>``, as InterPLM, so ``t = 0`` means "fires
at all"); ``tp`` = active residues labelled ``c``, ``fp`` = active residues not labelled ``c``,
``tp_per_domain`` = instances of ``c`` with at least one active residue; precision = tp / (tp +
fp), recall = tp / labelled residues, recall_per_domain = tp_per_domain / instances, f1 and
f1_per_domain the harmonic means of precision with each recall. The F1 that selects a feature for
a concept (``selection_f1``) is f1 for residue-level concepts and f1_per_domain for domain-level
ones (InterPLM's choice); ``selection_recall`` is the recall at that same level, so the three
numbers a user reads (F1, precision, recall) are always of one kind.
"""

from __future__ import annotations

import numpy as np


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    num, den = np.broadcast_arrays(np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64))
    out = np.zeros(num.shape, dtype=np.float64)
    np.divide(num, den, out=out, where=den > 0)
    return out


def concept_metrics(
    tp: np.ndarray,
    fp: np.ndarray,
    tp_per_domain: np.ndarray,
    n_positive: np.ndarray,
    n_instances: np.ndarray,
    residue_level_mask: np.ndarray,
) -> dict[str, np.ndarray]:
    """Precision, recall, recall_per_domain, f1, f1_per_domain, selection_f1 and selection_recall, each ``[C, F, T]``.

    ``n_positive``/``n_instances`` ``[C]``: labelled residues and instances per concept (or arrays
    shaped like ``tp``, where they vary along its other axes, as in a bootstrap);
    ``residue_level_mask`` ``[C]``: True where the concept is residue-level. A ratio with a zero
    denominator is 0. ``selection_f1`` is f1 for residue-level and f1_per_domain for domain-level
    concepts (InterPLM's choice); ``selection_recall`` the recall of the same level.
    """
    tp = np.asarray(tp)

    def per_concept(totals) -> np.ndarray:  # [C] -> [C, 1, 1]; an array shaped like tp stays as it is
        totals = np.asarray(totals)
        return totals.reshape(totals.shape + (1,) * (tp.ndim - totals.ndim))

    precision = _ratio(tp, tp + fp)
    recall = _ratio(tp, per_concept(n_positive))
    recall_per_domain = _ratio(tp_per_domain, per_concept(n_instances))
    f1 = _ratio(2 * precision * recall, precision + recall)
    f1_per_domain = _ratio(2 * precision * recall_per_domain, precision + recall_per_domain)
    mask = per_concept(np.asarray(residue_level_mask, dtype=bool))
    return {
        "precision": precision,
        "recall": recall,
        "recall_per_domain": recall_per_domain,
        "f1": f1,
        "f1_per_domain": f1_per_domain,
        "selection_f1": np.where(mask, f1, f1_per_domain),
        "selection_recall": np.where(mask, recall, recall_per_domain),
    }
