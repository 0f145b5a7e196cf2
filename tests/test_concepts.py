"""Feature-concept metrics on cases computed by hand, and concept labels from real Swiss-Prot entries."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import sparse

from interplm_plugins.core.concepts import (
    Concept,
    ConceptHalves,
    ConceptLabels,
    ConceptMatchCounter,
    Eligibility,
    HalvesCounter,
    best_feature_per_concept,
    build_concept_labels,
    concept_metrics,
    count_matches,
    feature_concept_table,
    label_totals,
)
from interplm_plugins.errors import InterPLMError

from conftest import halve_alternately

# 8 residues, 2 concepts. Concept 0 has two instances (domains 1: residues 0-2, 2: residues 5-6);
# concept 1 is residue-level with instances 7 (residue 3) and 9 (residue 7).
LABELS = np.array(
    [[1, 0], [1, 0], [1, 0], [0, 7], [0, 0], [2, 0], [2, 0], [0, 9]],
    dtype=np.int32,
)
# 3 features. f0 fires on domain 1 only; f1 fires everywhere weakly (0.1) and strongly (0.9) at residue 3;
# f2 fires at 0.55 on residues 2, 5 and 7.
ACTS = np.zeros((8, 3), dtype=np.float32)
ACTS[0:3, 0] = [0.2, 0.7, 0.9]
ACTS[:, 1] = 0.1
ACTS[3, 1] = 0.9
ACTS[[2, 5, 7], 2] = 0.55
THRESHOLDS = (0.0, 0.5, 0.8)


def test_count_matches_by_hand():
    tp, fp, tpd = count_matches(ACTS, LABELS, THRESHOLDS)
    assert tp.shape == fp.shape == tpd.shape == (2, 3, 3)
    # feature 0: active (>0) on residues 0,1,2 -> all in concept 0 (domain 1)
    assert tp[0, 0].tolist() == [3, 2, 1] and fp[0, 0].tolist() == [0, 0, 0] and tpd[0, 0].tolist() == [1, 1, 1]
    assert tp[1, 0].tolist() == [0, 0, 0] and fp[1, 0].tolist() == [3, 2, 1]
    # feature 1: >0 everywhere (8 residues), >0.5 and >0.8 only residue 3
    assert tp[0, 1].tolist() == [5, 0, 0] and fp[0, 1].tolist() == [3, 1, 1] and tpd[0, 1].tolist() == [2, 0, 0]
    assert tp[1, 1].tolist() == [2, 1, 1] and fp[1, 1].tolist() == [6, 0, 0] and tpd[1, 1].tolist() == [2, 1, 1]
    # feature 2: residues 2 (domain 1), 5 (domain 2), 7 (concept 1 instance 9); nothing above 0.8
    assert tp[0, 2].tolist() == [2, 2, 0] and fp[0, 2].tolist() == [1, 1, 0] and tpd[0, 2].tolist() == [2, 2, 0]
    assert tp[1, 2].tolist() == [1, 1, 0] and tpd[1, 2].tolist() == [1, 1, 0]


def test_sparse_input_gives_identical_counts():
    dense = count_matches(ACTS, LABELS, THRESHOLDS)
    for a in (sparse.csr_matrix(ACTS), sparse.csc_matrix(ACTS)):
        for got, want in zip(count_matches(a, sparse.csr_matrix(LABELS), THRESHOLDS), dense):
            np.testing.assert_array_equal(got, want)


def test_metrics_by_hand():
    tp, fp, tpd = count_matches(ACTS, LABELS, THRESHOLDS)
    n_positive, n_instances = label_totals(LABELS)
    assert n_positive.tolist() == [5, 2] and n_instances.tolist() == [2, 2]
    m = concept_metrics(tp, fp, tpd, n_positive, n_instances, residue_level_mask=np.array([False, True]))
    # feature 0, concept 0, t=0: precision 3/3, recall 3/5, per-domain recall 1/2
    assert m["precision"][0, 0, 0] == 1.0
    assert m["recall"][0, 0, 0] == pytest.approx(0.6)
    assert m["recall_per_domain"][0, 0, 0] == pytest.approx(0.5)
    assert m["f1"][0, 0, 0] == pytest.approx(2 * 0.6 / 1.6)
    assert m["f1_per_domain"][0, 0, 0] == pytest.approx(2 * 0.5 / 1.5)
    # domain-level concept 0 selects by f1_per_domain; residue-level concept 1 by f1
    assert m["selection_f1"][0, 0, 0] == m["f1_per_domain"][0, 0, 0]
    assert m["selection_f1"][1, 1, 1] == m["f1"][1, 1, 1] == pytest.approx(2 * 1.0 * 0.5 / 1.5)
    # zero denominators give 0, not NaN
    assert m["precision"][0, 2, 2] == 0.0 and not np.isnan(m["f1"]).any()


def test_thresholds_are_strict():
    acts = np.array([[0.5], [0.5]], dtype=np.float32)
    tp, fp, _ = count_matches(acts, np.array([[1], [0]]), (0.5,))
    assert tp[0, 0, 0] == 0 and fp[0, 0, 0] == 0


def test_bad_shapes_and_nan_are_errors():
    with pytest.raises(InterPLMError, match="do not match"):
        count_matches(ACTS[:5], LABELS)
    bad = ACTS.copy()
    bad[0, 0] = np.nan
    with pytest.raises(InterPLMError, match="NaN"):
        count_matches(bad, LABELS)
    with pytest.raises(InterPLMError, match="thresholds"):
        count_matches(ACTS, LABELS, (-0.1,))


def test_blockwise_counter_equals_one_product(swissprot_entries):
    entries = swissprot_entries[:60]
    labels = build_concept_labels(entries, min_instances=2, min_proteins=1)
    rng = np.random.default_rng(0)
    counter = ConceptMatchCounter(labels, 16, THRESHOLDS)
    counter.block_residues = 3000  # several blocks
    acts = {}
    for pid in labels.proteins:
        a = rng.random((len(labels.sequences[pid]), 16)).astype(np.float32)
        a[a < 0.7] = 0
        acts[pid] = a
        counter.add(pid, a)
    stacked, _ = labels.stack(labels.proteins)
    want = count_matches(np.concatenate([acts[p] for p in labels.proteins]), stacked, THRESHOLDS)
    got = counter.result()
    np.testing.assert_array_equal(got.tp, want[0])
    np.testing.assert_array_equal(got.fp, want[1])
    np.testing.assert_array_equal(got.tp_per_domain, want[2])


def test_labels_from_real_swissprot(swissprot_entries, tmp_path):
    labels = build_concept_labels(swissprot_entries)
    names = labels.names
    for expected in ("Helix", "Beta strand", "Signal peptide", "Disulfide bond", "Active site", "Binding site: ATP", "Zinc finger"):
        assert expected in names
    # Disulfide bonds label their two cysteines with one shared instance id.
    c = names.index("Disulfide bond")
    for pid in labels.proteins:
        col = labels.dense(pid)[:, c]
        if col.any():
            seq = labels.sequences[pid]
            ids, counts = np.unique(col[col > 0], return_counts=True)
            assert set(counts) <= {1, 2}
            assert all(seq[i] == "C" for i in np.flatnonzero(col))
            break
    # A signal peptide starts at residue 1.
    s = names.index("Signal peptide")
    with_signal = [p for p in labels.proteins if labels.dense(p)[:, s].any()]
    assert with_signal and all(labels.dense(p)[0, s] > 0 for p in with_signal)
    # Without halves, asking for one is an error that says how to make them.
    with pytest.raises(InterPLMError, match="interplm concepts"):
        labels.proteins_in_split("valid")
    with pytest.raises(InterPLMError, match="concept split"):
        labels.proteins_in_split("train")
    labels = ConceptLabels(labels.concepts, labels.sequences, {p: labels.matrix(p) for p in labels.proteins},
                           {p: "valid" if i % 2 else "test" for i, p in enumerate(labels.proteins)}, {"halves": "alternate"})  # fmt: skip
    labels.save(tmp_path)
    again = ConceptLabels.load(tmp_path)
    assert again.names == names and again.splits == labels.splits and again.settings == {"halves": "alternate"}
    p0 = labels.proteins[0]
    np.testing.assert_array_equal(again.dense(p0), labels.dense(p0))
    # A damaged halves file is one line naming it.
    (tmp_path / "splits.tsv").write_text("protein_id\thalf\nNOT_A_PROTEIN\tvalid\n")
    with pytest.raises(InterPLMError, match="splits.tsv.*line 2"):
        ConceptLabels.load(tmp_path)


def test_best_feature_chosen_on_validation_and_scored_on_test(swissprot_entries):
    """A planted feature that marks helices exactly must be chosen for Helix with test F1 1."""
    halves = halve_alternately(build_concept_labels(swissprot_entries[:200]))
    helix = halves.valid.names.index("Helix")
    rng = np.random.default_rng(1)
    counter = HalvesCounter(halves, 4)
    for pid, sequence in halves.sequences.items():
        lab = halves.labels(halves.half(pid)).dense(pid)
        acts = (rng.random((len(sequence), 4)) * 0.4).astype(np.float32)
        acts[:, 2] = np.where(lab[:, helix] > 0, 0.9, 0.0)
        assert counter.add(pid, acts) == halves.half(pid)
    assert counter.add("NOT_ANNOTATED", np.zeros((5, 4), dtype=np.float32)) is None
    valid, test = counter.results()
    table = best_feature_per_concept(valid, test)
    row = table[table["concept"] == "Helix"].iloc[0]
    assert row["feature"] == 2 and row["test_f1_residue"] == pytest.approx(1.0)
    matches = feature_concept_table(valid, test, per_concept=2)
    top = matches[matches["concept"] == "Helix"].iloc[0]  # rows of a concept come in validation rank order
    assert top["feature"] == 2 and top["valid_f1"] == pytest.approx(1.0) and top["test_f1"] == pytest.approx(1.0)


def test_choice_never_reads_test_counts():
    """Validation-best feature 0 is chosen and stored first even though feature 1 is the test-best."""
    labels = np.array([[1], [1], [0], [0]], dtype=np.int32)
    concepts = [Concept("Helix", "Helix", False)]
    valid_acts = np.array([[0.9, 0.0], [0.9, 0.9], [0.0, 0.9], [0.0, 0.9]], dtype=np.float32)  # f0 exact, f1 half wrong
    test_acts = valid_acts[:, ::-1].copy()  # on test the two swap
    per_half = {}
    for half, acts in (("valid", valid_acts), ("test", test_acts)):
        lab = ConceptLabels(concepts, {half: "ACDE"}, {half: sparse.csr_matrix(labels)})
        counter = ConceptMatchCounter(lab, 2, (0.0, 0.5))
        counter.add(half, acts)
        per_half[half] = counter.result()
    relaxed = Eligibility(min_proteins=1, min_instances=1)
    best = best_feature_per_concept(per_half["valid"], per_half["test"], relaxed).iloc[0]
    assert best["feature"] == 0 and best["valid_f1"] == pytest.approx(1.0) and best["test_f1"] < 1.0
    table = feature_concept_table(per_half["valid"], per_half["test"], per_concept=2, eligibility=relaxed)
    assert table["feature"].tolist() == [0, 1] and table["test_f1"].iloc[1] == pytest.approx(1.0)


def test_concepts_with_too_few_examples_per_half_are_not_evaluated(swissprot_entries):
    halves = halve_alternately(build_concept_labels(swissprot_entries[:200], min_instances=2, min_proteins=2))
    counter = HalvesCounter(halves, 2)
    for pid, sequence in halves.sequences.items():
        counter.add(pid, np.full((len(sequence), 2), 0.5, dtype=np.float32))
    valid, test = counter.results()
    rule = Eligibility(min_proteins=3, min_instances=3)
    table = best_feature_per_concept(valid, test, rule)
    assert 0 < len(table) < len(halves.concepts)
    assert (table["valid_proteins"] >= 3).all() and (table["test_proteins"] >= 3).all() and (table["test_instances"] >= 3).all()
    dropped = set(halves.valid.names) - set(table["concept"])
    thin = [c for c in dropped if min(valid.n_proteins_with[halves.valid.names.index(c)], test.n_proteins_with[halves.valid.names.index(c)]) < 3]
    assert thin and set(thin) <= dropped
    # n_proteins_with counts proteins, recomputed here from the labels directly.
    c = halves.valid.names.index(table["concept"].iloc[0])
    assert valid.n_proteins_with[c] == sum(halves.valid.dense(p)[:, c].any() for p in halves.valid.proteins)


def test_separate_test_set_is_aligned_and_never_overlaps(swissprot_entries):
    choose = build_concept_labels(swissprot_entries[:120])
    score = build_concept_labels(swissprot_entries[100:220])  # 20 proteins shared with the first set
    halves = ConceptHalves.from_separate_sets(choose, score)
    assert halves.test.names == choose.names and len(halves.dropped_from_test) == 20
    assert not set(halves.valid.sequences) & set(halves.test.sequences)
    # A concept the test set has is labelled identically after alignment; one it lacks is empty.
    for name in set(choose.names) & set(score.names):
        pid = next(p for p in halves.test.proteins if score.dense(p)[:, score.names.index(name)].any())
        np.testing.assert_array_equal(halves.test.dense(pid)[:, choose.names.index(name)], score.dense(pid)[:, score.names.index(name)])
        break
    for name in set(choose.names) - set(score.names):
        assert all(not halves.test.dense(p)[:, choose.names.index(name)].any() for p in halves.test.proteins)
    with pytest.raises(InterPLMError, match="also in"):
        ConceptHalves.from_separate_sets(choose, choose)


def test_concepts_help_states_the_core_defaults(capsys):
    """The CLI keeps its parser free of heavy imports, so its help text states the defaults: they must be core's."""
    from interplm_plugins.cli import main
    from interplm_plugins.core.concepts.selection import DEFAULT_MIN_INSTANCES_PER_HALF, DEFAULT_MIN_PROTEINS_PER_HALF
    from interplm_plugins.core.inputs.homology import DEFAULT_COVERAGE, DEFAULT_MIN_SEQ_ID

    with pytest.raises(SystemExit):
        main(["concepts", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert f"in each half (default {DEFAULT_MIN_PROTEINS_PER_HALF})" in text
    assert f"sites, bonds) in each half (default {DEFAULT_MIN_INSTANCES_PER_HALF})" in text
    assert f"one cluster (default {DEFAULT_MIN_SEQ_ID})" in text and f"for that (default {DEFAULT_COVERAGE})" in text
