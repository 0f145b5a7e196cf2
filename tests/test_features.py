"""``interplm features`` (core/interpret/features.py, cli/features.py): top features per real protein and per residue,
with concepts from a real feature database, as DataFrames, TSV and JSON."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from interplm_plugins.cli import main
from interplm_plugins.core.inputs.sequences import read_fasta, write_fasta
from interplm_plugins.core.interpret.features import PROTEIN_COLUMNS, protein_features, sequence_features


@pytest.fixture(scope="module")
def proteins(swissprot_fasta):
    return [r for r in read_fasta(swissprot_fasta) if 80 <= len(r.sequence) <= 400][:3]


def test_tables_rank_what_the_activations_say(tiny_pipeline, proteins):
    report = sequence_features(tiny_pipeline, proteins, top=4, residue_top=3)
    db = tiny_pipeline.database
    for record in proteins:
        acts = tiny_pipeline.activations(record.sequence)
        rows = report.proteins[report.proteins["protein"] == record.id]
        peaks = acts.max(axis=0)
        assert list(rows["rank"]) == list(range(1, len(rows) + 1)) and 1 <= len(rows) <= 4
        assert list(rows["max_activation"]) == pytest.approx(sorted(peaks, reverse=True)[: len(rows)], abs=1e-6)
        for row in rows.itertuples(index=False):
            assert row.peak_residue == record.sequence[row.peak_position - 1]
            assert acts[row.peak_position - 1, row.feature] == pytest.approx(row.max_activation)
            assert row.active_residues == int((acts[:, row.feature] > 0).sum())
            best = db.concepts_for_feature(row.feature, k=1)
            assert (row.concept if isinstance(row.concept, str) else None) == (best[0].concept if best else None)
        residues = report.residues[report.residues["protein"] == record.id]
        for position, group in residues.groupby("position"):
            expected = np.sort(acts[position - 1][acts[position - 1] > 0])[::-1][:3]
            assert list(group["activation"]) == pytest.approx(list(expected), abs=1e-6)
            assert (group["aa"] == record.sequence[position - 1]).all()
    assert report.proteins["concept"].notna().any()  # the database knows some of these features


def test_python_api_returns_a_dataframe(tiny_pipeline, proteins):
    frame = protein_features(proteins[0].sequence, pipeline=tiny_pipeline, top=5)
    assert isinstance(frame, pd.DataFrame) and tuple(frame.columns) == PROTEIN_COLUMNS and len(frame) == 5


def test_command_prints_and_writes_tsv_and_json(tiny_pipeline, tiny_esm2_path, tiny_sae_path, tiny_db_path, proteins, tmp_path, capsys):
    fasta = tmp_path / "two.fasta"
    write_fasta(proteins[:2], fasta)
    prefix = tmp_path / "out" / "two"
    argv = ["features", str(fasta), "--top", "3", "--out", str(prefix),
            "--model", str(tiny_esm2_path), "--sae", str(tiny_sae_path), "--db", str(tiny_db_path)]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert all(f"{r.id} ({len(r.sequence)} residues): 3 features" in printed for r in proteins[:2])
    table = pd.read_csv(f"{prefix}.proteins.tsv", sep="\t")
    data = json.loads((tmp_path / "out" / "two.json").read_text())
    assert [p["protein"] for p in data["proteins"]] == [r.id for r in proteins[:2]]
    for entry in data["proteins"]:
        assert [f["feature"] for f in entry["top_features"]] == list(table[table["protein"] == entry["protein"]]["feature"])
        assert all(1 <= len(residue["features"]) <= 5 for residue in entry["residues"])
    residues = pd.read_csv(f"{prefix}.residues.tsv", sep="\t")
    assert set(residues["protein"]) == {r.id for r in proteins[:2]}


def test_a_sequence_on_the_command_line_and_a_bad_one(tiny_pipeline, tiny_esm2_path, tiny_sae_path, tmp_path, capsys):
    args = ["--model", str(tiny_esm2_path), "--sae", str(tiny_sae_path)]
    assert main(["features", "MKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQAPILSRVGDGTQDNLSG", "--top", "2", *args]) == 0
    assert "query (50 residues): 2 features" in capsys.readouterr().out
    assert main(["features", "MKT1AY", "--out", str(tmp_path / "x"), *args]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "sequence" in error[0]
    assert not list(tmp_path.glob("x*"))


def test_a_sequence_longer_than_a_file_name_is_a_sequence(capsys):
    """A 300-residue query is read as a sequence (it once reached the file system and failed: names stop at 255 bytes)."""
    from interplm_plugins.cli import main

    sequence = "MKTAYIAKQRQISFVKSHFSRQLEERLGLI" * 10
    assert main(["-q", "features", sequence, "--top", "2"]) == 0
    assert "query (300 residues): 2 features" in capsys.readouterr().out
