"""TopK, BatchTopK and Matryoshka training with sparse products: only the encoder's forward product is dense.

A TopK SAE keeps ``k`` of ``d_hidden`` features per residue (32 of 10,240 in the benchmarks;
BatchTopK and Matryoshka BatchTopK ``k`` per residue on average, chosen over the batch), yet
autograd through ``decoder(zeros.scatter(top))`` runs five more dense ``[B, d_in] x [d_in, d_hidden]``
products: the decoder's forward, both of its backward products, and the encoder's two backward
products (its gradient is zero outside the kept entries). Here the dense encoder output is used only
to *choose* the kept features (no autograd), and one :class:`torch.autograd.Function` computes the
reconstruction and its exact gradients from the kept entries (``B x k`` for TopK), as CSR products
(``torch.sparse``): the decoder's forward, the gradient of the kept activations
(``sampled_addmm``), and the weight and input gradients of both layers. Per step this cuts six dense
products to one, and a ``[B, d_hidden]`` gradient never exists.

The values are the dense path's: each kept activation is ``relu`` of the encoder output at that
entry, in the compute precision (bf16: the encoder product in bfloat16, as autocast would run it);
the sparse products run in float32. Gradients equal autograd's through the dense path up to the
order of float32 sums (``tests/test_sae_kinds.py``).

:func:`~interplm_plugins.core.sae.train.train_step` uses these on CPUs, where they were measured
(``benchmarks/bench_train.py``); on a GPU it keeps the dense products until they are measured there.
The ReLU SAE's hand-written step (:func:`~interplm_plugins.core.sae.train.relu_loss_and_grads`)
runs its products over :class:`KeptEntries` too once few enough features fire (a trained one's
1-4 %), and so does JumpReLU's (:func:`~interplm_plugins.core.sae.train.jumprelu_loss_and_grads`),
whose thresholds' straight-through gradient needs the activations' gradient only in the band
around each threshold (:func:`jumprelu_band`), sampled there alone.
"""

from __future__ import annotations

import functools
import warnings
from typing import Callable, NamedTuple

import torch

from interplm_plugins.core.plm.precision import compute_precision
from interplm_plugins.core.sae.model import SparseAutoencoder


# torch warns once that CSR support is "in beta"; the few CSR operations used here are tested.
warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta", category=UserWarning)


class SparseForward(NamedTuple):
    """What one training forward pass through the kept features leaves: the decoder's output
    ``[B, d_in]`` (no pre-encoder bias, differentiable) of each column range it was asked for, in
    order (one piece, the whole dictionary, unless Matryoshka's prefix segments); the kept entries as CSR structure, ``crow`` ``[B + 1]``
    and ``cols`` (sorted within each row), with their activations (detached, same length as
    ``cols``); the dense pre-activations (no gradient; for AuxK's choice of dead features and
    BatchTopK's selection) and the centred input ``x - bias`` (differentiable; AuxK starts from it too)."""

    pieces: list[torch.Tensor]
    crow: torch.Tensor
    cols: torch.Tensor
    activations: torch.Tensor
    pre: torch.Tensor
    centred: torch.Tensor


def _csr(crow: torch.Tensor, cols: torch.Tensor, values: torch.Tensor, width: int) -> torch.Tensor:
    return torch.sparse_csr_tensor(crow, cols, values, (len(crow) - 1, width), check_invariants=False)


def rows_of_indices(indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(crow, cols)`` of the entries ``indices`` ``[B, n]`` (``n`` distinct columns per row)."""
    n, k = indices.shape
    crow = torch.arange(0, n * k + 1, k, dtype=torch.int64, device=indices.device)
    return crow, indices.sort(dim=-1).values.reshape(-1)


def rows_of_mask(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(crow, cols)`` of the True entries of ``mask`` ``[B, width]``."""
    rows, cols = mask.nonzero(as_tuple=True)  # row-major: columns sorted within each row
    return _crow(rows, mask.shape[0]), cols


def _crow(rows: torch.Tensor, n: int) -> torch.Tensor:
    """CSR row pointers ``[n + 1]`` of entries whose (sorted) row indices are ``rows``."""
    crow = torch.zeros(n + 1, dtype=torch.int64, device=rows.device)
    torch.cumsum(torch.bincount(rows, minlength=n), 0, out=crow[1:])
    return crow


def _row_ids(crow: torch.Tensor) -> torch.Tensor:
    return torch.repeat_interleave(torch.arange(len(crow) - 1, device=crow.device), crow.diff())


class KeptEntries:
    """The kept entries ``(crow, cols)`` of a ``[n, width]`` matrix, for the products a sparse
    step needs with a value per entry: ``M @ right``, ``M.T @ right`` and ``(left @ right)`` read
    at the entries. ``M.T`` products run on the entries sorted by column (one stable sort, made at
    the first such product and reused: 1.4x faster than torch's own CSR transpose, measured)."""

    def __init__(self, crow: torch.Tensor, cols: torch.Tensor, width: int):
        self.crow, self.cols, self.width = crow, cols, width
        self._by_column: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    @functools.cached_property
    def rows(self) -> torch.Tensor:
        """The row of each entry."""
        return _row_ids(self.crow)

    @classmethod
    def nonzero(cls, dense: torch.Tensor) -> KeptEntries:
        """The nonzero entries of ``dense`` ``[n, width]``."""
        return cls(*rows_of_mask(dense != 0), dense.shape[1])

    def read(self, dense: torch.Tensor) -> torch.Tensor:
        """``dense[row, col]`` at each entry."""
        return dense[self.rows, self.cols]

    def times(self, values: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
        """``M @ right`` ``[n, d]``, ``M`` holding ``values`` at the entries."""
        return _csr(self.crow, self.cols, values, self.width) @ right

    def transpose_times(self, values: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
        """``M.T @ right`` ``[width, d]``."""
        if self._by_column is None:
            order = torch.argsort(self.cols, stable=True)  # stable: rows stay sorted within each column
            self._by_column = (order, _crow(self.cols[order], self.width), self.rows[order])
        order, ccol, rows = self._by_column
        return torch.sparse_csr_tensor(ccol, rows, values[order], (self.width, len(self.crow) - 1), check_invariants=False) @ right

    def sampled(self, left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
        """``(left @ right)[row, col]`` at each entry, computed only there; ``left`` ``[n, d]``, ``right`` ``[d, width]``."""
        pattern = _csr(self.crow, self.cols, left.new_zeros(len(self.cols)), self.width)
        return torch.sparse.sampled_addmm(pattern, left.contiguous(), right, beta=0.0).values()

    def column_sums(self, values: torch.Tensor) -> torch.Tensor:
        """``M.sum(dim=0)`` ``[width]``."""
        return values.new_zeros(self.width).index_add_(0, self.cols, values)


class _KeptReconstruction(torch.autograd.Function):
    """``sum_j relu(pre[b, j]) W_dec[:, j]`` over the kept columns ``j`` of row ``b`` (CSR ``crow``,
    ``cols``), with ``pre = xc @ W_enc.T + b_enc`` read at those entries as ``kept_pre`` (computed
    outside, without autograd); returns the reconstruction and the activations, and
    back-propagates into ``xc``, both weights and ``b_enc``."""

    @staticmethod
    def forward(ctx, xc, enc_weight, enc_bias, dec_weight, crow, cols, kept_pre):  # noqa: ARG004 (enc_bias: gradient only)
        activations = torch.relu(kept_pre)
        reconstruction = KeptEntries(crow, cols, dec_weight.shape[1]).times(activations, dec_weight.t())
        ctx.save_for_backward(xc, enc_weight, dec_weight, crow, cols, activations)
        return reconstruction, activations

    @staticmethod
    def backward(ctx, grad_reconstruction, grad_activations):
        xc, enc_weight, dec_weight, crow, cols, activations = ctx.saved_tensors
        kept = KeptEntries(crow, cols, dec_weight.shape[1])
        # d loss / d activation at each kept entry (b, j): <grad_reconstruction[b], W_dec[:, j]>
        grad_kept = kept.sampled(grad_reconstruction, dec_weight)
        if grad_activations is not None:
            grad_kept = grad_kept + grad_activations
        grad_pre = grad_kept * (activations > 0)
        grad_dec = kept.transpose_times(activations, grad_reconstruction).t()
        grad_xc = kept.times(grad_pre, enc_weight)
        grad_enc_weight = kept.transpose_times(grad_pre, xc)
        return grad_xc, grad_enc_weight, kept.column_sums(grad_pre), grad_dec, None, None, None


def kept_reconstruction(
    sae: SparseAutoencoder, xc: torch.Tensor, pre: torch.Tensor, crow: torch.Tensor, cols: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The decoder's output ``[B, d_in]`` (no pre-encoder bias) from the kept entries ``(crow, cols)``
    of ``xc = x - bias``, their activations read from the no-grad pre-activations ``pre``.

    Returns ``(output, activations)``: the output differentiable in ``xc`` and the SAE's weights,
    the activations (one per kept entry) detached."""
    kept_pre = pre[_row_ids(crow), cols].to(xc.dtype)
    output, activations = _KeptReconstruction.apply(xc, sae.encoder.weight, sae.encoder.bias, sae.decoder.weight, crow, cols, kept_pre)
    return output, activations.detach()


def sparse_forward(
    sae: SparseAutoencoder,
    x: torch.Tensor,
    precision: str,
    select: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
    segments: list[tuple[int, int]] | None = None,
) -> SparseForward:
    """A training forward pass on ``x`` ``[B, d_in]`` through the entries ``select(pre)`` keeps
    (``(crow, cols)`` of the pre-activations, bfloat16 in bf16: casting them would not change their
    order; see :func:`rows_of_indices`, :func:`rows_of_mask`), decoded in one piece, or in one
    piece per column range ``[start, end)`` of ``segments`` (Matryoshka's prefix pieces)."""
    xc = x - sae.bias
    with torch.no_grad(), compute_precision(precision, x):
        pre = sae.encoder(xc)
    with torch.no_grad():
        crow, cols = select(pre)
    if segments is None:
        output, activations = kept_reconstruction(sae, xc, pre, crow, cols)
        return SparseForward([output], crow, cols, activations, pre, xc)
    rows = _row_ids(crow)
    pieces = []
    for start, end in segments:
        inside = (cols >= start) & (cols < end)
        pieces.append(kept_reconstruction(sae, xc, pre, _crow(rows[inside], len(crow) - 1), cols[inside])[0])
    activations = torch.relu(pre[rows, cols].to(xc.dtype))  # as kept_reconstruction's, for all kept entries
    return SparseForward(pieces, crow, cols, activations, pre, xc)


class JumpReLUBand(NamedTuple):
    """Where :func:`~interplm_plugins.core.sae.jumprelu.jumprelu_training`'s straight-through
    kernels are nonzero, for pre-activations ``[n, d_hidden]``: ``entries``, those of the JumpReLU's
    kernel (on ``relu(pre)``: there ``d loss / d f`` reaches the thresholds, fired or not);
    ``counts`` ``[d_hidden]``, per feature the rows where the L0 step's kernel (on ``pre``) is nonzero;
    ``above``, the count of entries above their threshold (the L0 term), or None when no threshold is
    negative (then they are the entries that fire)."""

    entries: KeptEntries
    counts: torch.Tensor
    above: torch.Tensor | None


@torch.no_grad()
def jumprelu_band(pre: torch.Tensor, threshold: torch.Tensor, bandwidth: torch.Tensor, scratch: torch.Tensor | None = None) -> JumpReLUBand:
    """:class:`JumpReLUBand` of ``pre``, compared in float32 (a bfloat16 ``pre`` is promoted exactly);
    ``scratch``, a float32 tensor of ``pre``'s shape reused between steps, saves a fresh one's page faults."""
    half = bandwidth / 2
    step_band = torch.lt(torch.sub(pre, threshold, out=scratch).abs_(), half)
    above = None if bool((threshold >= 0).all()) else torch.count_nonzero(pre > threshold)
    if bool((threshold >= half).all()):  # every band entry has pre > 0: relu(pre) = pre, both kernels agree
        entries = KeptEntries(*rows_of_mask(step_band), pre.shape[1])
        return JumpReLUBand(entries, torch.bincount(entries.cols, minlength=pre.shape[1]), above)
    band = (step_band & (pre > 0)) | ((pre <= 0) & (threshold.abs() < half))
    return JumpReLUBand(KeptEntries(*rows_of_mask(band), pre.shape[1]), step_band.sum(dim=0), above)


def topk_forward(sae: SparseAutoencoder, x: torch.Tensor, precision: str) -> SparseForward:
    """A TopK SAE's training forward pass: the ``k`` largest pre-activations of each residue, ranked
    unscaled as :meth:`SparseAutoencoder.sparsify` ranks them (the scale is all ones while training)."""

    def select(pre: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return rows_of_indices(sae.ranking_of(pre).topk(sae.config.k, dim=-1, sorted=False).indices)

    return sparse_forward(sae, x, precision, select)
