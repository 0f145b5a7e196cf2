"""Steering: the intervention equals a hand-made forward pass with (delta * decoder column) added,
leaving a feature at its own value changes nothing, and clamping moves predictions the expected way."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from interplm_plugins.cli import main
from interplm_plugins.core.interpret.steer import feature_logit_gradients, sample_steered, steer
from interplm_plugins.core.sae.files import save_sae
from interplm_plugins.core.sae.model import SAEConfig, SparseAutoencoder
from interplm_plugins.errors import InterPLMError

SEQ = "MKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQAPILSRVGDGTQDNLSGAEKAVQVKVKALPDAQ"


def known_sae(dim: int, layer: int, feature: int = 2, seed: int = 0) -> SparseAutoencoder:
    """A ReLU SAE whose ``feature`` has a known unit decoder direction and fires on every residue."""
    g = torch.Generator().manual_seed(seed)
    sae = SparseAutoencoder(SAEConfig(d_in=dim, d_hidden=6, kind="relu", plm_layer=layer), generator=g).eval()
    direction = torch.randn(dim, generator=g)
    direction /= direction.norm()
    with torch.no_grad():
        sae.decoder.weight[:, feature] = direction
        sae.encoder.weight[feature] = direction
        sae.encoder.bias[feature] = 10.0  # active everywhere, so "before" is a real positive value
    return sae


def manual_logits(model, tokens: torch.Tensor, layer: int, position: int, delta: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """fair-esm's ESM2.forward written out, adding ``delta`` to layer ``layer``'s representation at
    ``position``; returns (logits[0], that representation before the addition)."""
    x = model.embed_scale * model.embed_tokens(tokens)
    is_mask = tokens == model.mask_idx
    x = x.masked_fill(is_mask.unsqueeze(-1), 0.0)
    observed = is_mask.sum(-1).to(x.dtype) / tokens.shape[1]
    x = x * (1 - 0.15 * 0.8) / (1 - observed)[:, None, None]
    x = x.transpose(0, 1)
    seen = None
    for i, block in enumerate(model.layers, 1):
        x, _ = block(x, self_attn_padding_mask=None)
        if i == layer and layer < model.num_layers:
            seen = x[position, 0].clone()
            if delta is not None:
                x[position, 0] += delta
    x = model.emb_layer_norm_after(x)
    if layer == model.num_layers:
        seen = x[position, 0].clone()
        if delta is not None:
            x[position, 0] += delta
    return model.lm_head(x.transpose(0, 1))[0], seen


@pytest.mark.parametrize("layer", [1, 2])
@pytest.mark.parametrize("mask", [False, True])
@torch.no_grad()
def test_clamp_equals_hand_forward_with_decoder_direction_added(tiny_plm, layer, mask):
    sae, feature, position, value = known_sae(tiny_plm.embed_dim, layer), 2, 7, 40.0
    result = steer(tiny_plm, sae, layer, SEQ, feature, value=value, positions=[position], mask=mask)

    tokens = tiny_plm.alphabet.get_batch_converter()([("s", SEQ)])[2]
    if mask:
        tokens[0, position] = tiny_plm.alphabet.mask_idx
    clean, x = manual_logits(tiny_plm.model, tokens, layer, position, None)
    # the feature's activation by hand: relu(w_j . (x - b_dec) + b_j)
    f_before = torch.relu(sae.encoder.weight[feature] @ (x - sae.bias) + sae.encoder.bias[feature])
    delta = (value - f_before) * sae.decoder.weight[:, feature]
    steered, _ = manual_logits(tiny_plm.model, tokens, layer, position, delta)

    assert result.positions == [position] and result.masked is mask
    assert result.activation_before[0] == pytest.approx(float(f_before), rel=1e-5)
    assert result.activation_after[0] == value
    np.testing.assert_allclose(result.logits_before[0], clean[position].numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(result.logits_after[0], steered[position].numpy(), rtol=1e-5, atol=1e-6)
    change = np.abs(result.logits_after - result.logits_before).max()
    assert change > 1e-3  # measurable, not rounding noise
    assert result.kl[0] > 0 and np.allclose(result.probs_after.sum(-1), 1.0)


@torch.no_grad()
def test_value_equal_to_current_activation_changes_nothing(tiny_plm):
    sae = known_sae(tiny_plm.embed_dim, 1)
    first = steer(tiny_plm, sae, 1, SEQ, 2, value=0.0, positions=[3, 4, 5])
    same = steer(tiny_plm, sae, 1, SEQ, 2, scale=1.0, positions=[3, 4, 5])
    np.testing.assert_array_equal(same.logits_after, same.logits_before)
    np.testing.assert_array_equal(same.kl, np.zeros(3))
    np.testing.assert_array_equal(same.activation_after, first.activation_before)
    # clamping each position to its own activation is also no change at all
    for i, pos in enumerate([3, 4, 5]):
        own = steer(tiny_plm, sae, 1, SEQ, 2, value=float(first.activation_before[i]), positions=[pos])
        np.testing.assert_allclose(own.logits_after, own.logits_before, atol=1e-6)


def test_scale_multiplies_the_activation(tiny_plm):
    sae = known_sae(tiny_plm.embed_dim, 2)
    result = steer(tiny_plm, sae, 2, SEQ, 2, scale=3.0, positions=[1, 2])
    np.testing.assert_allclose(result.activation_after, 3.0 * result.activation_before, rtol=1e-6)
    assert (result.activation_before > 0).all()


@pytest.fixture(params=["random", "normalised"])
def model_and_sae(request, tiny_plm, tiny_sae_path):
    """(plm, sae, layer, clamp value): a random SAE, and the conftest's real normalised SAE, whose
    activations lie in [0, 1] (so clamping to 5 is five times its strongest activation)."""
    if request.param == "normalised":
        from interplm_plugins.core.sae.files import load_sae

        return tiny_plm, load_sae(tiny_sae_path).eval(), 2, 5.0
    g = torch.Generator().manual_seed(3)
    sae = SparseAutoencoder(SAEConfig(d_in=tiny_plm.embed_dim, d_hidden=64, kind="relu", plm_layer=2), generator=g).eval()
    return tiny_plm, sae, 2, 30.0


@torch.no_grad()
def test_clamping_the_feature_that_most_raises_a_residue_raises_its_probability(model_and_sae):
    plm, sae, layer, value = model_and_sae
    position = 20
    grads = feature_logit_gradients(plm, sae, layer, SEQ, position)  # [F, V]
    residue_ids = [plm.alphabet.get_idx(aa) for aa in "ACDEFGHIKLMNPQRSTVWY"]
    # relative to the other residues: a logit gain shared by all residues changes nothing
    relative = grads[:, residue_ids] - grads[:, residue_ids].mean(axis=1, keepdims=True)
    feature, which = np.unravel_index(np.argmax(relative), relative.shape)
    residue = "ACDEFGHIKLMNPQRSTVWY"[which]
    result = steer(plm, sae, layer, SEQ, int(feature), value=value, positions=[position], mask=True)
    gain = result.probability_change(residue)[0]
    p_before = result.probs_before[0, residue_ids[which]]
    assert gain > 0.05 * p_before  # measurable: a 5% relative rise at least, far above float noise
    assert result.kl[0] > 1e-4
    others = [result.probability_change(aa)[0] for aa in "ACDEFGHIKLMNPQRSTVWY" if aa != residue]
    assert gain > np.median(others)
    # and a stronger clamp pushes further the same way
    stronger = steer(plm, sae, layer, SEQ, int(feature), value=2 * value, positions=[position], mask=True)
    assert stronger.probability_change(residue)[0] > gain


@pytest.mark.parametrize("layer", [1, 2])
def test_logit_gradients_match_a_small_clamp(tiny_plm, layer):
    sae = known_sae(tiny_plm.embed_dim, layer)
    grads = feature_logit_gradients(tiny_plm, sae, layer, SEQ, 9)
    base = steer(tiny_plm, sae, layer, SEQ, 2, scale=1.0, positions=[9], mask=True)
    # a central difference: a one-sided one carries the head's curvature (GELU, layer norm) as an
    # O(eps) error; this one's error is O(eps^2), far below the tolerance
    eps, now = 0.1, float(base.activation_before[0])
    up = steer(tiny_plm, sae, layer, SEQ, 2, value=now + eps, positions=[9], mask=True).logits_after[0]
    down = steer(tiny_plm, sae, layer, SEQ, 2, value=now - eps, positions=[9], mask=True).logits_after[0]
    np.testing.assert_allclose((up - down) / (2 * eps), grads[2], rtol=0.02, atol=5e-3 * np.abs(grads[2]).max())


def test_sampling_changes_only_the_positions_and_is_reproducible(tiny_plm):
    sae = known_sae(tiny_plm.embed_dim, 1)
    positions = [4, 5, 6]
    a = sample_steered(tiny_plm, sae, 1, SEQ, 2, positions, value=40.0, n=3, temperature=1.0, seed=7)
    b = sample_steered(tiny_plm, sae, 1, SEQ, 2, positions, value=40.0, n=3, temperature=1.0, seed=7)
    assert a == b and len(a) == 3
    for sample in a:
        assert len(sample) == len(SEQ)
        assert all(sample[i] == SEQ[i] for i in range(len(SEQ)) if i + 1 not in positions)
        assert set(sample) <= set("ACDEFGHIKLMNPQRSTVWY")
    assert len({s[3:6] for s in a}) > 1  # temperature 1 on a near-uniform model: different draws


def test_bad_requests_name_the_problem(tiny_plm):
    sae = known_sae(tiny_plm.embed_dim, 1)
    with pytest.raises(InterPLMError, match="position 99 is outside the sequence"):
        steer(tiny_plm, sae, 1, SEQ, 2, value=1.0, positions=[99])
    with pytest.raises(InterPLMError, match="feature 6 does not exist"):
        steer(tiny_plm, sae, 1, SEQ, 6, value=1.0)
    with pytest.raises(InterPLMError, match="exactly one of value"):
        steer(tiny_plm, sae, 1, SEQ, 2, value=1.0, scale=2.0)
    with pytest.raises(InterPLMError, match="trained on layer 1, not layer 2"):
        steer(tiny_plm, sae, 2, SEQ, 2, value=1.0)
    with pytest.raises(InterPLMError, match="invalid character"):
        steer(tiny_plm, sae, 1, "MKT1A", 2, value=1.0)


@pytest.fixture
def saved_sae(tmp_path, tiny_plm):
    return save_sae(known_sae(tiny_plm.embed_dim, 2), tmp_path / "sae.safetensors")


def test_cli_prints_the_table_and_samples(tiny_esm2_path, saved_sae, capsys):
    code = main(
        ["-q", "steer", SEQ, "--plm", str(tiny_esm2_path), "--sae", str(saved_sae), "--feature", "2",
         "--value", "40", "--positions", "10,11,12", "--mask", "--sample", "2", "--seed", "1"]
    )  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0
    lines = out.splitlines()
    assert any(line.split()[:2] == ["10", "Y"] or line.split()[:2] == ["10", SEQ[9]] for line in lines)
    assert sum(1 for line in lines if line.strip().startswith(("11 ", "12 "))) == 2
    samples = [line.split()[-1] for line in lines if line.startswith("sample ")]
    assert len(samples) == 2 and all(len(s) == len(SEQ) for s in samples)


def test_cli_error_is_one_line_with_exit_2(tiny_esm2_path, saved_sae):
    proc = subprocess.run(
        [sys.executable, "-m", "interplm_plugins.cli", "steer", SEQ, "--plm", str(tiny_esm2_path), "--sae", str(saved_sae),
         "--feature", "2", "--value", "1", "--positions", "500"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0
    assert "position 500 is outside the sequence" in proc.stderr and "Traceback" not in proc.stderr
