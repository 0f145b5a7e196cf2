"""The whole command-line chain on a real (tiny) fair-esm ESM-2 and real Swiss-Prot data:
concepts -> embed -> train -> normalize -> evaluate -> build-db, and its one-line errors."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys

import numpy as np
import pytest

from interplm_plugins.cli import main
from interplm_plugins.core.database.schema import FeatureDatabase
from interplm_plugins.core.inputs.sequences import ProteinRecord, protein_split, read_fasta, write_fasta
from interplm_plugins.core.plm.store import EmbeddingStore
from interplm_plugins.core.sae.files import load_sae


@pytest.fixture(scope="module")
def chain(tmp_path_factory, tiny_esm2_path, swissprot_fasta, swissprot_dat):
    """Run the chain once; tests inspect its outputs."""
    work = tmp_path_factory.mktemp("chain")
    records = [r for r in read_fasta(swissprot_fasta) if len(r.sequence) <= 700]
    train = [r for r in records if protein_split(r.id) == "train"][:60]
    held_out = [r for r in records if protein_split(r.id) != "train"][:60]
    write_fasta(train, work / "train.fasta")
    write_fasta(held_out + train[:20], work / "scan.fasta")
    model = str(tiny_esm2_path)
    steps = [
        ["concepts", str(swissprot_dat), "--out", str(work / "concepts"), "--min-instances", "5", "--min-proteins", "2"],
        ["embed", str(work / "train.fasta"), "--model", model, "--layer", "2", "--out", str(work / "emb"), "--shard-residues", "5000"],
        ["train", str(work / "emb"), "--out", str(work / "sae"), "--width", "128", "--steps", "120", "--batch-size", "256",
         "--warmup", "10", "--checkpoint-every", "50", "--l1", "0.01"],
        ["normalize", str(work / "sae" / "sae.safetensors"), "--store", str(work / "emb"), "--out", str(work / "sae_norm.safetensors")],
        ["build-db", str(work / "scan.fasta"), "--model", model, "--sae", str(work / "sae_norm.safetensors"),
         "--concepts", str(work / "concepts"), "--out", str(work / "features.sqlite")],
    ]  # fmt: skip
    for argv in steps:
        assert main(["-q", *argv]) == 0, argv
    return work


def test_embed_wrote_a_store_of_the_train_proteins(chain):
    store = EmbeddingStore(chain / "emb")
    assert store.complete and store.metadata["layer"] == 2 and len(store) == 60
    assert len(list((chain / "emb").glob("shard_*.npy"))) > 1


def test_training_logged_and_reduced_the_loss(chain):
    log = [json.loads(line) for line in (chain / "sae" / "train_log.jsonl").read_text().splitlines()]
    assert log[-1]["step"] == 120
    assert log[-1]["mse"] < log[0]["mse"]


def test_normalised_sae_activations_lie_in_unit_interval(chain):
    import torch

    sae = load_sae(chain / "sae_norm.safetensors")
    assert sae.config.normalized and sae.config.plm_layer == 2
    x = torch.from_numpy(np.concatenate([EmbeddingStore(chain / "emb").get(p) for p in EmbeddingStore(chain / "emb").proteins]))
    f = sae.encode(x).detach()
    assert float(f.max()) == pytest.approx(1.0, abs=1e-4)
    assert float(f.min()) >= 0


def test_evaluate_reports_reconstruction_and_fidelity(chain, tiny_esm2_path, capsys):
    args = ["evaluate", str(chain / "sae_norm.safetensors"), "--store", str(chain / "emb"), "--fasta", str(chain / "scan.fasta"),
            "--model", str(tiny_esm2_path), "--max-proteins", "10", "--json"]  # fmt: skip
    assert main(["-q", *args]) == 0
    out = json.loads(capsys.readouterr().out)
    for key in ("mse", "fraction_variance_explained", "l0", "dead_fraction", "fidelity"):
        assert key in out
    assert 0 < out["l0"] <= 128


def test_database_has_features_examples_and_concept_matches(chain):
    with FeatureDatabase(chain / "features.sqlite") as db:
        assert db.num_features == 128
        assert db.provenance["layer"] == 2
        concepts = db.concept_names()
        assert "Helix" in concepts and "Signal peptide" in concepts
        matches = db.features_for_concept("Helix", k=5)
        assert matches and all(0 <= m.f1 <= 1 for m in matches)
        feature = matches[0].feature
        top = db.top_examples(feature, 3)
        assert top and top[0].max_activation > 0
    con = sqlite3.connect(chain / "features.sqlite")
    splits = {row[0] for row in con.execute("SELECT split FROM proteins")}
    assert {"valid", "test"} <= splits


def test_sigkilled_training_resumes_to_the_same_weights(chain, tmp_path):
    """SIGKILL mid-run, rerun the same command: the result equals an uninterrupted run."""
    import os
    import signal
    import time

    import torch

    args = ["train", str(chain / "emb"), "--width", "64", "--batch-size", "128", "--warmup", "5",
            "--checkpoint-every", "20", "--steps", "600"]  # fmt: skip
    assert main(["-q", *args, "--out", str(tmp_path / "full")]) == 0
    cmd = [sys.executable, "-m", "interplm_plugins.cli", "-q", *args, "--out", str(tmp_path / "killed")]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoint = tmp_path / "killed" / "checkpoint.pt"
    deadline = time.time() + 240
    while not checkpoint.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.01)
    time.sleep(0.05)  # a little past the checkpoint (steps take ~1 ms on an idle CPU: not to the end)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "killed" / "sae.safetensors").exists(), "the run finished before it could be killed"
    assert _cli(*args, "--out", str(tmp_path / "killed")).returncode == 0
    full = load_sae(tmp_path / "full" / "sae.safetensors").state_dict()
    resumed = load_sae(tmp_path / "killed" / "sae.safetensors").state_dict()
    for key in full:
        torch.testing.assert_close(full[key], resumed[key], rtol=0, atol=0)


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "interplm_plugins.cli", "-q", *args], capture_output=True, text=True, timeout=300)


def test_bad_fasta_is_one_line_naming_file_record_and_reason(tmp_path, tiny_esm2_path):
    bad = tmp_path / "bad.fasta"
    bad.write_text(">ok\nMKT\n>broken protein\nMK-TL\n")
    result = _cli("embed", str(bad), "--model", str(tiny_esm2_path), "--layer", "1", "--out", str(tmp_path / "emb"))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "bad.fasta" in lines[0] and "broken" in lines[0] and "gap '-' at position 3" in lines[0]
    assert not (tmp_path / "emb").exists()


def test_missing_layer_and_mismatched_sae_are_clear_errors(chain, tmp_path, tiny_esm2_path):
    result = _cli("embed", str(chain / "train.fasta"), "--model", str(tiny_esm2_path), "--layer", "9", "--out", str(tmp_path / "e"))
    assert result.returncode == 2 and "layer 9 does not exist" in result.stderr
    from interplm_plugins.core.plm.model import new_esm2, save_esm2_checkpoint

    wide = save_esm2_checkpoint(new_esm2(2, 48, 4), tmp_path / "esm2_wide.pt")
    result = _cli("build-db", str(chain / "scan.fasta"), "--model", str(wide), "--sae", str(chain / "sae_norm.safetensors"),
                  "--out", str(tmp_path / "x.sqlite"))  # fmt: skip
    assert result.returncode == 2 and "does not fit" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "x.sqlite").exists()


def test_unknown_hub_weights_say_where_to_put_the_file(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "interplm_plugins.cli", "embed", str(tmp_path / "none.fasta"), "--model", "esm2_t6_8M_UR50D", "--layer", "1", "--out", str(tmp_path / "e")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 2
    # The FASTA is read first: the missing file is named.
    assert "none.fasta" in result.stderr
    fasta = tmp_path / "one.fasta"
    write_fasta([ProteinRecord("p", "MKTAYIAKQR")], fasta)
    result = subprocess.run(
        [sys.executable, "-m", "interplm_plugins.cli", "embed", str(fasta), "--model", "esm2_t6_8M_UR50D", "--layer", "1", "--out", str(tmp_path / "e")],
        capture_output=True, text=True, timeout=300, env={**__import__("os").environ, "INTERPLM_OFFLINE": "1", "TORCH_HOME": str(tmp_path / "hub")},
    )  # fmt: skip
    assert result.returncode == 2
    assert "esm2_t6_8M_UR50D.pt" in result.stderr and "put it at" in result.stderr


def test_truncated_store_is_named(chain, tmp_path):
    import shutil

    copy = tmp_path / "emb"
    shutil.copytree(chain / "emb", copy)
    shard = copy / "shard_00000.npy"
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    result = _cli("normalize", str(chain / "sae" / "sae.safetensors"), "--store", str(copy), "--out", str(tmp_path / "n.safetensors"))
    assert result.returncode == 2 and "shard_00000.npy" in result.stderr
    assert not (tmp_path / "n.safetensors").exists()


def test_report_compares_sae_features_with_signed_neurons(chain, tiny_esm2_path, capsys):
    out = chain / "report"
    args = ["report", "--concepts", str(chain / "concepts"), "--model", str(tiny_esm2_path),
            "--sae", str(chain / "sae_norm.safetensors"), "--out", str(out)]  # fmt: skip
    assert main(["-q", *args]) == 0
    printed = capsys.readouterr().out
    assert "concepts with test F1 > 0.5" in printed and "whole sequence clusters" in printed
    report = json.loads((out / "report.json").read_text())
    summary, rows = report["summary"], report["concepts"]
    assert summary["concepts_evaluated"] == len(rows) > 0
    assert summary["sae_concepts_above_cutoff"] == sum(r["sae_test_f1"] > 0.5 for r in rows)
    assert all(r["valid_proteins"] >= 3 and r["test_proteins"] >= 3 for r in rows)  # the default eligibility
    assert summary["concepts_where_sae_beats_neurons"] == sum(r["sae_test_f1"] > r["neuron_test_f1"] for r in rows)
    by_cutoff = {c["f1_cutoff"]: c for c in summary["concepts_found_by_cutoff"]}
    assert sorted(by_cutoff) == [0.3, 0.4, 0.5, 0.6]
    assert by_cutoff[0.5]["sae"] == summary["sae_concepts_above_cutoff"]
    assert by_cutoff[0.3]["neurons"] == sum(r["neuron_test_f1"] > 0.3 for r in rows)
    # neurons are named by dimension and sign: 32 dims of the tiny model, both signs
    assert all(r["neuron"][-1] in "+-" and 0 <= int(r["neuron"][:-1]) < 32 for r in rows)
    assert all(0 <= r["sae_feature"] < 128 for r in rows)
    assert (out / "f1_distribution.png").stat().st_size > 1000
    boot = summary["bootstrap_over_test_proteins"]
    assert boot["resamples"] == 1000 and [b["f1_cutoff"] for b in boot["sae_minus_neurons_concepts_found"]] == [0.3, 0.4, 0.5, 0.6]


def test_report_scores_on_another_annotated_set(chain, tiny_esm2_path, shared_data, tmp_path, capsys):
    """--test-concepts: choose on all of one set, score on all of another, leaving out the proteins both have."""
    from interplm_plugins.core.concepts import ConceptLabels

    more = shared_data / "uniprot" / "more" / "swissprot_testfixtures_122.dat.gz"
    assert main(["-q", "concepts", str(more), "--out", str(tmp_path / "more"), "--min-instances", "2", "--min-proteins", "1"]) == 0
    args = ["report", "--concepts", str(chain / "concepts"), "--test-concepts", str(tmp_path / "more"), "--model", str(tiny_esm2_path),
            "--sae", str(chain / "sae_norm.safetensors"), "--out", str(tmp_path / "report")]  # fmt: skip
    assert main(["-q", *args]) == 0
    summary = json.loads((tmp_path / "report" / "report.json").read_text())["summary"]
    first, second = ConceptLabels.load(chain / "concepts"), ConceptLabels.load(tmp_path / "more")
    shared = set(first.sequences) & set(second.sequences)
    assert shared  # 36 entries of the second file are in swissprot_train.dat.gz as well
    assert summary["valid_proteins"] == len(first.proteins)
    assert summary["test_proteins"] == len(second.proteins) - len(shared)
    assert "scored on" in summary["halves"] and summary["concepts_evaluated"] > 0
    assert "halves: chosen on all" in capsys.readouterr().out


def test_report_bootstrap_resamples_the_test_counts_it_reports(chain, tiny_esm2_path):
    """Per-protein counts of each concept's chosen unit sum to the reported test F1; the bootstrap is reproducible."""
    from interplm_plugins.core.concepts import ConceptHalves, ConceptLabels
    from interplm_plugins.core.concepts.report import compare_with_neurons
    from interplm_plugins.core.interpret.pipeline import load_pipeline

    pipeline = load_pipeline(model=tiny_esm2_path, sae=chain / "sae_norm.safetensors")
    comparison = compare_with_neurons(pipeline, ConceptHalves.from_splits(ConceptLabels.load(chain / "concepts")))
    for counts, table in ((comparison.sae_test_counts, comparison.sae), (comparison.neuron_test_counts, comparison.neurons)):
        assert counts.tp.shape == (comparison.n_test_proteins, len(table))
        np.testing.assert_allclose(counts.selection_f1()[0], table["test_f1"].to_numpy(), atol=1e-12)
    summary = comparison.summary()
    boot = summary["bootstrap_over_test_proteins"]
    assert boot == comparison.summary()["bootstrap_over_test_proteins"]  # seeded
    assert [b["f1_cutoff"] for b in boot["sae_minus_neurons_concepts_found"]] == [0.3, 0.4, 0.5, 0.6]
    for b in (*boot["sae_minus_neurons_concepts_found"], boot["sae_wins_minus_neuron_wins"]):
        low, high = b["ci95"]
        assert low <= high and 0 <= b["share_sae_ahead"] + b["share_tied"] <= 1


def test_bootstrap_interval_is_tight_when_one_side_always_wins():
    from interplm_plugins.core.concepts.report import ChosenUnitCounts, bootstrap_comparison

    rng = np.random.default_rng(1)
    proteins, concepts = 40, 6
    n_positive = rng.integers(0, 5, size=(proteins, concepts)).astype(float)
    n_instances = (n_positive > 0).astype(float)
    zeros = np.zeros_like(n_positive)
    level = np.array([True, False] * 3)
    perfect = ChosenUnitCounts(n_positive, zeros, n_instances, n_positive, n_instances, level)
    silent = ChosenUnitCounts(zeros, zeros, zeros, n_positive, n_instances, level)
    boot = bootstrap_comparison(perfect, silent, [0.5], resamples=200)
    at = boot["sae_minus_neurons_concepts_found"][0]
    assert at["share_sae_ahead"] == 1.0 and at["ci95"] == [concepts, concepts]
    assert bootstrap_comparison(silent, perfect, [0.5], resamples=200)["sae_minus_neurons_concepts_found"][0]["share_sae_ahead"] == 0.0
    tied = bootstrap_comparison(perfect, perfect, [0.5], resamples=50)
    assert tied["sae_wins_minus_neuron_wins"] == {"ci95": [0.0, 0.0], "share_sae_ahead": 0.0, "share_tied": 1.0}
