"""One-off trial, not a product path: bf16 embedding with a hand-written AVX512-BF16 attention kernel.

    python benchmarks/trials/bf16_attention.py --models demo,8M,35M [--recount]

Builds ``bf16_attention.cpp`` with torch's C++ extension builder (g++ and ninja, in a temporary
folder), checks it against PyTorch's fused fp32 attention on random inputs, then times
``embed_sequences`` on bench_precision's 300 Swiss-Prot proteins in fp32, in bf16, and in bf16 with
the hand kernel in place of ``scaled_dot_product_attention`` (best of two alternating rounds).
``--recount``: bench_precision's concept recount with the hand kernel. Needs a CPU with
AVX512-BF16. Results go to standard output only: docs/PRECISION.md records the run it was made for.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
import _common  # noqa: E402
import bench_precision  # noqa: E402


def build(folder: Path):
    from torch.utils.cpp_extension import load

    flags = ["-O3", "-march=cooperlake", "-mtune=znver3", "-fopenmp"]  # cooperlake: AVX-512 with BF16 (this g++ has no znver4)
    return load(name="interplm_bf16_attention_trial", sources=[str(HERE / "bf16_attention.cpp")], extra_cflags=flags,
                extra_ldflags=["-fopenmp"], build_directory=str(folder))  # fmt: skip


def hand_attention(kernel, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """One sequence's attention, ``(L, heads, head_dim)`` in and out (float32 out), through the hand kernel."""
    length, heads, dim = q.shape
    padded, chunks = (length + 15) // 16 * 16, (dim + 15) // 16
    qb = q.to(torch.bfloat16).transpose(0, 1).contiguous()
    kb = F.pad(k.to(torch.bfloat16), (0, 0, 0, 0, 0, padded - length)).view(padded // 16, 16, heads, dim // 2, 2).permute(2, 0, 3, 1, 4).contiguous()
    vb = F.pad(v.to(torch.bfloat16), (0, chunks * 16 - dim, 0, 0, 0, padded - length)).view(padded // 2, 2, heads, chunks * 16).permute(2, 0, 3, 1).contiguous()
    return kernel.attention_packed(qb, kb, vb, length)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="demo,8M,35M")
    p.add_argument("--proteins", type=int, default=300)
    p.add_argument("--recount", action="store_true")
    p.add_argument("--data", type=Path, default=_common.SHARED_DATA)
    args = p.parse_args(argv)
    torch.set_num_threads(2)

    import interplm_plugins.core.plm.embed as embed
    from interplm_plugins.core.interpret.pipeline import load_pipeline

    fused = embed._attention

    with tempfile.TemporaryDirectory() as work:
        kernel = build(Path(work))
        q, k, v = (torch.randn(300, 20, 16) for _ in range(3))
        view = lambda t: t.unsqueeze(0).transpose(1, 2)  # noqa: E731
        reference = F.scaled_dot_product_attention(view(q), view(k), view(v), scale=1.0).transpose(1, 2)[0]
        print(f"hand kernel vs fp32 attention on random inputs: max abs diff {float((hand_attention(kernel, q, k, v) - reference).abs().max()):.2e}")

        def with_hand_kernel(q, k, v, packing):
            if not torch.is_autocast_enabled("cpu"):  # fp32 keeps the fused kernel
                return fused(q, k, v, packing)
            out = q.new_zeros(q.shape, dtype=torch.float32)
            row = 0
            for length in packing.lengths:
                out[row : row + length] = hand_attention(kernel, q[row : row + length], k[row : row + length], v[row : row + length])
                row += length
            return out

        records = bench_precision.swissprot_records(args.data, args.proteins)
        residues = sum(len(r.sequence) for r in records)

        def seconds(plm, precision: str, hand: bool) -> float:
            embed._attention = with_hand_kernel if hand else fused
            try:
                start = time.perf_counter()
                for _ in embed.embed_sequences(plm, records, [max(1, plm.num_layers - 1)], precision=precision):
                    pass
                return time.perf_counter() - start
            finally:
                embed._attention = fused

        modes = {"fp32": ("fp32", False), "bf16": ("bf16", False), "bf16 + hand attention": ("bf16", True)}
        for name in args.models.split(","):
            plm = load_pipeline().plm if name == "demo" else bench_precision.random_plm(name, Path(work))
            for mode in modes.values():  # warm-up, untimed
                seconds(plm, *mode)
            runs = {m: [] for m in modes}
            for _ in range(2):
                for m, mode in modes.items():
                    runs[m].append(seconds(plm, *mode))
            best = {m: min(t) for m, t in runs.items()}
            print(f"{name}: fp32 {residues / best['fp32']:,.0f} residues/s; bf16 {best['fp32'] / best['bf16']:.2f}x; "
                  f"bf16 + hand attention {best['fp32'] / best['bf16 + hand attention']:.2f}x", flush=True)  # fmt: skip

        if args.recount:
            import dataclasses

            fp32 = load_pipeline()
            embed._attention = with_hand_kernel
            try:
                out = bench_precision.concept_f1_change({"fp32": fp32, "bf16": dataclasses.replace(fp32, precision="bf16")},
                                                        bench_precision.demo_halves(args.data), None, recount_validation=False)  # fmt: skip
            finally:
                embed._attention = fused
            print(f"concept recount, bf16 + hand attention: {out['matches_changed_over_tolerance']} of {out['chosen_matches']} "
                  f"matches move by more than {bench_precision.F1_TOLERANCE} (max {out['max_abs_f1_change']:.4f})")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
