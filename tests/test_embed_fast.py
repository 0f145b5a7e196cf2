"""The fused ESM-2 block (one q/k/v product, complex rotary, fused attention and GELU) on packed
sequences equals fair-esm's own forward pass, steps aside for hooked blocks, and follows weight changes."""

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
    real = tokens.ne(plm.alphabet.padding_idx)
    for layer in layers:
        torch.testing.assert_close(ours[layer][real], ref[layer][real], rtol=1e-5, atol=1e-5)


def test_hooked_block_goes_through_fair_esm(plm):
    tokens = _tokens(plm)
    seen = []
    handle = plm.model.layers[1].register_forward_hook(lambda module, args, out: seen.append(out[0].shape))
    try:
        assert not _fast_path_ok(plm.model.layers[1])
        with torch.no_grad():
            ours = forward_layers(plm, tokens, [2, 3])
            ref = plm.model(tokens, repr_layers=[2, 3])["representations"]
    finally:
        handle.remove()
    assert seen[0] == (tokens.shape[1], tokens.shape[0], plm.embed_dim)  # fair-esm's time-first layout
    real = tokens.ne(plm.alphabet.padding_idx)
    for layer in (2, 3):  # the padded detour and back into packed rows loses nothing
        torch.testing.assert_close(ours[layer][real], ref[layer][real], rtol=1e-5, atol=1e-5)


def test_packed_sequences_equal_each_sequence_alone(plm):
    """Sequences end to end (two of one length, attended as one run), plus tail rows of padding:
    every sequence's rows equal fair-esm's forward pass of that sequence alone."""
    from interplm_plugins.core.plm.embed import Packing, forward_packed

    sequences = ["MKTAYIAKQRQISFVKSHFSRQLEERLG", "MXUOBZACDE", "ACDEFGHIKL", "<mask>KTAYIA<mask>"]
    convert = plm.alphabet.get_batch_converter()
    alone = [convert([("x", s)])[2][0] for s in sequences]
    packing = Packing(tuple(len(t) for t in alone), tail=5)
    assert packing.runs() == [(0, 1, 30), (30, 2, 12), (54, 1, len(alone[3]))]
    tokens = torch.cat([*alone, torch.full((5,), plm.alphabet.padding_idx)])
    layers = list(range(plm.num_layers + 1))
    with torch.no_grad():
        ours = forward_packed(plm, tokens, packing, layers)
        for first, single in zip(packing.starts(), alone):
            ref = plm.model(single[None], repr_layers=layers)["representations"]
            for layer in layers:
                torch.testing.assert_close(ours[layer][first : first + len(single)], ref[layer][0], rtol=1e-5, atol=1e-5)
    assert all(rows.shape == (packing.rows, plm.embed_dim) for rows in ours.values())


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
    real = tokens.ne(plm.alphabet.padding_idx)
    assert not torch.allclose(changed, before)
    torch.testing.assert_close(changed[real], ref[real], rtol=1e-5, atol=1e-5)


def test_batch_lengths_come_from_a_short_ladder():
    """Batches past 128 tokens are padded to one of 24 lengths, so oneDNN caches at most 150 shapes, not one per length."""
    from interplm_plugins.core.plm.embed import padded_length

    lengths = {padded_length(t) for t in range(3, 1025)}
    assert len(lengths) == 150 and max(lengths) == 1024
    for t in range(3, 1025):
        assert t <= padded_length(t) <= (t if t <= 128 else t + t // 8)
