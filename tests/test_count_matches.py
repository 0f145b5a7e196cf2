"""count_matches (one join of label cells with activations, all thresholds at once) against a
brute-force count, on random activations and labels with ties, pairs, unsorted thresholds."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import sparse

from interplm_plugins.core.concepts import count_matches


def _brute(acts: np.ndarray, labels: np.ndarray, thresholds):
    n, f = acts.shape
    c = labels.shape[1]
    tp, fp, tpd = (np.zeros((c, f, len(thresholds)), dtype=np.int64) for _ in range(3))
    for ti, t in enumerate(thresholds):
        active = acts > t
        for j in range(c):
            lab = labels[:, j]
            tp[j, :, ti] = active[lab > 0].sum(axis=0)
            fp[j, :, ti] = active[lab == 0].sum(axis=0)
            for feature in range(f):
                tpd[j, feature, ti] = len(set(lab[active[:, feature] & (lab > 0)]))
    return tp, fp, tpd


@pytest.mark.parametrize("seed", range(12))
def test_count_matches_equals_brute_force(seed):
    rng = np.random.default_rng(seed)
    n, f, c = int(rng.integers(1, 50)), int(rng.integers(1, 9)), int(rng.integers(1, 5))
    acts = rng.random((n, f)) * (rng.random((n, f)) < 0.5)
    acts[rng.random((n, f)) < 0.1] = 0.5  # exactly at a threshold: not active there
    labels = np.zeros((n, c), dtype=np.int64)
    for j in range(c):
        for _ in range(int(rng.integers(0, 4))):
            start = int(rng.integers(0, n))
            labels[start : start + int(rng.integers(1, 6)), j] = rng.integers(1, 50)
        if n > 2 and seed % 3 == 0:
            labels[[0, n - 1], j] = 99  # a bond: two distant residues, one instance
    thresholds = [float(t) for t in rng.choice([0.0, 0.15, 0.5, 0.6, 0.8], size=int(rng.integers(1, 6)))]
    want = _brute(acts, labels, thresholds)
    for a in (acts, sparse.csr_matrix(acts)):
        for got, expected in zip(count_matches(a, sparse.csr_matrix(labels), thresholds), want):
            assert got.dtype == np.int64 and got.flags.c_contiguous
            np.testing.assert_array_equal(got, expected)


def test_count_matches_without_labels_or_activity():
    tp, fp, tpd = count_matches(np.zeros((4, 3)), np.zeros((4, 2), dtype=int), (0.0, 0.5))
    assert tp.shape == (2, 3, 2) and not tp.any() and not fp.any() and not tpd.any()
    tp, fp, tpd = count_matches(np.ones((4, 3)), np.zeros((4, 2), dtype=int), (0.5, 0.0))
    assert not tp.any() and (fp == 4).all() and not tpd.any()
