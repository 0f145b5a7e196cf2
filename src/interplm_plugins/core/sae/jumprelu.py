"""JumpReLU sparse autoencoders (Rajamanoharan et al. 2024; InterPLM's, SAELens' and dictionary_learning's).

A feature fires only above its own learned threshold: ``f_i = pre_i * H(pre_i - theta_i)``, with
``pre`` the encoder output and ``H`` the step function. Training minimises
``|x - x_hat|^2 + l0_coefficient * ||f||_0``; the step has no useful gradient, so both the
JumpReLU and the L0 count get the straight-through pseudo-derivatives of the paper with respect to
the thresholds (a rectangle kernel of width ``bandwidth`` around each threshold), while the
inputs get the plain derivative of ``pre * H(pre - theta)``.

The thresholds live in the SAE's ``threshold`` parameter ``[d_hidden]`` in the units of the
*unnormalised* pre-activations (``pre * activation_scale``), so normalisation
(:mod:`interplm_plugins.core.sae.normalize`) leaves them as they are; ``bandwidth`` (a scalar buffer)
is set with them at the first training step, relative to the inputs' scale.

A step's straight-through gradients are nonzero only at the entries that fire and in the
thresholds' band (``|pre - threshold| < bandwidth / 2``), so on a CPU training runs its products
over those alone once few enough entries are there, as in a trained JumpReLU SAE
(:func:`~interplm_plugins.core.sae.sparse_topk.jumprelu_forward`, with :func:`straight_through_l0`
for the L0 term).
"""

from __future__ import annotations

import torch

#: Threshold and bandwidth at the start, in units of the RMS norm of the first batch's inputs
#: (0.001 on inputs normalised to unit norm, as in the paper's Appendix I and InterPLM).
INITIAL_THRESHOLD = 1e-3
BANDWIDTH = 1e-3


def _kernel(pre: torch.Tensor, threshold: torch.Tensor, bandwidth: torch.Tensor) -> torch.Tensor:
    """Rectangle kernel ``K((pre - threshold) / bandwidth) / bandwidth`` (the step's pseudo-derivative)."""
    return ((pre - threshold).abs() < bandwidth / 2).to(pre.dtype) / bandwidth


class _JumpReLU(torch.autograd.Function):
    """``pre * H(pre - threshold)``; d/d threshold = ``-threshold * K(...)`` (straight-through)."""

    @staticmethod
    def forward(ctx, pre, threshold, bandwidth):  # noqa: D102 - autograd protocol
        ctx.save_for_backward(pre, threshold, bandwidth)
        return pre * (pre > threshold)

    @staticmethod
    def backward(ctx, grad):  # noqa: D102
        pre, threshold, bandwidth = ctx.saved_tensors
        grad_pre = grad * (pre > threshold)
        grad_threshold = (-(threshold * _kernel(pre, threshold, bandwidth)) * grad).reshape(-1, pre.shape[-1]).sum(dim=0)
        return grad_pre, grad_threshold, None


class _Step(torch.autograd.Function):
    """``H(pre - threshold)``; d/d threshold = ``-K(...)``, d/d pre = 0 (straight-through)."""

    @staticmethod
    def forward(ctx, pre, threshold, bandwidth):  # noqa: D102
        ctx.save_for_backward(pre, threshold, bandwidth)
        return (pre > threshold).to(pre.dtype)

    @staticmethod
    def backward(ctx, grad):  # noqa: D102
        pre, threshold, bandwidth = ctx.saved_tensors
        grad_threshold = (-_kernel(pre, threshold, bandwidth) * grad).reshape(-1, pre.shape[-1]).sum(dim=0)
        return torch.zeros_like(pre), grad_threshold, None


def jumprelu_inference(pre: torch.Tensor, ranking: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
    """Activations of (possibly normalised) pre-activations ``pre``, thresholded on the unnormalised ``ranking``."""
    return torch.relu(pre) * (ranking > threshold)


def jumprelu_training(pre: torch.Tensor, threshold: torch.Tensor, bandwidth: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(activations, mean L0 per row)`` with the straight-through gradients (training, unnormalised SAE)."""
    f = _JumpReLU.apply(torch.relu(pre), threshold, bandwidth)  # ReLU first: a threshold below 0 is a plain ReLU
    l0 = _Step.apply(pre, threshold, bandwidth).sum(dim=-1).mean()
    return f, l0


class _StraightThroughL0(torch.autograd.Function):
    """The L0 term's value (counted outside), with :class:`_Step`'s threshold gradient from band counts."""

    @staticmethod
    def forward(ctx, threshold, l0, band_counts, bandwidth, rows):  # noqa: D102
        ctx.save_for_backward(band_counts, bandwidth)
        ctx.rows = rows
        return l0.clone()

    @staticmethod
    def backward(ctx, grad):  # noqa: D102
        band_counts, bandwidth = ctx.saved_tensors
        return -grad * band_counts / (bandwidth * ctx.rows), None, None, None, None


def straight_through_l0(threshold: torch.Tensor, bandwidth: torch.Tensor, l0: torch.Tensor, band_counts: torch.Tensor, rows: int) -> torch.Tensor:
    """:func:`jumprelu_training`'s L0 term from counts made outside: value ``l0`` (the mean over
    ``rows`` of the entries above their threshold) and threshold gradient ``-band_counts / (bandwidth * rows)``
    (``band_counts`` ``[d_hidden]``: per feature the rows within half a bandwidth of its threshold)."""
    return _StraightThroughL0.apply(threshold, l0, band_counts, bandwidth, rows)


@torch.no_grad()
def initialise_thresholds(sae, x: torch.Tensor) -> None:
    """Set the thresholds and the bandwidth from the scale of a first batch ``x`` (see the constants)."""
    scale = x.pow(2).sum(dim=-1).mean().sqrt().clamp_min(1e-6)
    sae.threshold.fill_(float(INITIAL_THRESHOLD * scale))
    sae.bandwidth.fill_(float(BANDWIDTH * scale))
