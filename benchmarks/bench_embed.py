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

Engines (``--engines``, in-process compute time, no start-up): the same weights in one Hugging
Face folder (``EsmForMaskedLM`` saved by transformers, its ``model.safetensors`` named as the
published ESM-2 checkpoints are), loaded by each engine from there:

- ours: ``load_plm(folder)`` (the Hugging Face path), ``embed_sequences`` in ``--precision`` fp32
  and bf16, at the last layer (full depth) and at a middle layer (we stop there);
- esm.cpp 0.2.1 (``esm-cpp`` on PyPI: C++ kernels, AVX-512/VNNI/AMX, packed batches), each run
  in a process of its own (see :func:`esm_cpp_child`), timing its forward passes only: fp32 and
  INT8 (SmoothQuant, calibrated with esm.cpp's own procedure, ``forward_with_observer`` 99.9th
  percentiles and ``apply_smoothquant(alpha=0.5)``, on 16 proteins not timed, then
  ``quantize_weights``). Its fastest of three modes (one sequence at a time, ``forward_batch``,
  ``forward_scheduled``) is chosen for each on ``--mode-trial-proteins`` proteins and timed. It
  always runs the full depth and its LM head (about one more block's feed-forward);
- transformers ``EsmModel`` (eager attention), length-sorted padded batches of ``--toks-per-batch``.

Every engine gets ``--threads`` threads. Rounds alternate the engines' order; the median of
``--engine-repeats`` rounds counts. The last-layer embeddings of ours (fp32) are compared with
esm.cpp's fp32 hidden states and transformers', and the bf16 and INT8 errors are reported (INT8
on logits). Architectures: 8M, 35M and 150M (30 x 640), on ``--engine-proteins`` proteins each.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

MODELS = {"8M": (6, 320, 20), "35M": (12, 480, 20), "150M": (30, 640, 20)}


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


# ------------------------------------------------------------------------------ engines, in-process


def hf_esm2_folder(folder: Path, layers: int, dim: int, heads: int, seed: int = 0) -> Path:
    """A Hugging Face ESM-2 folder of these shapes (random weights), named as the published ones.

    transformers 5 writes layer norms as ``gamma``/``beta`` and no rotary ``inv_freq`` buffers;
    the published ``facebook/esm2_*`` ``model.safetensors`` have ``weight``/``bias`` and the
    buffers, which esm.cpp requires. Written the published way; our loader reads both.
    """
    sys.path.insert(0, str(_common.REPO / "tests"))
    from hf_models import save_hf_esm2  # the test suite's real-format HF folders (one place)
    from safetensors.torch import load_file, save_file
    import torch

    save_hf_esm2(folder, layers=layers, dim=dim, heads=heads, seed=seed)
    weights = folder / "model.safetensors"
    state = {k.replace("LayerNorm.gamma", "LayerNorm.weight").replace("LayerNorm.beta", "LayerNorm.bias"): v
             for k, v in load_file(weights).items() if "*" not in k}  # fmt: skip
    head_dim = dim // heads
    inv_freq = 1.0 / 10000 ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    for i in range(layers):
        state.setdefault(f"esm.encoder.layer.{i}.attention.self.rotary_embeddings.inv_freq", inv_freq.clone())
    save_file(state, weights, metadata={"format": "pt"})
    return folder


def _padded_batches(records, toks_per_batch: int):
    """Length-sorted batches of at most ``toks_per_batch`` padded tokens (as ours and esm-extract batch)."""
    ordered = sorted(records, key=lambda r: len(r.sequence))
    batch: list = []
    for rec in ordered:
        if batch and (len(batch) + 1) * (len(rec.sequence) + 2) > toks_per_batch:
            yield batch
            batch = []
        batch.append(rec)
    if batch:
        yield batch


ESM_CPP_MODES = ("one sequence at a time", "forward_batch", "forward_scheduled")


def esm_cpp_child(spec: dict) -> dict:
    """esm.cpp in a process of its own: load, (for INT8) calibrate and quantize, time one mode.

    Its own process because esm.cpp 0.2.1 and torch's oneDNN both drive this CPU's AMX tiles: in
    one process esm.cpp dies of SIGILL once torch has run a bf16 product on the same thread.
    ``spec["dump"]``: also write the first proteins' last hidden states and logits there (.npz).
    """
    os.environ["ESM_NUM_THREADS"] = str(spec["threads"])  # sized at the first model load
    import esm_cpp

    from interplm_plugins.core.inputs.sequences import read_fasta

    tokenizer = esm_cpp.Tokenizer()
    encode = lambda records: [np.asarray(tokenizer.encode(r.sequence), dtype=np.int32) for r in records]  # noqa: E731
    ids = encode(read_fasta(spec["fasta"]))
    model = esm_cpp.Model.load_from_safetensors(spec["weights"])
    if spec["int8"]:  # esm.cpp's own procedure (esm_cpp.quantize --calibrate, then --apply-smoothquant)
        observer = esm_cpp.ActivationObserver()
        for tokens in encode(read_fasta(spec["calibration_fasta"])):
            model.forward_with_observer(tokens, None, observer)
        model.apply_smoothquant(observer.percentile(99.9), 0.5)
        model.quantize_weights()
    run = {
        "one sequence at a time": lambda: [model.forward(tokens) for tokens in ids],
        "forward_batch": lambda: model.forward_batch(ids),
        "forward_scheduled": lambda: model.forward_scheduled(ids),
    }[spec["mode"]]
    seconds = _common.timed(run)[0]
    if spec.get("dump"):
        first = ids[: spec["dump_proteins"]]
        arrays = {f"logits_{i}": model.forward(tokens) for i, tokens in enumerate(first)}
        if not spec["int8"]:  # (its INT8 model also dies of SIGILL in forward_with_hidden_states here)
            arrays.update({f"hidden_{i}": model.forward_with_hidden_states(tokens)[1][-1] for i, tokens in enumerate(first)})
        np.savez(spec["dump"], **arrays)
    return {"seconds": seconds, "isa": esm_cpp.current_isa()}


def in_process_runners(folder: Path, records, layers: int, toks_per_batch: int) -> tuple[dict, dict]:
    """``{engine: callable}`` for ours and transformers, each embedding every record once, and the loaded models."""
    import torch
    import transformers
    from transformers import EsmModel

    from interplm_plugins.core.plm.embed import embed_sequences
    from interplm_plugins.core.plm.loading import load_plm

    plm = load_plm(str(folder))
    transformers.logging.set_verbosity_error()  # (its load report lists the LM head EsmModel does not use)
    hf = EsmModel.from_pretrained(str(folder), attn_implementation="eager", add_pooling_layer=False).eval()
    converter = plm.alphabet.get_batch_converter()
    hf_batches = [converter([(r.id, r.sequence) for r in batch])[2] for batch in _padded_batches(records, toks_per_batch)]
    pad = plm.alphabet.padding_idx

    def ours(precision: str, layer: int):
        return lambda: sum(1 for _ in embed_sequences(plm, records, [layer], toks_per_batch=toks_per_batch, precision=precision))

    def transformers_eager():
        with torch.inference_mode():
            for tokens in hf_batches:
                hf(input_ids=tokens, attention_mask=tokens.ne(pad)).last_hidden_state

    middle = layers // 2
    runners = {"ours fp32": ours("fp32", layers), "ours bf16": ours("bf16", layers),
               f"ours fp32, layer {middle}": ours("fp32", middle), f"ours bf16, layer {middle}": ours("bf16", middle),
               "transformers eager fp32": transformers_eager}  # fmt: skip
    return runners, {"plm": plm, "hf": hf}


def engine_agreement(models: dict, records, layers: int, dumps: dict[str, Path]) -> dict[str, float]:
    """Last-layer embeddings: ours (fp32, bf16) against esm.cpp fp32 and transformers; esm.cpp INT8's logits against its fp32 ones."""
    import torch

    from interplm_plugins.core.plm.embed import embed_sequences

    plm = models["plm"]
    ours = {p: dict(embed_sequences(plm, records, [layers], precision=p)) for p in ("fp32", "bf16")}
    cpp = {name: np.load(path) for name, path in dumps.items()}
    pairs: dict[str, list] = {"esm_cpp_fp32_vs_ours_fp32": [], "transformers_vs_ours_fp32": [], "ours_bf16_vs_fp32": [], "esm_cpp_int8_vs_fp32_logits": []}
    converter = plm.alphabet.get_batch_converter()
    for i, rec in enumerate(records):
        with torch.inference_mode():
            hf = models["hf"](input_ids=converter([(rec.id, rec.sequence)])[2]).last_hidden_state[0, 1:-1].numpy()
        mine = ours["fp32"][rec.id][layers]
        pairs["esm_cpp_fp32_vs_ours_fp32"].append((cpp["fp32"][f"hidden_{i}"][1:-1], mine))
        pairs["transformers_vs_ours_fp32"].append((hf, mine))
        pairs["ours_bf16_vs_fp32"].append((ours["bf16"][rec.id][layers], mine))
        pairs["esm_cpp_int8_vs_fp32_logits"].append((cpp["int8"][f"logits_{i}"], cpp["fp32"][f"logits_{i}"]))
    out = {}
    for key, items in pairs.items():
        out[f"max_abs_{key}"] = max(float(np.abs(a - b).max()) for a, b in items)
        out[f"mean_relative_error_{key}"] = float(np.mean([np.linalg.norm(a - b) / np.linalg.norm(b) for a, b in items]))
    return out


ENGINE_CALIBRATION_PROTEINS = 16


def engine_records(data: Path, count: int, quick: bool) -> tuple[list, list]:
    """The engines' ``count`` timed proteins, and the 16 after them that calibrate esm.cpp's INT8."""
    pool = _common.benchmark_records(data, count + ENGINE_CALIBRATION_PROTEINS, max_length=200 if quick else 1022)
    return pool[:count], pool[count:]


def measure_engines(args, work: Path) -> tuple[list[dict], dict]:
    """One row per architecture: each engine's residues/s (median of alternating rounds) and the ratios."""
    import torch

    from interplm_plugins.core.inputs.sequences import write_fasta

    torch.set_num_threads(args.threads)
    rows, details = [], {}
    for name in args.engine_models.split(","):
        layers, dim, heads = MODELS[name]
        count = int(dict(item.split("=") for item in args.engine_proteins.split(","))[name])
        records, calibration = engine_records(args.data, count, args.quick)
        residues = sum(len(r.sequence) for r in records)
        folder = hf_esm2_folder(work / f"hf_esm2_{name}", layers, dim, heads)
        fasta, calibration_fasta = work / f"engines_{name}.fasta", work / f"calibration_{name}.fasta"
        write_fasta(records, fasta)
        write_fasta(calibration, calibration_fasta)
        runners, models = in_process_runners(folder, records, layers, args.toks_per_batch)
        dumps = {p: work / f"esm_cpp_{name}_{p}.npz" for p in ("fp32", "int8")}
        trial_fasta = work / f"trial_{name}.fasta"
        write_fasta(records[: args.mode_trial_proteins], trial_fasta)
        mode_trials = {}
        for precision in ("fp32", "int8"):  # esm.cpp's fastest mode for each precision, chosen on a few proteins, is the one timed
            spec = {"weights": str(folder / "model.safetensors"), "fasta": str(trial_fasta), "calibration_fasta": str(calibration_fasta),
                    "int8": precision == "int8", "threads": args.threads, "dump": None, "dump_proteins": 5}  # fmt: skip
            trial = {mode: _common.run_child(__file__, {**spec, "mode": mode})["seconds"] for mode in ESM_CPP_MODES}
            mode_trials[precision] = trial
            fastest = min(trial, key=trial.get)
            runners[f"esm.cpp {precision}, {fastest}"] = {**spec, "fasta": str(fasta), "mode": fastest}
        times: dict[str, list[float]] = {k: [] for k in runners}
        for round_ in range(args.engine_repeats):
            for engine in list(runners) if round_ % 2 == 0 else list(reversed(runners)):
                runner = runners[engine]
                if isinstance(runner, dict):  # esm.cpp, in its own process: the time of the forward passes only
                    dump = dumps["int8" if runner["int8"] else "fp32"] if round_ == 0 else None
                    times[engine].append(_common.run_child(__file__, {**runner, "dump": dump and str(dump)})["seconds"])
                else:
                    times[engine].append(_common.timed(runner)[0])
        speed = {k: residues / _common.median(v) for k, v in times.items()}
        cpp_fp32 = max(v for k, v in speed.items() if k.startswith("esm.cpp fp32"))
        best_mode = max((k for k in speed if k.startswith("esm.cpp")), key=speed.get)
        agreement = engine_agreement(models, records[:5], layers, dumps)
        if agreement["max_abs_esm_cpp_fp32_vs_ours_fp32"] > 1e-3 or agreement["max_abs_transformers_vs_ours_fp32"] > 1e-3:
            raise AssertionError(f"{name}: engines' embeddings differ: {agreement}")
        row = {
            "model": f"ESM-2 {name} ({layers}x{dim})", "proteins": len(records), "residues": residues,
            "ours_fp32": speed["ours fp32"], "ours_bf16": speed["ours bf16"],
            "esm_cpp_fp32": cpp_fp32, "esm_cpp_best": speed[best_mode], "esm_cpp_best_mode": best_mode,
            "transformers": speed["transformers eager fp32"],
            "fp32_vs_esm_cpp_fp32": speed["ours fp32"] / cpp_fp32, "bf16_vs_esm_cpp_best": speed["ours bf16"] / speed[best_mode],
            "fp32_vs_esm_cpp_best": speed["ours fp32"] / speed[best_mode], "bf16_vs_fp32": speed["ours bf16"] / speed["ours fp32"],
            "max_abs_diff_esm_cpp": agreement["max_abs_esm_cpp_fp32_vs_ours_fp32"],
        }  # fmt: skip
        rows.append(row)
        details[name] = {**row, "residues_per_s": speed, "runs_s": times, "agreement": agreement, "esm_cpp_mode_trials_s": mode_trials}
        del runners, models
    return rows, details


def main(argv: list[str] | None = None) -> int:
    p = _common.parser(__doc__.splitlines()[0])
    p.add_argument("--proteins", type=int, default=1000, help="real proteins of <= 1,022 residues (default 1000)")
    p.add_argument("--models", default="8M,35M", help="comma-separated: 8M, 35M (default both)")
    p.add_argument("--repeats", type=int, default=2, help="runs of each tool per model, in alternating order; the best is kept (default 2)")
    p.add_argument("--toks-per-batch", type=int, default=4096)
    p.add_argument("--engines", action=argparse.BooleanOptionalAction, default=True, help="also time esm.cpp and transformers in-process (default on)")
    p.add_argument("--engine-models", default="8M,35M,150M", help="architectures for the engines (default 8M,35M,150M)")
    p.add_argument("--engine-proteins", default="8M=200,35M=100,150M=30", help="proteins per architecture for the engines (default 8M=200,35M=100,150M=30)")
    p.add_argument("--mode-trial-proteins", type=int, default=20, help="proteins on which esm.cpp's fastest mode is chosen (default 20)")
    p.add_argument("--engine-repeats", type=int, default=3, help="alternating rounds of every engine; the median counts (default 3)")
    p.add_argument("--threads", type=int, default=2, help="threads for every engine (default 2)")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if _common.child_mode(args, esm_cpp_child):
        return 0
    if args.quick:
        args.proteins, args.repeats, args.models = min(args.proteins, 6), 1, "8M"
        args.engine_proteins, args.mode_trial_proteins, args.engine_repeats, args.engine_models = "8M=4", 2, 1, "8M"
    os.environ["ESM_NUM_THREADS"] = str(args.threads)  # esm.cpp sizes its thread pool from it at its first model load

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
        engine_rows, engine_details = measure_engines(args, work) if args.engines else ([], {})
    _common.print_table(
        "Embedding throughput (residues/s, wall clock incl. start-up and model load)",
        rows,
        ["model", "layer", "ours_res_per_s", "esm_extract_res_per_s", "speedup", "max_abs_diff"],
    )
    if engine_rows:
        _common.print_table(
            f"Engines, last layer, in-process compute (residues/s, {args.threads} threads each, median of {args.engine_repeats} rounds)",
            engine_rows,
            ["model", "proteins", "ours_fp32", "ours_bf16", "esm_cpp_fp32", "esm_cpp_best", "esm_cpp_best_mode", "transformers",
             "fp32_vs_esm_cpp_fp32", "bf16_vs_esm_cpp_best"],
        )  # fmt: skip
    _common.write_result(args, "embed", {
        "target": "speedup >= 2 (ours vs esm-extract); engines: ours fp32 >= 2x esm.cpp fp32, our fastest path with unchanged "
                  "conclusions (bench_precision's verdict) >= 1.5x esm.cpp's fastest mode",
        "proteins": len(records), "residues": residues, "toks_per_batch": args.toks_per_batch,
        "rows": rows, "details": details, "engines": engine_rows, "engine_details": engine_details,
    })  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
