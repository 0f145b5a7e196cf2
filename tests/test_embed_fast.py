"""The fused ESM-2 block (one q/k/v product, complex rotary, fused attention and GELU) equals
fair-esm's own forward pass, steps aside for hooked blocks, and follows weight changes."""

from __future__ import annotations

import pytest
import torch

from interplm_plugins.core.plm.embed import _fast_path_ok, forward_layers
from interplm_plugins.core.plm.model import PLM, new_esm2


@pytest.fixture(scope="module")
def plm():
    from esm.data import Alphabet

    model = new_esm2(3, 64, 8, seed=1)
    with torch.no_grad():  # weights of realistic size, not the tiny init: differences would show
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return PLM(model, Alphabet.from_architecture("ESM-1b"), "esm2_t3_test", "memory", "esm2_t3_test:1")


def _tokens(plm):
    seqs = [("a", "MKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQAPILSRVGDGTQDNLSGAEKAVQVKVKALPDAQ"), ("b", "MXUOBZACDE"), ("c", "<mask>KTAY")]
    return plm.alphabet.get_batch_converter()(seqs)[2]


def test_every_layer_equals_fair_esm_with_padding_and_masks(plm):
    assert all(_fast_path_ok(layer) for layer in plm.model.layers)
    tokens = _tokens(plm)
    layers = list(range(plm.num_layers + 1))
    with torch.no_grad():
        ref = plm.model(tokens, repr_layers=layers)["representations"]
        ours = forward_layers(plm, tokens, layers)
    for layer in layers:
        torch.testing.assert_close(ours[layer], ref[layer], rtol=1e-5, atol=1e-5)


def test_hooked_block_goes_through_fair_esm(plm):
    tokens = _tokens(plm)
    seen = []
    handle = plm.model.layers[1].register_forward_hook(lambda module, args, out: seen.append(out[0].shape))
    try:
        assert not _fast_path_ok(plm.model.layers[1])
        with torch.no_grad():
            forward_layers(plm, tokens, [2])
    finally:
        handle.remove()
    assert seen == [(tokens.shape[1], tokens.shape[0], plm.embed_dim)]  # fair-esm's time-first layout


def test_cached_projection_follows_weight_changes(plm):
    tokens = _tokens(plm)
    attn = plm.model.layers[0].self_attn
    with torch.no_grad():
        before = forward_layers(plm, tokens, [1])[1].clone()
        attn.q_proj.weight.mul_(1.5)
        try:
            changed = forward_layers(plm, tokens, [1])[1]
            ref = plm.model(tokens, repr_layers=[1])["representations"][1]
        finally:
            attn.q_proj.weight.div_(1.5)
    assert not torch.allclose(changed, before)
    torch.testing.assert_close(changed, ref, rtol=1e-5, atol=1e-5)


def test_batch_lengths_come_from_a_short_ladder():
    """Batches past 128 tokens are padded to one of 24 lengths, so oneDNN caches at most 150 shapes, not one per length."""
    from interplm_plugins.core.plm.embed import padded_length

    lengths = {padded_length(t) for t in range(3, 1025)}
    assert len(lengths) == 150 and max(lengths) == 1024
    for t in range(3, 1025):
        assert t <= padded_length(t) <= (t if t <= 128 else t + t // 8)
