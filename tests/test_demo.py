"""The embedded default: a real fair-esm checkpoint with biology in it, its SAE and database, and `interplm demo`."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from interplm_plugins.core.activations import DEMO_DATABASE, DEMO_DIR, DEMO_SAE, load_pipeline
from interplm_plugins.core.plm import demo_model_path, load_plm

REPO = Path(__file__).resolve().parent.parent


def test_embedded_files_are_shipped_and_small():
    files = [demo_model_path(), demo_model_path().with_name(demo_model_path().stem + "-contact-regression.pt"), DEMO_SAE,
             DEMO_SAE.with_suffix(".json"), DEMO_DATABASE, DEMO_DIR / "MODEL_CARD.md"]  # fmt: skip
    for f in files:
        assert f.is_file(), f
    assert sum(f.stat().st_size for f in files) < 25 * 2**20
    card = (DEMO_DIR / "MODEL_CARD.md").read_text()
    assert "not ESM-2" in card and "perplexity" in card


def test_fair_esm_own_loader_reads_the_demo_checkpoint():
    """fair-esm's load_model_and_alphabet_local loads it (with argparse.Namespace allowlisted, never weights_only=False)."""
    import esm.pretrained

    torch.serialization.add_safe_globals([argparse.Namespace])
    model, alphabet = esm.pretrained.load_model_and_alphabet_local(str(demo_model_path()))
    ours = load_plm("demo")
    assert model.num_layers == ours.num_layers == 4 and model.embed_dim == ours.embed_dim
    _, _, toks = alphabet.get_batch_converter()([("p", "MKTAYIAKQRQISFVKSHFSRQ")])
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(toks)["logits"], ours.model(toks)["logits"])


def test_demo_model_predicts_masked_residues_better_than_frequencies():
    """The shipped metrics: held-out masked-LM perplexity below the unigram baseline."""
    metrics = json.loads((DEMO_DIR / "esm2_t4_3M_interplm_demo.json").read_text())
    assert metrics["held_out_perplexity"] < metrics["unigram_perplexity"] - 1.0


def test_demo_database_matches_its_sae_and_has_concepts():
    pipeline = load_pipeline()
    db = pipeline.database
    assert db.provenance["sae_hash"] == pipeline.sae_hash
    assert db.num_features == pipeline.num_features
    # every concept the shipped report finds at F1 >= 0.5 is in the database, with the same feature and test F1
    report = json.loads((REPO / "docs" / "demo_report.json").read_text())
    strong = [row for row in report["concepts"] if row["sae_test_f1"] >= 0.5]
    assert len(strong) == report["summary"]["sae_concepts_with_f1_at_cutoff"] > 0
    for row in strong:
        matches = [m for m in db.features_for_concept(row["concept"], k=100, split="test") if m.concept == row["concept"]]
        assert any(m.feature == row["sae_feature"] and m.f1 == pytest.approx(row["sae_test_f1"], abs=1e-4) for m in matches), row


def test_shipped_report_covers_every_annotated_protein():
    """The README's SAE-vs-neuron numbers (docs/demo_report.json) use all 727 Swiss-Prot proteins, halved into validation and test."""
    report = json.loads((REPO / "docs" / "demo_report.json").read_text())
    summary = report["summary"]
    assert summary["valid_proteins"] + summary["test_proteins"] == 727 and summary["test_proteins"] >= 300
    assert summary["concepts_evaluated"] >= 80
    assert summary["concepts_where_sae_beats_neurons"] + summary["concepts_where_neurons_beat_sae"] <= summary["concepts_evaluated"]
    assert report["sae_quality"]["fidelity"] > 0.9


def test_shipped_report_is_reproduced_and_sae_features_beat_neurons(swissprot_entries):
    """Recomputed from the shipped pipeline, the comparison equals docs/demo_report.json, and says what the README says:
    SAE features find more concepts than neurons at InterPLM's F1 >= 0.5 (and at 0.4), are the better unit on more
    concepts, and stay ahead in most bootstrap resamples of the test proteins."""
    from interplm_plugins.core.concepts import build_concept_labels
    from interplm_plugins.core.report import compare_with_neurons

    summary = compare_with_neurons(load_pipeline(), build_concept_labels(swissprot_entries)).summary()
    shipped = json.loads((REPO / "docs" / "demo_report.json").read_text())["summary"]
    assert summary.keys() == shipped.keys()
    for key, value in shipped.items():
        assert summary[key] == (pytest.approx(value, abs=1e-3) if isinstance(value, float) else value), key
    assert summary["concepts_where_sae_beats_neurons"] > summary["concepts_where_neurons_beat_sae"]
    at = {c["f1_cutoff"]: c for c in summary["concepts_found_by_cutoff"]}
    assert at[0.5]["sae"] > at[0.5]["neurons"] and at[0.4]["sae"] > at[0.4]["neurons"]
    boot = {b["f1_cutoff"]: b for b in summary["bootstrap_over_test_proteins"]["sae_minus_neurons_concepts_found"]}
    assert boot[0.5]["share_sae_ahead"] > 0.5


def test_interplm_demo_with_no_arguments(tmp_path):
    """What the README's first command runs, as a user runs it: a fresh process, no arguments."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "INTERPLM_CACHE_DIR": str(tmp_path / "cache")}
    result = subprocess.run([sys.executable, "-m", "interplm_plugins.cli", "-q", "demo"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=900)  # fmt: skip
    assert result.returncode == 0, result.stderr
    out = result.stdout
    page = tmp_path / "interplm_demo" / "index.html"
    assert "interplm_demo/index.html" in out and "best concept" in out
    html = page.read_text()
    images = re.findall(r'src="([^"]+\.png)"', html)
    assert len(images) >= 4
    assert "best Swiss-Prot concept match" in html
    import matplotlib.image as mpimg

    structure_pngs = [p for p in images if "profile" not in p]
    for name in structure_pngs:
        pixels = mpimg.imread(page.parent / name)[..., :3]
        colours = np.unique((pixels * 255).astype(np.uint8).reshape(-1, 3), axis=0)
        assert len(colours) > 100, name  # shaded, coloured structure, not a blank frame
        red = (pixels[..., 0] > 0.7) & (pixels[..., 1] < 0.4) & (pixels[..., 2] < 0.4)
        assert red.sum() > 50, name  # the feature's strongest residues are drawn red
