"""The AVX512-BF16 attention kernel of ``--precision bf16`` (core/plm/bf16_attention.py): it runs where the CPU
has the instruction, computes softmax attention to bf16 rounding on any shape ESM-2 makes, is what bf16 embedding
uses (and fp32 never does), and falls back to PyTorch's attention on request, for gradients, and when it cannot be
built. Real parts: the kernel built by torch's extension builder, the embedded demo PLM, real Swiss-Prot proteins.
No timing is asserted (benchmarks/bench_precision.py measures speed)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from interplm_plugins.core.inputs.sequences import read_fasta
from interplm_plugins.core.plm import bf16_attention
from interplm_plugins.core.plm.embed import embed_sequences
from interplm_plugins.core.plm.loading import load_plm

has_bf16 = bf16_attention.cpu_has_avx512_bf16()
needs_bf16_cpu = pytest.mark.skipif(not has_bf16, reason="the kernel's instruction (AVX512-BF16) is not on this CPU")


def exact_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, sequences: int) -> torch.Tensor:
    """float64 attention of the bf16-rounded inputs: what the kernel approximates, less its own rounding."""
    view = lambda t: t.to(torch.bfloat16).double().unflatten(0, (sequences, -1)).transpose(1, 2)  # noqa: E731
    return F.scaled_dot_product_attention(view(q), view(k), view(v), scale=1.0).transpose(1, 2).flatten(0, 1)


def test_the_kernel_runs_exactly_where_the_cpu_has_avx512_bf16():
    assert (bf16_attention.kernel() is not None) == has_bf16
    assert (bf16_attention.unavailable_reason() is None) == has_bf16
    said = subprocess.run([sys.executable, "-m", "interplm_plugins.core.plm.bf16_attention"], capture_output=True, text=True, check=True).stdout
    assert ("AVX512-BF16 kernel" in said) == has_bf16, said


@needs_bf16_cpu
@pytest.mark.parametrize(
    "sequences, length, heads, head_dim",
    [(1, 1, 20, 16), (1, 2, 4, 16), (3, 15, 20, 24), (2, 16, 20, 32), (1, 17, 20, 64), (4, 300, 20, 16), (1, 1000, 20, 24), (2, 33, 3, 10), (1, 50, 2, 40)],
)
def test_kernel_matches_exact_attention_to_bf16_rounding(sequences, length, heads, head_dim):
    """Lengths off the 16-key blocks, head sizes off the 16-lane vectors, several sequences at once: the error
    is bf16's (its probabilities rounded to 8 bits) and no larger than PyTorch's own bf16 attention's."""
    torch.manual_seed(length * head_dim)
    q, k, v = (2 * torch.randn(sequences * length, heads, head_dim) for _ in range(3))
    exact = exact_attention(q, k, v, sequences)
    ours = bf16_attention.attention(q, k, v, sequences)
    assert ours.dtype == torch.float32 and ours.shape == q.shape
    view = lambda t: t.to(torch.bfloat16).unflatten(0, (sequences, length)).transpose(1, 2)  # noqa: E731
    pytorch_bf16 = F.scaled_dot_product_attention(view(q), view(k), view(v), scale=1.0).transpose(1, 2).flatten(0, 1)
    our_error, pytorch_error = float((ours.double() - exact).abs().max()), float((pytorch_bf16.double() - exact).abs().max())
    assert our_error < 0.02 * float(v.abs().max()), our_error
    assert our_error <= 2 * pytorch_error + 1e-6, (our_error, pytorch_error)


@needs_bf16_cpu
def test_kernel_reads_strided_bf16_rows_and_writes_into_out():
    """As embedding calls it: v a strided bf16 view of the fused q/k/v product, the result written into a slice."""
    torch.manual_seed(1)
    sequences, length, heads, dim = 2, 37, 4, 24
    qkv = torch.randn(sequences * length, 3 * heads * dim)
    q, k = (qkv[:, i * heads * dim : (i + 1) * heads * dim].unflatten(-1, (heads, dim)) for i in range(2))
    v = qkv.bfloat16()[:, 2 * heads * dim :].unflatten(-1, (heads, dim))
    assert not v.is_contiguous()
    out = torch.zeros(sequences * length + 5, heads, dim)
    returned = bf16_attention.attention(q, k, v, sequences, out=out[:-5])
    assert returned.data_ptr() == out.data_ptr() and out[-5:].abs().max() == 0
    torch.testing.assert_close(out[:-5], bf16_attention.attention(q.contiguous(), k.contiguous(), v.float().contiguous(), sequences), rtol=0, atol=0)
    assert float((out[:-5].double() - exact_attention(q, k, v, sequences)).abs().max()) < 0.02 * float(v.abs().max())


@pytest.fixture(scope="module")
def demo_plm():
    return load_plm("demo")


@pytest.fixture(scope="module")
def proteins(swissprot_fasta):
    """Real proteins of several lengths, two of one length so that a run of equal lengths shares a kernel call."""
    records = [r for r in read_fasta(swissprot_fasta) if 40 <= len(r.sequence) <= 300][:6]
    return records + [records[0]]


def embed(plm, proteins, precision: str) -> dict[str, np.ndarray]:
    return {key: layers[plm.num_layers] for key, layers in embed_sequences(plm, proteins, [plm.num_layers], precision=precision)}


@pytest.fixture
def kernel_calls(monkeypatch):
    """How many times bf16 embedding called the kernel (the real one, counted)."""
    calls = []
    real = bf16_attention.attention

    def counted(q, k, v, sequences, out=None):
        calls.append(sequences)
        return real(q, k, v, sequences, out=out)

    monkeypatch.setattr(bf16_attention, "attention", counted)
    return calls


def assert_close_to_fp32(result: dict[str, np.ndarray], fp32: dict[str, np.ndarray]) -> None:
    for key, vectors in fp32.items():
        relative = np.abs(result[key] - vectors).mean() / np.abs(vectors).mean()
        assert 0 < relative < 0.02, (key, relative)  # bf16's rounding: nonzero, about 1 %


def test_bf16_embedding_uses_the_kernel_and_fp32_never_does(demo_plm, proteins, kernel_calls):
    fp32 = embed(demo_plm, proteins, "fp32")
    assert kernel_calls == []
    bf16 = embed(demo_plm, proteins, "bf16")
    assert (len(kernel_calls) > 0) == has_bf16
    if has_bf16:
        assert max(kernel_calls) >= 2  # the two equal-length proteins went in one call
    assert_close_to_fp32(bf16, fp32)


def test_pytorch_attention_on_request_agrees_with_the_kernel(demo_plm, proteins, kernel_calls, monkeypatch):
    ours = embed(demo_plm, proteins, "bf16")
    monkeypatch.setenv(bf16_attention.ENV, "pytorch")
    bf16_attention.kernel.cache_clear()
    try:
        assert bf16_attention.unavailable_reason() == f"{bf16_attention.ENV}=pytorch"
        calls_before = len(kernel_calls)
        pytorch = embed(demo_plm, proteins, "bf16")
        assert len(kernel_calls) == calls_before
    finally:
        monkeypatch.delenv(bf16_attention.ENV)
        bf16_attention.kernel.cache_clear()
    fp32 = embed(demo_plm, proteins, "fp32")
    assert_close_to_fp32(pytorch, fp32)
    for key in fp32:  # two bf16 attentions: as close to each other as each is to fp32
        between = np.abs(ours[key] - pytorch[key]).mean() / np.abs(fp32[key]).mean()
        assert (between > 0) == has_bf16 and between < 0.02, (key, between)


def test_no_kernel_where_a_gradient_is_wanted():
    q = torch.randn(10, 2, 16, requires_grad=True)
    assert not bf16_attention.usable(q)
    with torch.no_grad():
        assert bf16_attention.usable(q) == has_bf16
    assert not bf16_attention.usable(torch.randn(10, 2, 128))  # head size past the kernel's 64 (ESM-2 15B)


def test_a_kernel_that_does_not_build_falls_back_with_one_warning(tmp_path, monkeypatch, demo_plm, proteins, kernel_calls):
    broken = tmp_path / "bf16_attention.cpp"
    broken.write_text("this is not C++;\n")  # fails at once (torch's headers alone take ~15 s to compile)
    monkeypatch.setattr(bf16_attention, "SOURCE", broken)
    # its own name: torch versions a name's builds per process, and the real kernel's would be rebuilt after this one
    monkeypatch.setattr(bf16_attention, "EXTENSION_NAME", "interplm_bf16_attention_broken")
    monkeypatch.setattr(bf16_attention, "cpu_has_avx512_bf16", lambda: True)  # so that the build is tried on any CPU
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "extensions"))  # the real kernel's cache stays as it is
    bf16_attention.kernel.cache_clear()
    try:
        with pytest.warns(RuntimeWarning, match="bf16 attention kernel not built"):
            assert bf16_attention.kernel() is None
        assert bf16_attention.unavailable_reason().startswith("the kernel did not build")
        bf16 = embed(demo_plm, proteins[:2], "bf16")
        assert kernel_calls == []
    finally:
        bf16_attention.kernel.cache_clear()
    assert_close_to_fp32(bf16, embed(demo_plm, proteins[:2], "fp32"))
