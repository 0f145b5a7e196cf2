"""In-silico mutation scans (core.interpret.mutate, ``interplm mutate``): each mutant's activations equal
embedding the mutant on its own, one forward batch per position, cached across features."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from interplm_plugins.core.inputs.sequences import ProteinRecord
from interplm_plugins.core.interpret import mutate
from interplm_plugins.core.plm.embed import embed_sequences
from interplm_plugins.core.sae.encode import encode_features
from interplm_plugins.errors import InterPLMError

SEQUENCE = "MKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQAPILSRVGDGTQDNLSGAEKAVQVKVKALPDAQFEVVHSLAKWKRQTLGQHDFSAGEGLYTHMKALR"


def alone(pipeline, sequence: str) -> np.ndarray:
    """``[L, F]`` activations of one sequence embedded on its own (the reference computation)."""
    (_, reps), = embed_sequences(pipeline.plm, [ProteinRecord("x", sequence)], [pipeline.layer])
    return encode_features(pipeline.sae, reps[pipeline.layer])


def test_scan_equals_embedding_each_mutant_alone(tiny_pipeline):
    feature = int(alone(tiny_pipeline, SEQUENCE)[[4, 30]].max(axis=0).argmax())
    table = mutate.mutation_scan(tiny_pipeline, SEQUENCE, feature, positions=[4, 30], to="all")
    assert list(table.columns) == mutate.SCAN_COLUMNS and len(table) == 38  # 19 mutants of each position
    assert set(table["position"]) == {5, 31} and "Y" not in set(table.loc[table.position == 5, "mutant"])
    wild = alone(tiny_pipeline, SEQUENCE)
    for row in table.sample(8, random_state=0).itertuples():
        mutant = alone(tiny_pipeline, SEQUENCE[: row.position - 1] + row.mutant + SEQUENCE[row.position :])
        assert row.site_before == pytest.approx(wild[row.position - 1, feature], abs=1e-5)
        assert row.site_change == pytest.approx(mutant[row.position - 1, feature] - wild[row.position - 1, feature], abs=1e-4)
        assert row.chain_change == pytest.approx(mutant[:, feature].sum() - wild[:, feature].sum(), abs=1e-3)
    assert (table["site_change"] != 0).any()  # a real scan, not zeros
    drops = mutate.largest_drops(table)
    assert drops.loc[5] == pytest.approx(max(0.0, -table.loc[table.position == 5, "site_change"].min()))


def test_second_feature_is_a_lookup_and_long_sequences_use_windows(tiny_pipeline):
    mutate.mutation_scan(tiny_pipeline, SEQUENCE, 3, positions=[10, 11], to="AG")
    cache = mutate._scan_cache()
    misses = cache.misses
    table = mutate.mutation_scan(tiny_pipeline, SEQUENCE, 7, positions=[10, 11], to="ala,GLY")
    assert cache.misses == misses and len(table) == 4  # Q and I to A and G
    long = (SEQUENCE * 11)[:1030]  # past one 1022-residue window: the stitched path
    row = mutate.mutation_scan(tiny_pipeline, long, 3, positions=[1025], to="W").iloc[0]
    mutant = alone(tiny_pipeline, long[:1025] + "W" + long[1026:])
    assert row.site_after == pytest.approx(mutant[1025, 3], abs=1e-4)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"to": "XYZ"}, "not an amino acid"), ({"to": ""}, "names no amino acid"), ({"positions": [200]}, "outside the sequence"),
     ({"feature": 64}, "does not exist")],
)  # fmt: skip
def test_bad_arguments_fail_with_one_line(tiny_pipeline, kwargs, message):
    args = {"feature": 3, "positions": [1], "to": "all", **kwargs}
    with pytest.raises(InterPLMError, match=message):
        mutate.mutation_scan(tiny_pipeline, SEQUENCE, **args)


def test_select_labels_reads_ranges_and_insertion_codes():
    labels = ["-2", "-1", "1", "2", "52", "52A", "53"]
    assert mutate.select_labels(labels, "-1-1,52A") == [1, 2, 5]
    assert mutate.select_labels(labels, "52-53") == [4, 5, 6]
    assert mutate.select_labels(labels, None) == list(range(7))
    with pytest.raises(InterPLMError, match="name no residue"):
        mutate.select_labels(labels, "90-99")


def test_cli_scans_a_fasta_record_and_a_structure_chain(tiny_pipeline, tiny_esm2_path, tiny_sae_path, tiny_db_path, tmp_path, capsys):
    import pymol
    from pathlib import Path

    from interplm_plugins.cli import main

    pipe = ["--model", str(tiny_esm2_path), "--sae", str(tiny_sae_path), "--db", str(tiny_db_path)]
    fasta = tmp_path / "two.fasta"
    fasta.write_text(f">one\n{SEQUENCE}\n>two\nMKV\n")
    out = tmp_path / "scan.tsv"
    assert main(["-q", "mutate", str(fasta), "--feature", "3", "--record", "one", "--positions", "5-6", "--to", "A", "--out", str(out), *pipe]) == 0
    table = pd.read_csv(out, sep="\t")
    expected = mutate.mutation_scan(tiny_pipeline, SEQUENCE, 3, positions=[4, 5], to="A")
    np.testing.assert_allclose(table["site_change"], expected["site_change"], atol=1e-5)
    assert main(["-q", "mutate", str(fasta), "--feature", "3", *pipe]) == 2
    assert "--record" in capsys.readouterr().err
    hpv = Path(pymol.__file__).resolve().parent / "pymol_path" / "data" / "tut" / "1hpv.pdb"
    assert main(["-q", "mutate", str(hpv), "--feature", "3", "--chain", "B", "--positions", "25", "--to", "all", *pipe]) == 0
    printed = capsys.readouterr().out
    assert printed.count(" B   25  ASP ") == 19 and "site_change" in printed
