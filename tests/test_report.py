"""The SAE-vs-neuron comparison on planted neurons: signed neurons, validation-only scaling, InterPLM's F1 > cutoff."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from interplm_plugins.core.concepts import Eligibility
from interplm_plugins.core.concepts.report import compare_units
from interplm_plugins.core.sae.encode import encode_features
from interplm_plugins.core.sae.model import SAEConfig, SparseAutoencoder

from conftest import alternate_halves

DIM = 8


@pytest.fixture(scope="module")
def planted(swissprot_entries):
    """Real Swiss-Prot helix labels; embeddings where neuron 3 goes *negative* on helices and is 0 elsewhere."""
    halves = alternate_halves(swissprot_entries[:120], min_instances=5, min_proteins=2)
    labels = halves.valid
    helix = labels.names.index("Helix")
    rng = np.random.default_rng(0)
    embeddings = {}
    for pid, sequence in halves.sequences.items():
        in_helix = halves.labels(halves.half(pid)).dense(pid)[:, helix] > 0
        emb = rng.normal(0.0, 0.05, size=(len(sequence), DIM)).astype(np.float32)
        emb[:, 3] = np.where(in_helix, -2.0, 0.0)
        embeddings[pid] = emb
    sae = SparseAutoencoder(SAEConfig(d_in=DIM, d_hidden=16, kind="relu"), generator=torch.Generator().manual_seed(0)).eval()
    return halves, embeddings, sae


def _compare(halves, embeddings, sae):
    def source(records):
        for record in records:
            yield record.id, embeddings[record.id]

    return compare_units(halves, source, lambda emb: encode_features(sae, emb), 16, DIM, Eligibility(2, 2))


def test_a_neuron_that_fires_negatively_is_found(planted):
    comparison = _compare(*planted)
    helix = comparison.neurons.set_index("concept").loc["Helix"]
    assert helix["feature"] == DIM + 3  # the negative part of neuron 3
    assert helix["test_f1"] == pytest.approx(1.0)
    assert comparison.joined().set_index("concept").loc["Helix", "neuron"] == "3-"


def test_units_are_scaled_on_validation_proteins_only(planted):
    halves, embeddings, sae = planted
    comparison = _compare(halves, embeddings, sae)
    valid = np.concatenate([embeddings[p] for p in halves.valid.proteins])
    by_hand = np.concatenate([np.maximum(valid, 0).max(axis=0), np.maximum(-valid, 0).max(axis=0)])
    np.testing.assert_allclose(comparison.scales["neurons"], by_hand, rtol=1e-6)
    # A huge value on a test protein changes no scale (and so no validation choice).
    loud = dict(embeddings)
    pid = halves.test.proteins[0]
    loud[pid] = embeddings[pid].copy()
    loud[pid][0, 5] = 1e3
    again = _compare(halves, loud, sae)
    np.testing.assert_array_equal(again.scales["neurons"], comparison.scales["neurons"])
    np.testing.assert_array_equal(again.scales["sae"], comparison.scales["sae"])
    assert again.neurons["feature"].tolist() == comparison.neurons["feature"].tolist()


def test_concepts_found_are_counted_above_the_cutoff_as_interplm(planted):
    comparison = _compare(*planted)
    summary = comparison.summary()
    rows = comparison.joined()
    assert summary["neuron_concepts_above_cutoff"] == int((rows["neuron_test_f1"] > 0.5).sum())
    for entry in summary["concepts_found_by_cutoff"]:
        assert entry["sae"] == int((rows["sae_test_f1"] > entry["f1_cutoff"]).sum())
    # A concept at exactly the cutoff is not counted.
    comparison.neurons.loc[comparison.neurons["concept"] == "Helix", "test_f1"] = 0.5
    assert comparison.neuron_concepts_found == summary["neuron_concepts_above_cutoff"] - 1
    assert "Helix" in set(rows["concept"]) and summary["halves"] and summary["eligibility"].startswith(">= 2 proteins")
