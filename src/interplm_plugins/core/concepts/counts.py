"""Counting how SAE features' activity overlaps concept labels: the kernel, streaming counters, halves.

:func:`count_matches` is the one counting kernel (identical counts to InterPLM's
``calc_metrics_sparse``, ~25x faster; ``tests/test_count_matches.py`` and
``benchmarks/bench_concepts.py``). :class:`ConceptMatchCounter` accumulates it protein by protein
over one set of labels; :class:`HalvesCounter` is the one loop body that routes each annotated
protein's activations to the counter of its half (validation or test) of a
:class:`~.labels.ConceptHalves`: the database build and the report both stream through it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy import sparse

from interplm_plugins.core.concepts.labels import HALVES, Concept, ConceptHalves, ConceptLabels, as_labels_csr, concepts_present, label_totals
from interplm_plugins.core.concepts.metrics import concept_metrics
from interplm_plugins.errors import InterPLMError

#: Activation thresholds of InterPLM (activations are normalised to [0, 1]).
THRESHOLDS: tuple[float, ...] = (0.0, 0.15, 0.5, 0.6, 0.8)

def _expand_pairs(starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """``concatenate([arange(s, s + c) for s, c in zip(starts, counts)])``, vectorised."""
    total = int(counts.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    ends = np.cumsum(counts)
    offsets = np.arange(total, dtype=np.int64) - np.repeat(ends - counts, counts)
    return np.repeat(starts.astype(np.int64), counts) + offsets


def _distinct_counts(keys: np.ndarray, key_space: int) -> tuple[np.ndarray, np.ndarray]:
    """Distinct ``keys`` (sorted) and how often each occurs: a histogram when the key space is
    small next to the keys, a sort otherwise."""
    if key_space <= 4 * len(keys) + (1 << 20):
        histogram = np.bincount(keys, minlength=key_space)
        distinct = np.flatnonzero(histogram)
        return distinct, histogram[distinct]
    keys = np.sort(keys)
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]]) if len(keys) else np.zeros(0, dtype=np.int64)
    return keys[starts], np.diff(np.r_[starts, len(keys)])


def _above_levels(rows: np.ndarray, levels: np.ndarray, counts: np.ndarray, n_rows: int, n_levels: int, column_of: np.ndarray) -> np.ndarray:
    """``[n_rows, T]`` int64: for each row, the counts of levels above each threshold.

    ``rows`` (sorted), ``levels`` in 1..T and ``counts``: sparse per-(row, level) counts; output
    column ``j`` is sorted threshold ``column_of[j]``. Only the rows present are written."""
    out = np.zeros((n_rows, len(column_of)), dtype=np.int64)
    if len(rows) == 0:
        return out
    first = np.r_[True, rows[1:] != rows[:-1]]
    table = np.zeros((int(first.sum()), n_levels), dtype=np.int64)
    table[np.cumsum(first) - 1, levels] = counts
    above = np.flip(np.cumsum(np.flip(table[:, 1:], axis=1), axis=1), axis=1)  # [:, k] = count of level > k
    out[rows[first]] = above[:, column_of]
    return out


def count_matches(
    activations: np.ndarray | sparse.spmatrix,
    labels: np.ndarray | sparse.spmatrix,
    thresholds: Sequence[float] = THRESHOLDS,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Count, for every concept, feature and threshold, how feature activity overlaps concept labels.

    ``activations``: residues x features (dense array or scipy.sparse), normalised activations.
    ``labels``: residues x concepts integers (dense or sparse); nonzero values are instance ids,
    unique per concept (an instance is one domain, site or bond).
    A residue is active for a feature at threshold ``t`` when its activation is ``> t`` (strictly,
    as InterPLM); thresholds must be >= 0 so that implicit zeros of sparse input are inactive.

    Returns ``(tp, fp, tp_per_domain)``, each int64 of shape ``(concepts, features, thresholds)``:
    ``tp`` = active residues labelled with the concept, ``fp`` = active residues not labelled with
    it, ``tp_per_domain`` = distinct instances of the concept with at least one active residue.
    """
    # How: every stored activation gets a *level*, the number of thresholds below it, so one pass
    # serves all thresholds (active at threshold k  <=>  level > k). Each labelled residue is
    # joined with the activations of the same residue (label cells x ~L0 pairs, far fewer than a
    # product per threshold touches); histograms over (concept, feature, level) summed from the top
    # level down give tp; tp_per_domain takes each (instance, feature)'s highest level first.
    thresholds = [float(t) for t in thresholds]
    if not thresholds or any(not np.isfinite(t) or t < 0 for t in thresholds):
        raise InterPLMError(f"thresholds must be finite and >= 0, got {thresholds}")
    labels_csr = as_labels_csr(labels)
    if not sparse.issparse(activations):
        activations = np.asarray(activations)
    if activations.ndim != 2 or activations.shape[0] != labels_csr.shape[0]:
        raise InterPLMError(
            f"activations of shape {activations.shape} do not match labels of shape {labels_csr.shape} (residues differ)"
        )
    values = activations.data if sparse.issparse(activations) else activations
    if np.isnan(values).any():
        raise InterPLMError("activations contain NaN")
    n_residues, n_concepts = labels_csr.shape
    n_features, n_thresholds = activations.shape[1], len(thresholds)
    acts = sparse.csr_matrix(activations)
    if not acts.has_canonical_format:
        acts = acts.copy()
        acts.sum_duplicates()

    order = np.argsort(thresholds, kind="stable")
    sorted_t = np.asarray(thresholds)[order]
    n_levels = n_thresholds + 1
    level = np.searchsorted(sorted_t, acts.data, side="left").astype(np.int64)  # thresholds strictly below
    keep = level > 0  # inactive at every threshold: irrelevant
    act_rows = np.repeat(np.arange(n_residues, dtype=np.int64), np.diff(acts.indptr))[keep]
    act_features, act_levels = acts.indices[keep].astype(np.int64), level[keep]
    act_start = np.searchsorted(act_rows, np.arange(n_residues + 1, dtype=np.int64))  # CSR row pointers of the kept

    inverse = np.empty(n_thresholds, dtype=np.int64)
    inverse[order] = np.arange(n_thresholds)  # caller's threshold j is sorted threshold inverse[j]
    keys, counts = _distinct_counts(act_features * n_levels + act_levels, n_features * n_levels)
    active = _above_levels(keys // n_levels, keys % n_levels, counts, n_features, n_levels, inverse)  # [F, T]

    # Join: each label cell (residue, concept, instance id) with each kept activation of its residue.
    label_rows = np.repeat(np.arange(n_residues, dtype=np.int64), np.diff(labels_csr.indptr))
    per_cell = act_start[label_rows + 1] - act_start[label_rows]
    pair_act = _expand_pairs(act_start[label_rows], per_cell)
    pair_cell = np.repeat(np.arange(labels_csr.nnz, dtype=np.int64), per_cell)
    pair_feature, pair_level = act_features[pair_act], act_levels[pair_act]
    del pair_act, per_cell, label_rows

    cell_concept = labels_csr.indices.astype(np.int64)
    n_cf = n_concepts * n_features
    keys, counts = _distinct_counts((cell_concept[pair_cell] * n_features + pair_feature) * n_levels + pair_level, n_cf * n_levels)
    tp = _above_levels(keys // n_levels, keys % n_levels, counts, n_cf, n_levels, inverse).reshape(n_concepts, n_features, n_thresholds)

    # tp_per_domain: each (instance, feature)'s highest level counts once.
    cell_key = cell_concept * (int(labels_csr.data.max(initial=0)) + 1) + labels_csr.data
    instances, cell_instance = np.unique(cell_key, return_inverse=True)  # over label cells: cheap
    instance_concept = np.zeros(len(instances), dtype=np.int64)
    instance_concept[cell_instance] = cell_concept
    group = (cell_instance.ravel().astype(np.int64)[pair_cell] * n_features + pair_feature) * n_levels + pair_level
    del pair_cell, pair_feature, pair_level
    group.sort()
    last = np.ones(len(group), dtype=bool)
    last[:-1] = (group[1:] // n_levels) != (group[:-1] // n_levels)  # each group's highest level sorts last
    highest = group[last]
    del group, last
    instance_feature, level_of = highest // n_levels, highest % n_levels
    cf = instance_concept[instance_feature // n_features] * n_features + instance_feature % n_features
    keys, counts = _distinct_counts(cf * n_levels + level_of, n_cf * n_levels)
    tp_per_domain = _above_levels(keys // n_levels, keys % n_levels, counts, n_cf, n_levels, inverse).reshape(n_concepts, n_features, n_thresholds)
    fp = active[None, :, :] - tp
    return tp, fp, tp_per_domain


@dataclass
class ConceptCounts:
    """Counts of :func:`count_matches` summed over proteins, with the totals the metrics need."""

    concepts: list[Concept]
    thresholds: tuple[float, ...]
    tp: np.ndarray
    fp: np.ndarray
    tp_per_domain: np.ndarray
    n_positive: np.ndarray
    n_instances: np.ndarray
    n_proteins: int
    n_residues: int
    #: ``[C]`` proteins with at least one labelled residue of each concept.
    n_proteins_with: np.ndarray | None = None

    @property
    def residue_level(self) -> np.ndarray:
        return np.array([c.residue_level for c in self.concepts], dtype=bool)

    def metrics(self) -> dict[str, np.ndarray]:
        """:func:`concept_metrics` of these counts."""
        return concept_metrics(
            self.tp, self.fp, self.tp_per_domain, self.n_positive, self.n_instances, self.residue_level
        )


class ConceptMatchCounter:
    """Accumulates :func:`count_matches` protein by protein, so activations never need stacking.

    The result equals one :func:`count_matches` on the stacked proteins, because instances never
    span two proteins.
    """

    def __init__(self, concept_labels: ConceptLabels, num_features: int, thresholds: Sequence[float] = THRESHOLDS):
        self.labels = concept_labels
        self.num_features = int(num_features)
        self.thresholds = tuple(float(t) for t in thresholds)
        shape = (len(concept_labels.concepts), self.num_features, len(self.thresholds))
        self._tp, self._fp, self._tpd = (np.zeros(shape, dtype=np.int64) for _ in range(3))
        self._n_positive = np.zeros(shape[0], dtype=np.int64)
        self._n_instances = np.zeros(shape[0], dtype=np.int64)
        self._n_proteins_with = np.zeros(shape[0], dtype=np.int64)
        self._seen: set[str] = set()
        self._n_residues = 0
        # Proteins are counted in blocks: one sparse product per block instead of per protein.
        self._pending: list[tuple[np.ndarray | sparse.spmatrix, sparse.csr_matrix]] = []
        self._pending_rows = 0

    def add(self, protein_id: str, activations: np.ndarray | sparse.spmatrix) -> None:
        """Count one protein's activations ``[L, F]`` against its labels."""
        if protein_id in self._seen:
            raise InterPLMError("protein added twice to the concept counts", record=protein_id)
        labels = self.labels.matrix(protein_id)
        if activations.shape != (labels.shape[0], self.num_features):
            raise InterPLMError(
                f"activations of shape {tuple(activations.shape)} do not fit a {labels.shape[0]}-residue protein"
                f" and {self.num_features} features",
                record=protein_id,
            )
        self._pending.append((activations, labels))
        self._n_proteins_with += concepts_present(labels)
        self._pending_rows += labels.shape[0]
        self._n_residues += labels.shape[0]
        self._seen.add(protein_id)
        if self._pending_rows >= self.block_residues:
            self._flush()

    #: Residues gathered before one :func:`count_matches` call (bounds memory, amortises its set-up).
    block_residues = 20_000

    def _flush(self) -> None:
        if not self._pending:
            return
        acts = [a for a, _ in self._pending]
        if any(sparse.issparse(a) for a in acts):
            stacked = sparse.vstack([sparse.csr_matrix(a) for a in acts], format="csr")
        else:
            stacked = np.concatenate([np.asarray(a) for a in acts])
        # Instance ids are unique per concept across proteins, so stacking never merges two instances.
        labels = sparse.vstack([lab for _, lab in self._pending], format="csr", dtype=np.int32)
        tp, fp, tpd = count_matches(stacked, labels, self.thresholds)
        self._tp += tp
        self._fp += fp
        self._tpd += tpd
        n_positive, n_instances = label_totals(labels)
        self._n_positive += n_positive
        self._n_instances += n_instances
        self._pending, self._pending_rows = [], 0

    def result(self) -> ConceptCounts:
        """The counts so far (copies)."""
        self._flush()
        return ConceptCounts(
            list(self.labels.concepts),
            self.thresholds,
            self._tp.copy(),
            self._fp.copy(),
            self._tpd.copy(),
            self._n_positive.copy(),
            self._n_instances.copy(),
            len(self._seen),
            self._n_residues,
            self._n_proteins_with.copy(),
        )

class HalvesCounter:
    """Concept counts of the validation and the test half, fed protein by protein.

    ``add`` routes an annotated protein to its half's :class:`ConceptMatchCounter` and ignores the
    others, so a stream over any proteins (a database build's) can feed it.
    """

    def __init__(self, halves: ConceptHalves, num_features: int, thresholds: Sequence[float] = THRESHOLDS):
        self.halves = halves
        self.counters = {half: ConceptMatchCounter(halves.labels(half), num_features, thresholds) for half in HALVES}

    def add(self, protein_id: str, activations: np.ndarray | sparse.spmatrix) -> str | None:
        """Count ``activations [L, F]`` in the protein's half; returns the half (None: not annotated)."""
        half = self.halves.half(protein_id)
        if half is not None:
            self.counters[half].add(protein_id, activations)
        return half

    def result(self, half: str) -> ConceptCounts:
        """The counts of one half; an error if no protein of it was counted."""
        counts = self.counters[half].result()
        if counts.n_proteins == 0:
            name = "validation" if half == "valid" else "test"
            raise InterPLMError(f"concept metrics need annotated proteins in both halves; none of the {name} half was counted")
        return counts

    def results(self) -> tuple[ConceptCounts, ConceptCounts]:
        """``(validation counts, test counts)``."""
        return self.result("valid"), self.result("test")
