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

:func:`jumprelu_training` is the definition, in autograd; training runs the same gradients
written out by hand (:func:`~interplm_plugins.core.sae.train.jumprelu_loss_and_grads`, ReLU's
products), where the thresholds' gradient needs values only in their band
(``|pre - threshold| < bandwidth / 2``,
:func:`~interplm_plugins.core.sae.sparse_topk.jumprelu_band`).
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
    """``(activations, mean L0 per row)`` with the straight-through gradients (training, unnormalised
    SAE): the autograd definition that the hand-written training step is tested against."""
    f = _JumpReLU.apply(torch.relu(pre), threshold, bandwidth)  # ReLU first: a threshold below 0 is a plain ReLU
    l0 = _Step.apply(pre, threshold, bandwidth).sum(dim=-1).mean()
    return f, l0


@torch.no_grad()
def initialise_thresholds(sae, x: torch.Tensor) -> None:
    """Set the thresholds and the bandwidth from the scale of a first batch ``x`` (see the constants)."""
    scale = x.pow(2).sum(dim=-1).mean().sqrt().clamp_min(1e-6)
    sae.threshold.fill_(float(INITIAL_THRESHOLD * scale))
    sae.bandwidth.fill_(float(BANDWIDTH * scale))
