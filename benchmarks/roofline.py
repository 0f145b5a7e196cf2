"""What the measured matrix-product peak allows: the embedding-engine targets in FLOP/s (results/roofline.json).

    python benchmarks/roofline.py                  # from benchmarks/results (run_all.py runs it after the benchmarks)

Nothing is timed here. From one run's results it derives:

- for each ``bench_embed.py`` engine architecture, the model FLOPs per residue of its proteins (the
  linear layers, 24 * dim^2 per token and block, and attention, 4 * tokens * dim per token and
  block; BOS and EOS count, padding does not), and so the FLOP/s that each engine's residues/s
  means; the fraction of ``bench_train.py``'s measured fp32 and bf16 ``torch.mm`` peaks that our
  fp32 reaches and that each target needs (our fp32 >= 2x esm.cpp fp32; a path whose conclusions
  match fp32 >= 1.5x esm.cpp's fastest mode). A target that needs more than the fp32 peak cannot
  be met by any fp32 code on that machine.
- for each ``bench_precision.py`` embedding row, what bf16 can gain while attention gains only
  what the profile measured: the speed-up if everything else ran at the matrix products' measured
  bf16 gain (or the peaks' ratio, whichever is larger), and the attention gain the 1.8x target needs.

The three result files must come from one machine (a peak of another CPU says nothing about these
rates); the engine proteins are rebuilt from the shared data exactly as ``bench_embed.py`` chose them
and must add up to the residues its result names.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402
from bench_embed import MODELS, engine_records  # noqa: E402

NEEDED = ("embed", "train")
EMBEDDING_BF16_TARGET = 1.8  # bench_precision's target, bf16 / fp32 embedding
ENGINE_BEST_TARGET = 1.5  # a path with fp32's conclusions vs esm.cpp's fastest mode
ENGINE_FP32_TARGET = 2.0  # our fp32 vs esm.cpp fp32


def attention_flops(lengths: Sequence[int], layers: int, dim: int) -> int:
    """FLOPs of the two attention products (q k^T and weights v: 4 * tokens * dim per token and
    block) on proteins of these residue counts, each with its BOS and EOS tokens."""
    return layers * sum(4 * (n + 2) ** 2 * dim for n in lengths)


def forward_flops(lengths: Sequence[int], layers: int, dim: int) -> int:
    """Model FLOPs (2 per multiply-add) of an ESM-2 forward pass through ``layers`` blocks of width
    ``dim``: q/k/v, output projection and the 4 * dim feed-forward (24 * dim^2 per token, BOS and
    EOS included), and attention (:func:`attention_flops`)."""
    return layers * sum(24 * dim * dim * (n + 2) for n in lengths) + attention_flops(lengths, layers, dim)


class ResultMismatch(ValueError):
    """The result files cannot be read together (another machine, other proteins)."""


def _load(results_dir: Path, name: str) -> dict:
    path = results_dir / f"{name}.json"
    if not path.is_file():
        raise ResultMismatch(f"{path}: missing (run benchmarks/bench_{name}.py first)")
    return json.loads(path.read_text())


def _same_machine(docs: dict[str, dict]) -> dict:
    def cpu(doc: dict) -> tuple:
        m = doc["machine"]
        return m["cpu"], json.dumps(m.get("cpu_generation"), sort_keys=True), m["cores"], m["torch_threads"]

    first = next(iter(docs))
    for name, doc in docs.items():
        if cpu(doc) != cpu(docs[first]) or doc["mode"] != docs[first]["mode"]:
            raise ResultMismatch(f"{name}.json: {doc['mode']} results of {doc['machine']['cpu']} do not go with {first}.json's ({docs[first]['mode']}, {docs[first]['machine']['cpu']})")
    return docs[first]["machine"]


def engine_rows(embed: dict, train: dict, data: Path) -> list[dict[str, Any]]:
    """One row per ``bench_embed.py`` engine architecture: FLOPs per residue, FLOP/s, fractions of peak."""
    fp32_peak, bf16_peak = train["matmul_peak_gflops"], train["matmul_peak_gflops_bf16"]
    quick = embed["mode"] == "quick"
    rows = []
    for name, row in embed.get("engine_details", {}).items():  # {"8M": that architecture's row, ...}
        layers, dim, _heads = MODELS[name]
        lengths = [len(r.sequence) for r in engine_records(data, row["proteins"], quick)[0]]
        if sum(lengths) != row["residues"]:
            raise ResultMismatch(f"embed.json: engine proteins of {row['model']} rebuilt from {data} have {sum(lengths):,} residues, the result says {row['residues']:,}")
        flops = forward_flops(lengths, layers, dim) / row["residues"]
        attention = attention_flops(lengths, layers, dim) / row["residues"]

        def gflops(residues_per_s: float) -> float:
            return residues_per_s * flops / 1e9

        best_target, fp32_target = ENGINE_BEST_TARGET * row["esm_cpp_best"], ENGINE_FP32_TARGET * row["esm_cpp_fp32"]
        rows.append({
            "model": row["model"], "proteins": row["proteins"], "residues": row["residues"],
            "mflop_per_residue": flops / 1e6, "attention_flop_share": attention / flops,
            "ours_fp32_gflops": gflops(row["ours_fp32"]), "ours_fp32_fraction_of_fp32_peak": gflops(row["ours_fp32"]) / fp32_peak,
            "ours_bf16_gflops": gflops(row["ours_bf16"]), "ours_bf16_fraction_of_bf16_peak": gflops(row["ours_bf16"]) / bf16_peak,
            "esm_cpp_fp32_gflops": gflops(row["esm_cpp_fp32"]), "esm_cpp_best_gflops": gflops(row["esm_cpp_best"]), "esm_cpp_best_mode": row["esm_cpp_best_mode"],
            "fp32_peak_res_per_s": fp32_peak * 1e9 / flops, "fp32_peak_vs_esm_cpp_best": fp32_peak * 1e9 / flops / row["esm_cpp_best"],
            "fp32_target_res_per_s": fp32_target, "fp32_target_fraction_of_fp32_peak": gflops(fp32_target) / fp32_peak,
            "best_target_res_per_s": best_target, "best_target_fraction_of_fp32_peak": gflops(best_target) / fp32_peak,
            "best_target_fraction_of_bf16_peak": gflops(best_target) / bf16_peak,
        })  # fmt: skip
    return rows


def bf16_embedding_rows(precision: dict, train: dict) -> list[dict[str, Any]]:
    """Per profiled model: bf16's embedding gain while attention gains what it did, the rest as the products."""
    peak_ratio = train["matmul_peak_gflops_bf16"] / train["matmul_peak_gflops"]
    rows = []
    for row in precision.get("embedding", []):
        profile = row.get("profile")
        if profile is None:
            continue
        share = profile["fp32_attention_share"]
        rest = max(peak_ratio, profile["matmul_speedup"])
        bound = 1 / (share / profile["attention_speedup"] + (1 - share) / rest)
        left = 1 / EMBEDDING_BF16_TARGET - (1 - share) / rest  # the time attention may take, per fp32 second, for 1.8x
        rows.append({
            "model": row["model"], "measured_speedup": row["speedup"], "fp32_attention_share": share,
            "attention_speedup": profile["attention_speedup"], "rest_speedup": rest, "bound_speedup": bound,
            "attention_speedup_needed": share / left if left > 0 else None,
        })  # fmt: skip
    return rows


def roofline(results_dir: Path, data: Path) -> dict[str, Any]:
    """The document ``roofline.json`` holds, derived from ``results_dir``'s embed, train (and precision) results."""
    docs = {name: _load(results_dir, name) for name in NEEDED}
    if (results_dir / "precision.json").is_file():
        docs["precision"] = _load(results_dir, "precision")
    machine = _same_machine(docs)
    train = docs["train"]
    return {
        "benchmark": "roofline",
        "mode": docs["embed"]["mode"],
        "date": max(doc["date"] for doc in docs.values()),
        "command": "python benchmarks/roofline.py (derived, nothing timed)",
        "machine": machine,
        "derived_from": {f"{name}.json": doc["date"] for name, doc in docs.items()},
        "matmul_peak_gflops": train["matmul_peak_gflops"], "matmul_peak_gflops_bf16": train["matmul_peak_gflops_bf16"],
        "rows": engine_rows(docs["embed"], train, data),
        "bf16_embedding": bf16_embedding_rows(docs["precision"], train) if "precision" in docs else [],
    }  # fmt: skip


def write_roofline(results_dir: Path, data: Path) -> Path:
    """Derive and write ``results_dir/roofline.json`` (atomically); print its table."""
    from interplm_plugins.core.atomic import write_text_atomic

    document = roofline(results_dir, data)
    _common.print_table(
        f"Engines against the measured matmul peak ({document['matmul_peak_gflops']:.0f} GFLOP/s fp32, {document['matmul_peak_gflops_bf16']:.0f} bf16)",
        document["rows"],
        ["model", "mflop_per_residue", "ours_fp32_fraction_of_fp32_peak", "esm_cpp_best_gflops", "fp32_peak_vs_esm_cpp_best", "best_target_fraction_of_fp32_peak", "best_target_fraction_of_bf16_peak"],
    )
    if document["bf16_embedding"]:
        _common.print_table("bf16 embedding while attention gains what the profile measured", document["bf16_embedding"],
                            ["model", "measured_speedup", "fp32_attention_share", "attention_speedup", "bound_speedup", "attention_speedup_needed"])  # fmt: skip
    path = results_dir / "roofline.json"
    write_text_atomic(path, json.dumps(document, indent=2) + "\n")
    print(f"\nwrote {path}")
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--results-dir", type=Path, default=_common.RESULTS_DIR)
    p.add_argument("--data", type=Path, default=_common.SHARED_DATA, help=f"the shared data folder (default {_common.SHARED_DATA})")
    args = p.parse_args(argv)
    try:
        write_roofline(args.results_dir, args.data)
    except ResultMismatch as exc:
        print(f"roofline: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
