"""The SQLite feature database, built from hand-made activations whose answers are known."""

from __future__ import annotations

import hashlib
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time

import numpy as np
import pandas as pd
import pytest

from interplm_plugins.core.database.build import build_feature_database, update_feature_database
from interplm_plugins.core.database.schema import SCHEMA_VERSION, FeatureDatabase, decode_activations, encode_activations
from interplm_plugins.core.inputs.sequences import ProteinRecord, protein_split
from interplm_plugins.errors import InterPLMError

# Three proteins, three features; every value is exact in float16.
# feature 0 is active in all three, feature 1 never, feature 2 in A and B.
PROTEINS = [
    (ProteinRecord("A", "MKTA", "protein A"), np.array([[0, 0, 0.25], [0.5, 0, 0], [1.0, 0, 0], [0, 0, 0]], np.float32)),
    (ProteinRecord("B", "GG", "protein B"), np.array([[0.25, 0, 0.5], [0, 0, 0.5]], np.float32)),
    (ProteinRecord("C", "PPP", "protein C"), np.array([[0, 0, 0], [0, 0, 0], [0.75, 0, 0]], np.float32)),
]
MATCH_COLUMNS = ["feature", "concept", "family", "level", "threshold", "valid_f1", "valid_precision", "valid_recall",
                 "test_f1", "test_precision", "test_recall"]  # fmt: skip


def _matches(rows) -> pd.DataFrame:
    """Concept matches from ``(feature, concept, valid_f1, test_f1, ...)`` rows; the other columns get plain values."""
    full = [(f, c, "family", "domain", 0.5, v, v, v, t, t, t) for f, c, v, t in rows]
    return pd.DataFrame(full, columns=MATCH_COLUMNS)


# Helix: feature 2 is the test-best (0.6) but feature 0 the validation-best (0.35): queries must rank 0 first.
# Signal peptide: feature 1 scores 0.7 on test but only 0.1 on validation, under the floor (0.2): no match.
CONCEPTS = pd.DataFrame(
    [
        (0, "Binding site: Zn", "binding", "residue", 0.5, 0.85, 0.8, 0.9, 0.9, 0.95, 0.85),
        (0, "Helix", "secondary", "domain", 0.5, 0.35, 0.3, 0.4, 0.3, 0.25, 0.4),
        (2, "Helix", "secondary", "domain", 0.15, 0.25, 0.2, 0.3, 0.6, 0.5, 0.75),
        (2, "Zinc finger C2H2", "domain", "domain", 0.6, 0.4, 0.5, 0.33, 0.4, 0.45, 0.36),
        (1, "Signal peptide", "region", "domain", 0.0, 0.1, 0.1, 0.1, 0.7, 0.7, 0.7),
    ],
    columns=MATCH_COLUMNS,
)
SUMMARY = pd.DataFrame(
    {
        "concept": ["Binding site: Zn", "Helix", "Zinc finger C2H2", "Signal peptide"],
        "family": ["binding", "secondary", "domain", "region"],
        "n_instances": [12, 40, 3, 7],
    }
)
PROVENANCE = {"plm": "esm2_t6_8M_UR50D", "plm_identity": "abc", "layer": np.int64(3), "sae_hash": "f00d", "thresholds": [0, 0.5]}


def _build(path, proteins=PROTEINS, **kwargs):
    kwargs.setdefault("provenance", PROVENANCE)
    kwargs.setdefault("concept_table", CONCEPTS)
    kwargs.setdefault("concept_summary", SUMMARY)
    kwargs.setdefault("top_k", 2)
    kwargs.setdefault("quantile_bins", 3)
    kwargs.setdefault("examples_per_bin", 1)
    return build_feature_database(path, iter(proteins), progress=False, **kwargs)


@pytest.fixture
def db(tmp_path):
    with FeatureDatabase(_build(tmp_path / "features.sqlite")) as opened:
        yield opened


def _digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_feature_statistics_are_counted_over_all_residues(db):
    assert db.num_features == 3
    info = db.feature_info(0)
    assert info["n_active_residues"] == 4 and info["n_active_proteins"] == 3
    assert info["freq_residue"] == pytest.approx(4 / 9) and info["freq_protein"] == 1.0
    assert info["max_activation"] == 1.0
    assert info["mean_active"] == pytest.approx((0.5 + 1.0 + 0.25 + 0.75) / 4)
    assert info["best_concept"].concept == "Binding site: Zn" and info["description"] is None and info["cluster"] is None
    silent = db.feature_info(1)
    assert (silent["n_active_residues"], silent["freq_protein"], silent["max_activation"], silent["mean_active"]) == (0, 0, 0, 0)
    two = db.feature_info(2)
    assert two["freq_protein"] == pytest.approx(2 / 3) and two["mean_active"] == pytest.approx(1.25 / 3)


def test_top_examples_are_ordered_with_full_activation_tracks(db):
    top = db.top_examples(0)
    assert [(e.protein_id, e.max_activation, e.argmax_position) for e in top] == [("A", 1.0, 2), ("C", 0.75, 2)]
    assert top[0].sequence == "MKTA" and top[0].description == "protein A"
    np.testing.assert_array_equal(top[0].activations, [0, 0.5, 1.0, 0])
    assert top[0].activations.dtype == np.float32
    assert [(e.protein_id, e.argmax_position) for e in db.top_examples(2)] == [("B", 0), ("A", 0)]
    assert [e.protein_id for e in db.top_examples(0, k=1)] == ["A"]
    assert db.top_examples(1) == [] and db.quantile_examples(1) == []


def test_quantile_examples_cover_the_activation_range(db):
    # feature 0's per-protein maxima 0.25 (B) < 0.75 (C) < 1.0 (A) fall in three equal-count bins
    assert [(e.quantile_bin, e.protein_id) for e in db.quantile_examples(0)] == [(0, "B"), (1, "C"), (2, "A")]
    # two active proteins over three bins: ranks 0 and 1 map to bins 0 and 1 (floor(rank * 3 / 2))
    examples = db.quantile_examples(2)
    assert [(e.quantile_bin, e.protein_id, e.max_activation) for e in examples] == [(0, "A", 0.25), (1, "B", 0.5)]
    np.testing.assert_array_equal(examples[1].activations, [0.5, 0.5])


def test_top_k_and_quantiles_over_a_longer_stream(tmp_path):
    rng = np.random.default_rng(1)
    maxima = rng.permutation(np.arange(1, 31)) / 32  # 30 distinct maxima, exact in float16
    proteins = []
    for i, peak in enumerate(maxima):
        acts = np.zeros((5, 2), np.float32)
        acts[i % 5, 0] = peak
        proteins.append(((f"P{i}", "ACDEF"), acts))
    path = build_feature_database(tmp_path / "f.sqlite", proteins, provenance={}, top_k=3, quantile_bins=5,
                                  examples_per_bin=2, reservoir_size=30, progress=False)  # fmt: skip
    with FeatureDatabase(path) as db:
        top = db.top_examples(0)
        assert [e.max_activation for e in top] == [30 / 32, 29 / 32, 28 / 32]
        assert [e.protein_id for e in top] == [f"P{int(np.flatnonzero(maxima == m)[0])}" for m in (30 / 32, 29 / 32, 28 / 32)]
        assert all(e.argmax_position == int(e.protein_id[1:]) % 5 for e in top)
        # 30 proteins in 5 bins of 6 (maxima 1-6, 7-12, ...); picks are the ends of each bin
        quantiles = db.quantile_examples(0)
        assert [(e.quantile_bin, round(e.max_activation * 32)) for e in quantiles] == [
            (0, 1), (0, 6), (1, 7), (1, 12), (2, 13), (2, 18), (3, 19), (3, 24), (4, 25), (4, 30)
        ]  # fmt: skip
        assert db.top_examples(1) == [] and db.feature_info(1)["n_active_proteins"] == 0


def test_reservoir_samples_the_whole_stream(tmp_path):
    proteins = [((f"P{i}", "AAAA"), np.full((4, 1), (i + 1) / 256, np.float32)) for i in range(200)]
    path = build_feature_database(tmp_path / "f.sqlite", proteins, provenance={}, top_k=1, quantile_bins=2,
                                  examples_per_bin=2, reservoir_size=4, progress=False)  # fmt: skip
    with FeatureDatabase(path) as db:
        sampled = sorted(int(e.protein_id[1:]) for e in db.quantile_examples(0))
        assert len(sampled) == 4
        assert max(sampled) >= 4  # not merely the first four proteins: later ones replaced them
        assert db.top_examples(0)[0].protein_id == "P199"


def test_concept_queries_rank_by_validation_and_report_test(db):
    assert [(m.concept, m.valid_f1, m.f1) for m in db.concepts_for_feature(0)] == [("Binding site: Zn", 0.85, 0.9), ("Helix", 0.35, 0.3)]
    best = db.concepts_for_feature(0, k=1)[0]
    assert (best.threshold, best.family, best.level, best.precision, best.recall) == (0.5, "binding", "residue", 0.95, 0.85)
    assert best.label() == "Binding site: Zn (test F1 0.90)" and "recall 0.85" in best.metrics_text()
    assert db.concepts_for_feature(0)[1].label() == "Helix (test F1 per domain 0.30)"
    assert "recall per domain 0.40" in db.concepts_for_feature(0)[1].metrics_text()
    # Helix: the validation-best feature 0 comes first although feature 2 scores higher on test.
    assert [(m.feature, m.f1) for m in db.features_for_concept("HELIX")] == [(0, 0.3), (2, 0.6)]
    assert db.best_concepts([0, 2]) == {0: db.concepts_for_feature(0)[0], 2: db.concepts_for_feature(2)[0]}
    assert db.concepts_for_feature(2)[0].concept == "Zinc finger C2H2"  # validation 0.4 beats Helix's 0.25
    # Under the floor (validation F1 0.1 < 0.2) a match is no match, whatever its test F1; a query may lower the floor.
    assert db.concept_floor == 0.2 and db.concepts_for_feature(1) == [] and db.best_concepts([1]) == {}
    assert db.features_for_concept("Signal peptide") == []
    assert [m.feature for m in db.features_for_concept("Signal peptide", min_valid_f1=0.0)] == [1]
    assert [m.concept for m in db.concepts_for_feature(0, min_valid_f1=0.5)] == ["Binding site: Zn"]
    assert [(m.feature, m.concept) for m in db.features_for_concept("zn")] == [(0, "Binding site: Zn")]
    assert [(m.feature, m.concept) for m in db.features_for_concept("zin")] == [(2, "Zinc finger C2H2")]
    assert [m.concept for m in db.features_for_concept("i", k=2)] == ["Binding site: Zn", "Zinc finger C2H2"]  # validation 0.85, 0.4
    assert db.features_for_concept("") == []
    assert db.concept_names() == ["Binding site: Zn", "Helix", "Signal peptide", "Zinc finger C2H2"]


def test_concept_floor_is_the_builds_unless_the_reader_asks(tmp_path):
    path = _build(tmp_path / "f.sqlite", concept_floor=0.05)
    with FeatureDatabase(path) as db:
        assert db.provenance["concept_floor"] == 0.05 and db.concepts_for_feature(1)[0].concept == "Signal peptide"
    with FeatureDatabase(path, concept_floor=0.5) as db:
        assert [m.concept for m in db.concepts_for_feature(0)] == ["Binding site: Zn"]
    with pytest.raises(InterPLMError, match="concept_floor"):
        _build(tmp_path / "g.sqlite", concept_floor=1.5)


def test_features_active_at_ranks_by_mean_over_positions(db):
    acts_a = PROTEINS[0][1]
    hits = db.features_active_at(acts_a, [1, 2])
    assert [(h.feature, h.score) for h in hits] == [(0, 0.75)]
    assert hits[0].best_concept.concept == "Binding site: Zn"
    hits = db.features_active_at(acts_a, [0, 1], k=5)
    assert [(h.feature, h.score) for h in hits] == [(0, 0.25), (2, 0.125)]
    assert hits[1].best_concept.concept == "Zinc finger C2H2"
    assert db.features_active_at(acts_a, [3]) == []
    with pytest.raises(InterPLMError, match="position 4 is outside the sequence"):
        db.features_active_at(acts_a, [1, 4])
    with pytest.raises(InterPLMError, match=r"activations must be \[residues, 3\]"):
        db.features_active_at(np.zeros((4, 5)), [0])


def test_provenance_round_trips_with_build_facts(db):
    prov = db.provenance
    assert {k: prov[k] for k in PROVENANCE} == {**PROVENANCE, "layer": 3}
    assert prov["schema_version"] == SCHEMA_VERSION and prov["num_features"] == 3
    assert (prov["num_proteins"], prov["num_residues"], prov["top_k"]) == (3, 9, 2)
    assert prov["created"].endswith("+00:00") and prov["tool_version"]


def test_proteins_table_keeps_every_protein_and_its_split(db):
    rows = sqlite3.connect(db.path).execute("SELECT protein_id, sequence, length, split FROM proteins ORDER BY protein_idx").fetchall()
    assert rows == [(r.id, r.sequence, len(r.sequence), protein_split(r.id)) for r, _ in PROTEINS]


def test_unknown_feature_is_an_error_naming_the_range(db):
    for bad in (3, -1, "0", True):
        with pytest.raises(InterPLMError, match=r"does not exist \(features are 0..2\)"):
            db.top_examples(bad)


def test_injection_like_concept_names_are_plain_data(tmp_path):
    nasty = ["x'); DROP TABLE features;--", "100% _match_", 'quote " and \\ backslash']
    table = _matches([(0, nasty[0], 0.5, 0.5), (2, nasty[1], 0.7, 0.7), (2, nasty[2], 0.3, 0.2)])
    with FeatureDatabase(_build(tmp_path / "f.sqlite", concept_table=table, concept_summary=None)) as db:
        assert db.concept_names() == sorted(nasty)
        assert [m.concept for m in db.features_for_concept("drop table")] == [nasty[0]]
        assert [m.concept for m in db.features_for_concept("%")] == [nasty[1]]  # not a LIKE wildcard
        assert [m.concept for m in db.features_for_concept("_")] == [nasty[1]]
        assert db.features_for_concept("'; --") == []
        assert db.num_features == 3 and db.concepts_for_feature(0)[0].valid_f1 == 0.5


def test_database_without_concepts_answers_empty(tmp_path):
    with FeatureDatabase(_build(tmp_path / "f.sqlite", concept_table=None, concept_summary=None)) as db:
        assert db.concept_names() == [] and db.concepts_for_feature(0) == []
        assert db.features_for_concept("Helix") == [] and db.search_features("helix") == []
        assert db.features_active_at(PROTEINS[0][1], [2])[0].best_concept is None


def test_descriptions_and_clusters_are_added_atomically(tmp_path):
    path = _build(tmp_path / "f.sqlite")
    with FeatureDatabase(path) as before:
        update_feature_database(
            path,
            descriptions=pd.DataFrame(
                {"feature": [0, 0, 2], "model": ["m1", "m2", "m1"], "description": ["Zinc ligand", "Metal site", "Helix cap"], "score": [0.2, 0.8, 0.5]}
            ),
            clusters=pd.DataFrame({"feature": [0, 1, 2], "cluster": [1, -1, 1], "x": [0.0, 1.0, 2.0], "y": [3.0, 4.0, 5.0]}),
        )
        assert before.description(0) is None  # an open reader keeps its snapshot
    with FeatureDatabase(path) as db:
        info = db.feature_info(0)
        assert (info["description"], info["cluster"], info["x"], info["y"]) == ("Metal site", 1, 0.0, 3.0)
        hits = db.search_features("HELIX")
        # concept "Helix": feature 0 (validation F1 0.35), feature 2 (0.25); description "Helix cap" of feature 2 scores 0.5
        assert [(h.feature, h.score, h.matched) for h in hits] == [(2, 0.5, "Helix cap"), (0, 0.35, "Helix")]
        assert hits[0].description == "Helix cap"
        assert [(h.feature, h.matched) for h in db.search_features("metal")] == [(0, "Metal site")]
        assert db.top_examples(0)[0].protein_id == "A"  # the rest of the database came along
    with pytest.raises(InterPLMError, match="descriptions: feature 7 is not an index"):
        update_feature_database(path, descriptions=pd.DataFrame({"feature": [7], "model": ["m"], "description": ["d"]}))
    with pytest.raises(InterPLMError, match="clusters lacks column"):
        update_feature_database(path, clusters=pd.DataFrame({"feature": [0]}))


@pytest.mark.parametrize(
    "proteins, message",
    [
        ([(("A", "MK"), np.zeros((3, 2)))], "record A: activations have 3 rows but the sequence has 2 residues"),
        ([(("A", "MK"), np.zeros(2))], r"record A: activations must be \[residues, features\]"),
        ([(("A", "MK"), np.full((2, 2), np.nan))], "record A: activations contain NaN"),
        ([(("A", "MK"), np.zeros((2, 2))), (("B", "M"), np.zeros((1, 3)))], "record B: activations have 3 features, earlier proteins had 2"),
        ([(("A", "MK"), np.zeros((2, 2))), (("A", "M"), np.zeros((1, 2)))], "record A: duplicate protein id"),
        ([(("A", "MK"), [["x", "y"], ["z", "w"]])], "record A: activations are not a numeric array"),
        ([("A", np.zeros((2, 2)))], "a protein must have .id and .sequence"),
        ([], "no proteins to build the feature database from"),
    ],
)
def test_bad_input_is_an_error_and_leaves_the_old_database(tmp_path, proteins, message):
    path = _build(tmp_path / "f.sqlite")
    digest = _digest(path)
    with pytest.raises(InterPLMError, match=message):
        build_feature_database(path, proteins, provenance={}, progress=False)
    assert _digest(path) == digest and sorted(p.name for p in tmp_path.iterdir()) == ["f.sqlite"]


def test_bad_concept_table_and_provenance_are_errors(tmp_path):
    with pytest.raises(InterPLMError, match="concept_table lacks column"):
        _build(tmp_path / "f.sqlite", concept_table=pd.DataFrame({"feature": [0], "concept": ["x"]}))
    with pytest.raises(InterPLMError, match=r"feature 9 is not an index in 0..2"):
        _build(tmp_path / "f.sqlite", concept_table=_matches([(9, "x", 0.1, 0.1)]))
    with pytest.raises(InterPLMError, match="more than one row for feature 0"):
        _build(tmp_path / "f.sqlite", concept_table=_matches([(0, "x", 0.1, 0.1), (0, "x", 0.2, 0.2)]))
    with pytest.raises(InterPLMError, match="test_f1 is missing"):
        _build(tmp_path / "f.sqlite", concept_table=_matches([(0, "x", 0.1, None)]))
    with pytest.raises(InterPLMError, match="provenance value of 'sae'"):
        _build(tmp_path / "f.sqlite", provenance={"sae": object()})
    assert not (tmp_path / "f.sqlite").exists()


def test_activation_blobs_round_trip_float16():
    values = np.array([0, 0.1, 1e6, -3.5], np.float32)
    decoded = decode_activations(encode_activations(values))
    np.testing.assert_allclose(decoded, [0, 0.1, 65504, -3.5], rtol=1e-3)


# -- opening files that are not (this version of) a feature database


def _set_pragma(path, pragma, value):
    con = sqlite3.connect(path)
    con.execute(f"PRAGMA {pragma} = {value}")
    con.commit()
    con.close()


@pytest.mark.parametrize("version, age", [(0, "an older schema"), (SCHEMA_VERSION + 1, "a newer schema")])
def test_other_schema_versions_say_to_rebuild(tmp_path, version, age):
    path = _build(tmp_path / "f.sqlite")
    _set_pragma(path, "user_version", version)
    with pytest.raises(InterPLMError) as err:
        FeatureDatabase(path)
    assert str(path) in str(err.value) and age in str(err.value) and "interplm build-db" in str(err.value)


def test_files_that_are_not_feature_databases(tmp_path):
    text = tmp_path / "notes.sqlite"
    text.write_text("this is not a database\n" * 100)
    with pytest.raises(InterPLMError, match=r"notes.sqlite: not a feature database .*interplm build-db"):
        FeatureDatabase(text)
    other = tmp_path / "other.sqlite"
    con = sqlite3.connect(other)
    con.execute("CREATE TABLE t (x)")
    con.close()
    with pytest.raises(InterPLMError, match="other.sqlite: an SQLite file but not an interplm feature database"):
        FeatureDatabase(other)
    with pytest.raises(InterPLMError, match="missing.sqlite: no such feature database"):
        FeatureDatabase(tmp_path / "missing.sqlite")


def test_reader_never_writes(db):
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        db._con.execute("DELETE FROM features")


# -- concurrency and crashes, with a real second process

_REBUILD_SCRIPT = textwrap.dedent(
    """
    import sys, time, pathlib
    import numpy as np
    from interplm_plugins.core.database.build import build_feature_database

    path, marker, pause = sys.argv[1], pathlib.Path(sys.argv[2]), float(sys.argv[3])

    def proteins():
        for i in range(20):
            if i == 10:
                marker.write_text("half way")
                time.sleep(pause)
            yield (f"NEW{i}", "MKV"), np.full((3, 3), 0.5, np.float32)

    build_feature_database(path, proteins(), provenance={"plm": "rebuilt"}, progress=False)
    """
)


def _start_rebuild(tmp_path, path, pause):
    script = tmp_path / "rebuild.py"
    script.write_text(_REBUILD_SCRIPT)
    marker = tmp_path / "marker"
    proc = subprocess.Popen([sys.executable, str(script), str(path), str(marker), str(pause)])
    deadline = time.monotonic() + 60
    while not marker.exists():
        assert proc.poll() is None, "the rebuild process died before reaching the marker"
        assert time.monotonic() < deadline, "the rebuild process never got half way"
        time.sleep(0.05)
    return proc


def test_sigkill_during_rebuild_leaves_the_old_database(tmp_path):
    path = _build(tmp_path / "f.sqlite")
    digest = _digest(path)
    proc = _start_rebuild(tmp_path, path, pause=120)
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL
    assert _digest(path) == digest
    with FeatureDatabase(path) as db:
        assert db.provenance["plm"] == PROVENANCE["plm"] and db.top_examples(0)[0].protein_id == "A"


def test_open_reader_keeps_answering_while_another_process_rebuilds(tmp_path):
    path = _build(tmp_path / "f.sqlite")
    with FeatureDatabase(path) as reader:
        proc = _start_rebuild(tmp_path, path, pause=0)
        assert proc.wait(timeout=60) == 0
        assert reader.provenance["plm"] == PROVENANCE["plm"]
        assert [e.protein_id for e in reader.top_examples(0)] == ["A", "C"]  # queries the file it opened
        assert reader.concepts_for_feature(0)[0].concept == "Binding site: Zn"
        with FeatureDatabase(path) as fresh:
            assert fresh.provenance["plm"] == "rebuilt" and fresh.top_examples(0)[0].protein_id == "NEW0"


def test_match_query_reads_the_columns_concept_match_holds():
    from dataclasses import fields

    from interplm_plugins.core.database import schema as database

    selected = database._MATCH_SELECT.split("SELECT ")[1].split(" FROM")[0].replace(" ", "").split(",")
    assert selected == list(database._MATCH_COLUMNS) == [f.name for f in fields(database.ConceptMatch)]
