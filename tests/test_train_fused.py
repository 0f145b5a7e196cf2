"""The hand-written ReLU SAE step equals autograd's, and training state stays exactly resumable."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from interplm_plugins.core.sae.model import SAEConfig, SparseAutoencoder
from interplm_plugins.core.sae.train import SPARSE_RELU_MAX_DENSITY, TrainConfig, make_training_state, relu_loss_and_grads, train_step, weighted_l1


def _autograd(sae: SparseAutoencoder, x: torch.Tensor, l1: float):
    f = torch.relu(sae.pre_activations(x))
    x_hat = sae.decode(f)
    mse = (x - x_hat).pow(2).sum(dim=-1).mean()
    loss = mse + l1 * weighted_l1(f, sae.decoder.weight)
    sae.zero_grad(set_to_none=True)
    loss.backward()
    return loss.detach(), {name: p.grad.clone() for name, p in sae.named_parameters()}, f.detach()


@pytest.mark.parametrize("sparse", [False, True])
@pytest.mark.parametrize("batch", [1, 7, 64])
def test_hand_written_gradients_equal_autograd(batch, sparse):
    """Both ways of computing the products after the encoder's: dense, and over f's nonzero entries."""
    torch.manual_seed(batch)
    sae = SparseAutoencoder(SAEConfig(d_in=12, d_hidden=40, kind="relu"), generator=torch.Generator().manual_seed(0)).double()
    with torch.no_grad():
        sae.bias.normal_()
        sae.encoder.bias.normal_(std=0.2)
        sae.decoder.weight.mul_(torch.rand(40, dtype=torch.float64) * 3)  # unequal column norms
    x = torch.randn(batch, 12, dtype=torch.float64)
    loss, grads, f = _autograd(sae, x, 0.3)
    assert 0 < float((f > 0).double().mean()) < 1
    workspace: dict = {}
    for _ in range(2):  # the second call reuses the workspace buffers
        out = relu_loss_and_grads(sae, x, 0.3, workspace, sparse=sparse)
        torch.testing.assert_close(out["loss"], loss)
        torch.testing.assert_close(out["f_sum"], f.sum(dim=0))
        assert float(out["l0"]) == float((f > 0).sum()) / batch  # (counted from f's bits: exact)
        for name, p in sae.named_parameters():
            torch.testing.assert_close(p.grad, grads[name], msg=name)


def test_few_active_features_take_the_sparse_products():
    """Under SPARSE_RELU_MAX_DENSITY active, the default is the sparse path: the same numbers as
    the dense path (float32 sums in another order), and as autograd; a dense f keeps dense products."""
    generator = torch.Generator().manual_seed(3)
    sae = SparseAutoencoder(SAEConfig(d_in=32, d_hidden=512, kind="relu"), generator=generator)
    x = torch.randn(256, 32, generator=generator)
    for shift, sparse in ((-0.2, True), (0.0, False)):
        with torch.no_grad():
            sae.encoder.bias.fill_(shift)
        density = float((sae.pre_activations(x) > 0).float().mean())
        assert (density < SPARSE_RELU_MAX_DENSITY["fp32"]) == sparse and density > 0.002, density
        results = {}
        for mode in (None, not sparse):
            out = relu_loss_and_grads(sae, x, 0.3, {}, sparse=mode)
            results[mode] = (out, {name: p.grad.clone() for name, p in sae.named_parameters()})
        loss, grads, _ = _autograd(sae, x, 0.3)
        chosen, other = results[None], results[not sparse]
        for name in grads:
            torch.testing.assert_close(chosen[1][name], other[1][name], rtol=1e-5, atol=1e-6, msg=name)
            torch.testing.assert_close(chosen[1][name], grads[name], rtol=1e-4, atol=1e-6, msg=name)
        assert float(chosen[0]["l0"]) == float(other[0]["l0"])
        torch.testing.assert_close(chosen[0]["loss"], loss)
        # (identical results cannot tell which path ran: the products' float32 sums can)
        assert not all(torch.equal(chosen[1][name], other[1][name]) for name in grads)


def test_train_step_reduces_loss_and_is_deterministic():
    x = torch.randn(256, 16, generator=torch.Generator().manual_seed(1))
    runs = []
    for _ in range(2):
        state = make_training_state(SAEConfig(d_in=16, d_hidden=64, kind="relu", l1_coefficient=0.01), TrainConfig(steps=40, batch_size=256, warmup_steps=2))
        log = [train_step(state, x) for _ in range(40)]
        runs.append((log, {k: v.clone() for k, v in state.sae.state_dict().items()}))
    (log, weights), (_, again) = runs
    assert log[-1]["mse"] < 0.9 * log[0]["mse"]
    assert {"loss", "mse", "l1", "l0", "dead_fraction", "lr", "step"} <= set(log[-1])
    for key in weights:
        assert torch.equal(weights[key], again[key])


def test_checkpointed_state_resumes_bit_for_bit():
    """Stop after 5 steps, rebuild from state_dict, continue: equal to 10 uninterrupted steps."""
    rng = np.random.default_rng(0)
    batches = [torch.from_numpy(rng.normal(size=(128, 16)).astype(np.float32)) for _ in range(10)]
    configs = (SAEConfig(d_in=16, d_hidden=48, kind="relu", l1_coefficient=0.05), TrainConfig(steps=10, batch_size=128, warmup_steps=2, resample_every=3, dead_after_tokens=128))
    full = make_training_state(*configs)
    for x in batches:
        train_step(full, x)
    first = make_training_state(*configs)
    for x in batches[:5]:
        train_step(first, x)
    resumed = make_training_state(*configs)
    resumed.load_state_dict(first.state_dict())
    for x in batches[5:]:
        train_step(resumed, x)
    for key, value in full.sae.state_dict().items():
        assert torch.equal(value, resumed.sae.state_dict()[key]), key
