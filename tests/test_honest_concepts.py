"""Every surface picks a concept's feature on validation and shows its test score, above the floor.

A planted database: for "Planted concept", feature A is the validation-best (0.9; test 0.30) and
feature B the test-best (validation 0.30; test 0.95); feature C matches "Noise concept" with test
F1 0.8 but validation F1 0.1, under the floor (0.2), so it has no concept match. A surface that
ranked on test would pick B and show C's concept. A, B, C are real features of the tiny SAE active
in several of the database's proteins (A < B, so an index tie-break would also pick A).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from interplm_plugins.core.database.build import build_feature_database
from interplm_plugins.core.database.schema import NO_CONCEPT_MATCH, FeatureDatabase

COLUMNS = ["feature", "concept", "family", "level", "threshold", "valid_f1", "valid_precision", "valid_recall",
           "test_f1", "test_precision", "test_recall"]  # fmt: skip


def _planted(a: int, b: int, c: int) -> pd.DataFrame:
    return pd.DataFrame(
        [
            (a, "Planted concept", "Domain", "domain", 0.15, 0.9, 0.9, 0.9, 0.30, 0.25, 0.4),
            (b, "Planted concept", "Domain", "domain", 0.5, 0.30, 0.3, 0.3, 0.95, 0.95, 0.95),
            (c, "Noise concept", "Region", "domain", 0.0, 0.10, 0.1, 0.1, 0.80, 0.8, 0.8),
        ],
        columns=COLUMNS,
    )


@pytest.fixture()
def planted_pipeline(tiny_pipeline, tiny_db_records, tmp_path):
    """The tiny session pipeline with the planted database (its real activations, its SAE's provenance)."""
    from interplm_plugins import session

    records = tiny_db_records[:6]
    acts = [tiny_pipeline.activations(r.sequence) for r in records]
    proteins_active = sum((a > 0).any(axis=0) for a in acts)
    a, b, c = (int(f) for f in np.flatnonzero(proteins_active >= 3)[:3])
    provenance = {"plm": tiny_pipeline.plm.name, "plm_identity": tiny_pipeline.plm.identity, "layer": tiny_pipeline.layer,
                  "sae_hash": tiny_pipeline.sae_hash}  # fmt: skip
    path = build_feature_database(tmp_path / "planted.sqlite", zip(records, acts), provenance=provenance,
                                  concept_table=_planted(a, b, c), progress=False)  # fmt: skip
    pipeline = session.use_pipeline(model=tiny_pipeline.plm.source, sae=tiny_pipeline.sae_source, database=str(path))
    yield pipeline, (a, b, c)
    session.reset_session()


def test_database_api_ranks_on_validation(planted_pipeline):
    pipeline, (a, b, c) = planted_pipeline
    db = pipeline.database
    assert [m.feature for m in db.features_for_concept("Planted")] == [a, b]
    assert db.features_for_concept("Planted")[0].f1 == pytest.approx(0.30)  # the score shown is test F1
    assert db.best_concepts([a, b, c]).keys() == {a, b}
    assert db.feature_info(c)["best_concept"] is None
    assert [h.feature for h in db.search_features("planted")] == [a, b]


def test_pymol_concept_and_color_use_the_validation_choice(planted_pipeline, capsys):
    from pymol import cmd

    from interplm_plugins.pymol_plugin import commands

    pipeline, (a, b, c) = planted_pipeline
    cmd.reinitialize()
    cmd.fab("MKTAYIAKQRQISFVKSHFSRQ", "pep")
    matches = commands.concept("Planted", "pep", pipeline=pipeline)
    lines = [line.split() for line in capsys.readouterr().out.splitlines()]
    assert matches[0].feature == a
    header = next(i for i, line in enumerate(lines) if line[:1] == ["feature"])
    assert lines[header][:5] == ["feature", "valid", "F1", "test", "F1"] and lines[header + 1][:3] == [str(a), "0.90", "0.30"]
    assert lines[header + 2][0] == str(b)
    assert commands.color("pep", c, pipeline=pipeline)["best_concept"] is None
    assert commands.color("pep", c, pipeline=pipeline)["best_concept_label"] == NO_CONCEPT_MATCH
    assert commands.color("pep", a, pipeline=pipeline)["best_concept_label"] == "Planted concept (test F1 per domain 0.30)"


def test_napari_labels_and_search(planted_pipeline):
    from interplm_plugins.napari_plugin import _widget

    pipeline, (a, b, c) = planted_pipeline
    db = pipeline.database
    assert _widget.concept_text(db, c) == NO_CONCEPT_MATCH
    assert _widget.concept_text(db, b) == "best concept: Planted concept (test F1 per domain 0.95)"
    table = _widget.hit_table(db, [a, c], [0.5, 0.4])
    assert table["best concept"].tolist() == ["Planted concept", ""] and table["test F1"].iloc[0] == pytest.approx(0.3)


def test_demo_and_describe_choose_on_validation(planted_pipeline):
    from interplm_plugins.core.interpret.describe import select_features
    from interplm_plugins.core.interpret.showcase import informative_features

    pipeline, (a, b, c) = planted_pipeline
    db = pipeline.database
    # Features A and B fire alike; the demo's choice weighs their concept by validation F1.
    acts = np.zeros((20, db.num_features), dtype=np.float32)
    acts[3:9, a] = acts[3:9, b] = 1.0
    assert informative_features(acts, k=1, database=db) == [a]
    assert select_features(db, 2) == [a, b]  # describe's choice: validation F1 first (the test-best B second)


def test_database_of_another_version_is_refused_with_a_rebuild_hint(tmp_path):
    import sqlite3

    from interplm_plugins.core.database.schema import APPLICATION_ID
    from interplm_plugins.errors import InterPLMError

    path = tmp_path / "old.sqlite"
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE meta (key TEXT, value TEXT)")
    con.execute(f"PRAGMA application_id = {APPLICATION_ID}")
    con.execute("PRAGMA user_version = 1")
    con.commit()
    con.close()
    with pytest.raises(InterPLMError, match="older schema.*rebuild"):
        FeatureDatabase(path)
