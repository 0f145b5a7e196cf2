"""Compute precision: what runs in bfloat16 under ``--precision bf16``, and what stays float32.

``--precision`` (``interplm embed``, ``color``, ``features``, ``train``) is the precision the
arithmetic runs in; ``embed --dtype`` is another thing, the precision the embeddings are *stored*
in. The default is ``fp32`` everywhere, and ``fp32`` runs exactly the code it always ran (the
context manager below does nothing). ``bf16`` means:

PLM forward pass (:func:`~interplm_plugins.core.plm.embed.embed_sequences`, so every embedding, every
:class:`~interplm_plugins.core.interpret.pipeline.Pipeline` and the commands built on them), under
``torch.autocast(device, dtype=torch.bfloat16)``:

- in bf16: the matrix products, i.e. the fused q/k/v projection, the attention itself, the output
  projection and the feed-forward ``fc1``/``fc2``. Their kernels take bf16 inputs and accumulate in
  float32, returning bf16. Attention is our own AVX512-BF16 kernel where the CPU has that
  instruction (:mod:`~interplm_plugins.core.plm.bf16_attention`: its q.k and p.v products in bf16,
  its softmax in float32, float32 out), PyTorch's ``scaled_dot_product_attention`` elsewhere.
- in float32: the residual stream (each block's bf16 output is added to the float32 residual, so
  the sum is float32 and rounding does not compound over the layers), the layer norms (they read
  the float32 residual, and autocast leaves an op it does not list in its input's dtype; on CUDA
  autocast lists ``layer_norm`` as float32 in any case), the attention softmax (inside either
  attention kernel, which accumulate in float32; fair-esm's own attention, used for hooked
  blocks, calls ``softmax(x.float())``), the rotary rotation (complex float32), the token
  embedding and its scaling, and the final layer norm.
- the layer outputs are cast to float32 before they are stored (then to ``--dtype``) or fed to
  the SAE. The SAE encode after the PLM stays float32: one ``[L, D] x [D, F]`` product per
  protein, cheap next to the PLM, and the activations users read (and thresholds compare) are
  the SAE's float32 ones of bf16-computed embeddings.

SAE training (:func:`~interplm_plugins.core.sae.train.train_step`, ``interplm train --precision bf16``):

- in bf16: the matrix products of the forward and backward pass (encoder, decoder and, for the
  ReLU SAE's hand-written gradients, the three gradient products), with float32 accumulation in
  the kernels; the ``[batch, features]`` activations and their gradient are held in bf16. TopK,
  BatchTopK and Matryoshka train through sparse products (:mod:`~interplm_plugins.core.sae.sparse_topk`):
  only their encoder's forward product is bf16, the sparse products of the kept features run in float32.
- in float32: the master weights, the Adam state, the gradients as the optimiser sees them, the
  reconstruction error ``x_hat - x`` and the loss, the L1 and decoder norms, the sparsity
  selection of TopK / BatchTopK / JumpReLU (pre-activations are cast to float32 first; the
  sparse path ranks the bfloat16 ones as they are, since the exact cast would not change which
  win), dead-feature resampling and the saved SAE, which is always float32.

bf16 pays where the hardware has bf16 matrix units: CPUs with AVX512-BF16 or AMX, and GPUs from
NVIDIA Ampere on; elsewhere it is emulated and may be slower than float32. What it costs in
accuracy on the embedded default (SAE activations, active features per residue, the concept F1 of
the features the database chose) is measured by ``benchmarks/bench_precision.py``.
"""

from __future__ import annotations

import contextlib
from typing import ContextManager

import torch

from interplm_plugins.errors import InterPLMError

#: The compute precisions, default first.
PRECISIONS: tuple[str, ...] = ("fp32", "bf16")
DEFAULT_PRECISION = "fp32"
#: Device types torch.autocast runs bfloat16 on.
_AUTOCAST_DEVICES = ("cpu", "cuda")


def check_precision(precision: str) -> str:
    """``precision`` if it is one of :data:`PRECISIONS`, else an :class:`InterPLMError`."""
    if precision not in PRECISIONS:
        raise InterPLMError(f"unknown compute precision {precision!r} (expected one of {', '.join(PRECISIONS)})")
    return precision


def _device_type(device: torch.device | str | torch.Tensor | torch.nn.Module | None) -> str:
    if isinstance(device, torch.Tensor):
        return device.device.type
    if isinstance(device, torch.nn.Module):
        first = next(device.parameters(), None)
        return first.device.type if first is not None else "cpu"
    return torch.device(device if device is not None else "cpu").type


def compute_precision(precision: str, device: torch.device | str | torch.Tensor | torch.nn.Module | None = None) -> ContextManager:
    """A context manager running its block in ``precision`` on ``device`` (a device, its name, or a
    tensor or module on it; default the CPU): ``torch.autocast(..., dtype=torch.bfloat16)`` for
    ``"bf16"``, nothing at all for ``"fp32"``. See the module docstring for what autocast casts.

    Keep the block to the computation: autocast is thread-wide state, so a block left open across
    a ``yield`` would also run the caller's code in bf16.
    """
    check_precision(precision)
    if precision == "fp32":
        return contextlib.nullcontext()
    kind = _device_type(device)
    if kind not in _AUTOCAST_DEVICES:
        raise InterPLMError(f"bf16 compute runs on the CPU or CUDA, not on {kind!r}; use --precision fp32")
    return torch.autocast(kind, dtype=torch.bfloat16)


def matmul_dtype(precision: str, like: torch.Tensor) -> torch.dtype:
    """The dtype hand-written matrix products run in (autocast does not touch ``out=`` products):
    bfloat16 for ``"bf16"``, else ``like``'s own dtype."""
    return torch.bfloat16 if check_precision(precision) == "bf16" else like.dtype


def bf16_is_fast(device: torch.device | str | None = None) -> bool:
    """Whether ``device`` has native bf16 matrix products (CPU: AVX512-BF16 or AMX through oneDNN;
    CUDA: compute capability 8.0 or later); informational, bf16 runs either way."""
    kind = _device_type(device)
    if kind == "cuda":
        return torch.cuda.is_available() and torch.cuda.get_device_capability()[0] >= 8
    if kind == "cpu":
        probe = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
        try:
            return bool(probe()) if probe is not None else False
        except RuntimeError:
            return False
    return False
