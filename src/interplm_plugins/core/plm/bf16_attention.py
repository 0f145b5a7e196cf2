"""Attention for ``--precision bf16`` on CPUs with AVX512-BF16: a kernel of our own, built once.

PyTorch's fused CPU attention gains little from bf16 (1.01-1.17x on the Zen 4 of the benchmarks),
so attention, a quarter to two fifths of an fp32 forward pass, holds bf16 embedding far below
the matrix products' gain (docs/PRECISION.md). ``bf16_attention.cpp`` computes q.k and p.v with
AVX512-BF16 dot products (float32 accumulation) around a float32 softmax.

Which attention ``--precision bf16`` runs (:func:`kernel` decides, once per process):

- this kernel, where the CPU has AVX512-BF16, head sizes are even and at most 64 (ESM-2 8M to 3B),
  no gradient is wanted, and the kernel builds (torch's C++ extension builder, g++ and ninja; built
  by ``scripts/install.sh`` into torch's extension cache, ``TORCH_EXTENSIONS_DIR``, else at first use);
- PyTorch's ``scaled_dot_product_attention`` under autocast otherwise, or when
  ``INTERPLM_BF16_ATTENTION=pytorch`` is set (a build failure says so once, on stderr).

fp32 never comes here. ``python -m interplm_plugins.core.plm.bf16_attention`` builds the kernel
and says which attention bf16 will use.
"""

from __future__ import annotations

import functools
import os
import sys
import warnings
from pathlib import Path
from types import ModuleType

import torch

SOURCE = Path(__file__).with_name("bf16_attention.cpp")
#: The module name torch's extension builder builds it as (and its cache folder's name).
EXTENSION_NAME = "interplm_bf16_attention"
#: ``INTERPLM_BF16_ATTENTION``: ``pytorch`` keeps PyTorch's attention under bf16.
ENV = "INTERPLM_BF16_ATTENTION"
MAX_HEAD_DIM = 64  # the kernel's own bound (bf16_attention.cpp: four 16-lane output registers)
#: The kernel's name in torch.profiler traces.
PROFILER_NAME = "interplm::bf16_attention"
_FLAGS = ["-O3", "-mavx512f", "-mavx512bw", "-mavx512dq", "-mavx512vl", "-mavx512bf16", "-mfma", "-fopenmp"]


def cpu_has_avx512_bf16() -> bool:
    """Whether this CPU has the AVX512-BF16 dot product the kernel is built on (torch's own CPU probe)."""
    probe = getattr(torch.cpu, "_is_avx512_bf16_supported", None)
    return bool(probe()) if probe else False


def _reason_not_to_build() -> str | None:
    """Why the kernel is not even tried here (the switch, the CPU), or None."""
    if os.environ.get(ENV, "").lower() == "pytorch":
        return f"{ENV}=pytorch"
    return None if cpu_has_avx512_bf16() else "this CPU has no AVX512-BF16"


def unavailable_reason() -> str | None:
    """Why bf16 attention falls back to PyTorch's here, or None when the kernel runs."""
    reason = _reason_not_to_build()
    if reason is None and kernel() is None:
        reason = "the kernel did not build (see the message above)"
    return reason


@functools.cache
def kernel() -> ModuleType | None:
    """The built kernel (built or loaded from torch's extension cache), or None where it cannot run."""
    if _reason_not_to_build() is not None:
        return None
    try:
        from torch.utils.cpp_extension import load

        return load(name=EXTENSION_NAME, sources=[str(SOURCE)], extra_cflags=_FLAGS, extra_ldflags=["-fopenmp"])
    except Exception as error:  # no compiler, no ninja, a compiler without AVX512-BF16: PyTorch's kernel is still right
        message = str(error).strip().splitlines()
        warnings.warn(f"bf16 attention kernel not built ({message[-1] if message else type(error).__name__}); "
                      "--precision bf16 uses PyTorch's attention", RuntimeWarning, stacklevel=2)  # fmt: skip
        return None


def usable(q: torch.Tensor) -> bool:
    """Whether :func:`attention` takes these ``(rows, heads, head_dim)`` queries (else use PyTorch's)."""
    head_dim = q.shape[-1]
    return (
        q.device.type == "cpu"
        and head_dim % 2 == 0
        and head_dim <= MAX_HEAD_DIM
        and not (torch.is_grad_enabled() and q.requires_grad)
        and kernel() is not None
    )


def _rows(t: torch.Tensor) -> torch.Tensor:
    """``t`` as the kernel reads it: float32 or bf16, each row's heads contiguous (any row stride)."""
    t = t if t.dtype in (torch.float32, torch.bfloat16) else t.float()
    return t if t.stride(2) == 1 and t.stride(1) == t.shape[2] else t.contiguous()


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, sequences: int, out: torch.Tensor | None = None) -> torch.Tensor:
    """Softmax attention of ``sequences`` equal-length sequences laid end to end, unscaled, unmasked.

    ``q``, ``k``, ``v``: ``(sequences * length, heads, head_dim)`` rows (float32 or bf16 are read
    as they are, rounded to bf16 inside the kernel); returns float32 rows of the same shape,
    written into ``out`` when given (contiguous float32, as embedding's attention output is).
    Only where :func:`usable` says so."""
    out = torch.empty(q.shape, dtype=torch.float32) if out is None else out
    # Named for torch.profiler: bench_precision.py counts it as attention.
    with torch.profiler.record_function(PROFILER_NAME):
        kernel().attention(_rows(q), _rows(k), _rows(v), out, sequences)
    return out


def main() -> int:
    """Build the kernel (``scripts/install.sh`` calls this) and say which attention bf16 uses."""
    reason = unavailable_reason()
    print("bf16 attention: " + ("this package's AVX512-BF16 kernel" if reason is None else f"PyTorch's ({reason})"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
