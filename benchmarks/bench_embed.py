"""Embedding throughput (residues/s): ``interplm embed`` against fair-esm's ``esm-extract``.

Both run as a user would run them, in their own process, on the same real proteins (the first
``--proteins`` of <= 1,022 residues from ../shared/data/sequences, so that esm-extract's
truncation at 1,022 changes nothing), the same model file and one middle layer:

- ours: ``python -m interplm_plugins.cli embed FASTA --model M.pt --layer L --out STORE``;
- theirs: fair-esm's esm-extract procedure (benchmarks/esm_extract_ref.py) with its defaults,
  ``--toks_per_batch 4096 --include per_tok --repr_layers L``.

Models: fair-esm ``ESM2`` with the 8M (6 layers x 320) and 35M (12 x 480) architectures and
random weights (``new_esm2``), saved in fair-esm's format; speed depends on the shapes only.
Wall-clock times include process start and model load for both; each tool runs ``--repeats``
times (alternating which goes first) and its best time counts. Afterwards every protein's
embeddings from both are compared (max absolute difference, float32).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

MODELS = {"8M": (6, 320, 20), "35M": (12, 480, 20)}


def _run(cmd: list[str]) -> tuple[float, str]:
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TQDM_DISABLE": "1"})
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return elapsed, proc.stdout


def compare(store_path: Path, extract_dir: Path, layer: int) -> dict[str, float]:
    import torch

    from interplm_plugins.core.plm.store import EmbeddingStore

    store = EmbeddingStore(store_path)
    worst_abs, scale, compared = 0.0, 0.0, 0
    for pid in store.proteins:
        theirs = torch.load(extract_dir / f"{pid}.pt", map_location="cpu", weights_only=True)["representations"][layer].numpy()
        ours = np.asarray(store.get(pid))
        if ours.shape != theirs.shape:
            raise AssertionError(f"{pid}: shapes differ, ours {ours.shape} theirs {theirs.shape}")
        worst_abs = max(worst_abs, float(np.abs(ours - theirs).max()))
        scale = max(scale, float(np.abs(theirs).max()))
        compared += 1
    return {"proteins_compared": compared, "max_abs_diff": worst_abs, "max_abs_value": scale}


def main(argv: list[str] | None = None) -> int:
    p = _common.parser(__doc__.splitlines()[0])
    p.add_argument("--proteins", type=int, default=1000, help="real proteins of <= 1,022 residues (default 1000)")
    p.add_argument("--models", default="8M,35M", help="comma-separated: 8M, 35M (default both)")
    p.add_argument("--repeats", type=int, default=2, help="runs of each tool per model, in alternating order; the best is kept (default 2)")
    p.add_argument("--toks-per-batch", type=int, default=4096)
    args = p.parse_args(argv)
    if args.quick:
        args.proteins, args.repeats, args.models = min(args.proteins, 6), 1, "8M"

    from interplm_plugins.core.inputs.sequences import write_fasta
    from interplm_plugins.core.plm.model import new_esm2, save_esm2_checkpoint

    rows, details = [], {}
    with _common.Workdir(args.workdir) as work:
        records = _common.benchmark_records(args.data, args.proteins, max_length=200 if args.quick else 1022)
        fasta = work / "proteins.fasta"
        write_fasta(records, fasta)
        residues = sum(len(r.sequence) for r in records)
        print(f"{len(records)} proteins, {residues} residues (<= {max(len(r.sequence) for r in records)} each)")
        for name in args.models.split(","):
            layers, dim, heads = MODELS[name]
            layer = layers // 2
            model_path = save_esm2_checkpoint(new_esm2(layers, dim, heads, seed=0), work / f"esm2_t{layers}_{name}_random.pt")
            ours_cmd = [sys.executable, "-m", "interplm_plugins.cli", "-q", "embed", str(fasta), "--model", str(model_path),
                        "--layer", str(layer), "--out", str(work / f"store_{name}"), "--no-resume",
                        "--toks-per-batch", str(args.toks_per_batch)]  # fmt: skip
            theirs_cmd = [sys.executable, str(Path(__file__).with_name("esm_extract_ref.py")), str(model_path), str(fasta),
                          str(work / f"extract_{name}"), "--repr_layers", str(layer), "--include", "per_tok",
                          "--toks_per_batch", str(args.toks_per_batch)]  # fmt: skip
            ours_times, theirs_times, theirs_inner = [], [], {}
            for repeat in range(args.repeats):
                for tool in ("theirs", "ours") if repeat % 2 == 0 else ("ours", "theirs"):
                    if tool == "ours":
                        ours_times.append(_run(ours_cmd)[0])
                    else:
                        elapsed, out = _run(theirs_cmd)
                        theirs_times.append(elapsed)
                        theirs_inner = json.loads(out.strip().splitlines()[-1])
            check = compare(work / f"store_{name}", work / f"extract_{name}", layer)
            ours_s, theirs_s = min(ours_times), min(theirs_times)
            row = {
                "model": f"ESM-2 {name} ({layers}x{dim})",
                "layer": layer,
                "ours_res_per_s": residues / ours_s,
                "esm_extract_res_per_s": residues / theirs_s,
                "speedup": theirs_s / ours_s,
                "ours_s": ours_s,
                "esm_extract_s": theirs_s,
                "max_abs_diff": check["max_abs_diff"],
            }
            rows.append(row)
            details[name] = {**row, "ours_runs_s": ours_times, "esm_extract_runs_s": theirs_times,
                             "esm_extract_inner": theirs_inner, "check": check}  # fmt: skip
            if check["max_abs_diff"] > 1e-3 * max(1.0, check["max_abs_value"]):
                raise AssertionError(f"embeddings differ from esm-extract's: {check}")
    _common.print_table(
        "Embedding throughput (residues/s, wall clock incl. start-up and model load)",
        rows,
        ["model", "layer", "ours_res_per_s", "esm_extract_res_per_s", "speedup", "max_abs_diff"],
    )
    _common.write_result(args, "embed", {
        "target": "speedup >= 2 (ours vs esm-extract)",
        "proteins": len(records), "residues": residues, "toks_per_batch": args.toks_per_batch,
        "rows": rows, "details": details,
    })  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
