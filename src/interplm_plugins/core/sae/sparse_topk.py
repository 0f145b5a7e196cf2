"""TopK SAE training with sparse products: only the encoder's forward product is dense.

A TopK SAE keeps ``k`` of ``d_hidden`` features per residue (32 of 10,240 in the benchmarks), yet
autograd through ``decoder(zeros.scatter(top))`` runs five more dense ``[B, d_in] x [d_in, d_hidden]``
products: the decoder's forward, both of its backward products, and the encoder's two backward
products (its gradient is zero outside the kept entries). Here the dense encoder output is used only
to *choose* the kept features (no autograd), and one :class:`torch.autograd.Function` computes the
reconstruction and its exact gradients from the ``B x k`` kept entries, as CSR products
(``torch.sparse``): the decoder's forward, the gradient of the kept activations
(``sampled_addmm``), and the weight and input gradients of both layers. Per step this cuts six dense
products to one, and a ``[B, d_hidden]`` gradient never exists.

The values are the dense path's: each kept activation is ``relu`` of the encoder output at that
entry, in the compute precision (bf16: the encoder product in bfloat16, as autocast would run it);
the sparse products run in float32. Gradients equal autograd's through the dense path up to the
order of float32 sums (``tests/test_sae_kinds.py``).
"""

from __future__ import annotations

import warnings
from typing import NamedTuple

import torch

from interplm_plugins.core.plm.precision import compute_precision
from interplm_plugins.core.sae.model import SparseAutoencoder


# torch warns once that CSR support is "in beta"; the few CSR operations used here are tested.
warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta", category=UserWarning)


class TopKForward(NamedTuple):
    """What one TopK training forward pass leaves: the reconstruction (with the pre-encoder bias,
    differentiable), the kept features ``[B, k]`` (column-sorted) and their activations (detached),
    the dense pre-activations (no gradient; for AuxK's choice of dead features) and the centred
    input ``x - bias`` they came from (differentiable; AuxK's products start from it too)."""

    reconstruction: torch.Tensor
    indices: torch.Tensor
    activations: torch.Tensor
    pre: torch.Tensor
    centred: torch.Tensor


def _rows(indices: torch.Tensor, values: torch.Tensor, width: int) -> torch.Tensor:
    """The ``[B, width]`` CSR matrix with ``values[b, j]`` at column ``indices[b, j]`` (sorted per row)."""
    n, k = indices.shape
    crow = torch.arange(0, n * k + 1, k, dtype=torch.int64, device=indices.device)
    return torch.sparse_csr_tensor(crow, indices.reshape(-1), values.reshape(-1), (n, width), check_invariants=False)


class _KeptReconstruction(torch.autograd.Function):
    """``sum_j relu(pre[b, i_bj]) W_dec[:, i_bj]`` with ``pre = xc @ W_enc.T + b_enc``, from the
    kept entries' values ``kept_pre`` (computed outside, without autograd); returns the
    reconstruction and the activations, and back-propagates into ``xc``, both weights and ``b_enc``."""

    @staticmethod
    def forward(ctx, xc, enc_weight, enc_bias, dec_weight, indices, kept_pre):  # noqa: ARG004 (enc_bias: gradient only)
        activations = torch.relu(kept_pre)
        reconstruction = _rows(indices, activations, dec_weight.shape[1]) @ dec_weight.t()
        ctx.save_for_backward(xc, enc_weight, dec_weight, indices, activations)
        return reconstruction, activations

    @staticmethod
    def backward(ctx, grad_reconstruction, grad_activations):
        xc, enc_weight, dec_weight, indices, activations = ctx.saved_tensors
        width = dec_weight.shape[1]
        grad_reconstruction = grad_reconstruction.contiguous()
        pattern = _rows(indices, torch.zeros_like(activations), width)
        # d loss / d activation at each kept entry: <grad_reconstruction[b], W_dec[:, i_bj]>
        grad_kept = torch.sparse.sampled_addmm(pattern, grad_reconstruction, dec_weight, beta=0.0).values().view_as(activations)
        if grad_activations is not None:
            grad_kept = grad_kept + grad_activations
        grad_pre = grad_kept * (activations > 0)
        grad_dec = (_rows(indices, activations, width).t() @ grad_reconstruction).t()
        pre_rows = _rows(indices, grad_pre, width)
        grad_xc = pre_rows @ enc_weight
        grad_enc_weight = pre_rows.t() @ xc
        grad_enc_bias = torch.zeros(width, dtype=grad_pre.dtype, device=grad_pre.device).index_add_(0, indices.reshape(-1), grad_pre.reshape(-1))
        return grad_xc, grad_enc_weight, grad_enc_bias, grad_dec, None, None


def kept_reconstruction(
    sae: SparseAutoencoder, xc: torch.Tensor, pre: torch.Tensor, indices: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The decoder's output ``[B, d_in]`` (no pre-encoder bias) from the features ``indices`` ``[B, n]``
    of ``xc = x - bias``, their activations read from the no-grad pre-activations ``pre``.

    Returns ``(output, indices sorted per row, their activations)``; the output is differentiable
    in ``xc`` and the SAE's weights, the activations are detached."""
    indices = indices.sort(dim=-1).values  # CSR rows with sorted columns
    kept_pre = pre.gather(-1, indices).to(xc.dtype)
    output, activations = _KeptReconstruction.apply(xc, sae.encoder.weight, sae.encoder.bias, sae.decoder.weight, indices, kept_pre)
    return output, indices, activations.detach()


def topk_forward(sae: SparseAutoencoder, x: torch.Tensor, precision: str) -> TopKForward:
    """A TopK SAE's training forward pass on ``x`` ``[B, d_in]`` (see the module docstring)."""
    xc = x - sae.bias
    with torch.no_grad(), compute_precision(precision, x):
        pre = sae.encoder(xc)
    with torch.no_grad():
        # rank by the unscaled pre-activations, as SparseAutoencoder.sparsify does (all ones while training)
        scale = sae.activation_scale
        ranking = pre if bool((scale == 1).all()) else pre.to(x.dtype) * scale
        indices = ranking.topk(sae.config.k, dim=-1, sorted=False).indices
    output, indices, activations = kept_reconstruction(sae, xc, pre, indices)
    return TopKForward(output + sae.bias, indices, activations, pre, xc)
