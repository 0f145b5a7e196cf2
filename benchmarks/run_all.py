"""Run every benchmark, then summarise their JSON results as a Markdown table (results/SUMMARY.md).

    python benchmarks/run_all.py            # full sizes (tens of minutes; run on a quiet machine)
    python benchmarks/run_all.py --quick    # seconds each: a smoke run, numbers not meaningful
    python benchmarks/run_all.py --only embed,train
    python benchmarks/run_all.py --summary-only   # re-summarise existing results

Each benchmark runs in its own process (``benchmarks/bench_<name>.py``); one that fails is
reported and the others still run; the exit status is non-zero if any failed. After them,
``roofline.py`` derives ``roofline.json`` (the engine targets against the measured matmul peak)
from the embed, train and precision results, when the embed and train results are there.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402
import roofline  # noqa: E402

BENCHMARKS = ["embed", "train", "concepts", "pymol", "mutate", "memory", "distributed", "precision", "rounding", "scaling"]
DERIVED = ["roofline"]  # computed from the benchmarks' results, nothing timed


def _fmt(value, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}g}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)


def summary_rows(results: dict[str, dict]) -> list[tuple[str, str, str, str]]:
    """(benchmark, what, result, target) rows from the JSON results present."""
    rows = []
    if "embed" in results:
        for r in results["embed"]["rows"]:
            rows.append(("embedding", f"{r['model']}, layer {r['layer']}: residues/s ours vs esm-extract",
                         f"{_fmt(r['ours_res_per_s'])} vs {_fmt(r['esm_extract_res_per_s'])} = **{r['speedup']:.2f}x** (max diff {r['max_abs_diff']:.1e})", ">= 2x"))  # fmt: skip
        for r in results["embed"].get("engines", []):
            rows.append(("embedding engines", f"{r['model']}, last layer, in-process: residues/s ours fp32 vs esm.cpp fp32 (its fastest mode)",
                         f"{_fmt(r['ours_fp32'])} vs {_fmt(r['esm_cpp_fp32'])} = **{r['fp32_vs_esm_cpp_fp32']:.2f}x** (max diff {r['max_abs_diff_esm_cpp']:.1e}); "
                         f"transformers eager {_fmt(r['transformers'])}", ">= 2x"))  # fmt: skip
            rows.append(("embedding engines", f"... ours bf16 / ours fp32 vs esm.cpp's fastest ({r['esm_cpp_best_mode'].removeprefix('esm.cpp ')})",
                         f"{_fmt(r['ours_bf16'])} / {_fmt(r['ours_fp32'])} vs {_fmt(r['esm_cpp_best'])} = **{r['bf16_vs_esm_cpp_best']:.2f}x** / "
                         f"**{r['fp32_vs_esm_cpp_best']:.2f}x**", ">= 1.5x (path with unchanged conclusions)"))  # fmt: skip
    if "train" in results:
        t = results["train"]
        by = {r["trainer"]: r for r in t["rows"]}
        ours = by["ours: train_step"]
        std = by["dictionary_learning StandardTrainer"]
        april = by["dictionary_learning StandardTrainerAprilUpdate"]
        rows.append(("SAE training", f"ReLU {t['d_in']}->{t['d_hidden']}, batch {t['batch_size']}: tokens/s ours vs dictionary_learning StandardTrainer",
                     f"{_fmt(ours['tokens_per_s'])} vs {_fmt(std['tokens_per_s'])} = **{std['ours_speedup']:.2f}x**", ">= 1.5x"))  # fmt: skip
        rows.append(("SAE training", "... vs StandardTrainerAprilUpdate (the same loss as ours)",
                     f"{_fmt(april['tokens_per_s'])} = **{april['ours_speedup']:.2f}x**", ""))  # fmt: skip
        bf16 = by.get("ours: train_step bf16")
        if bf16 is not None:
            rows.append(("SAE training", "... ours `--precision bf16` vs StandardTrainerAprilUpdate",
                         f"{_fmt(bf16['tokens_per_s'])} vs {_fmt(april['tokens_per_s'])} = **{april['ours_bf16_speedup']:.2f}x** ({bf16['tokens_per_s'] / ours['tokens_per_s']:.2f}x our fp32)", ">= 2x"))  # fmt: skip
        rows.append(("SAE training", f"fraction of this CPU's float32 matmul peak ({_fmt(t['matmul_peak_gflops'])} GFLOP/s), model FLOPs 6*d*h/token",
                     f"ours {ours['fraction_of_peak']:.0%}, StandardTrainer {std['fraction_of_peak']:.0%}", ""))  # fmt: skip
        if bf16 is not None:
            rows.append(("SAE training", f"... ours bf16, of the bfloat16 matmul peak ({_fmt(t['matmul_peak_gflops_bf16'])} GFLOP/s)",
                         f"{bf16['fraction_of_peak']:.0%}", ""))  # fmt: skip
        topk = {r["trainer"]: r for r in t.get("topk_rows", [])}
        for label in ("TopK", "BatchTopK", "MatryoshkaBatchTopK"):
            if f"dictionary_learning {label}Trainer" not in topk:
                continue
            theirs, ours_k, ours_k_bf16 = topk[f"dictionary_learning {label}Trainer"], topk[f"ours: train_step {label}"], topk[f"ours: train_step {label} bf16"]
            rows.append(("SAE training", f"{label} (k = {t['topk_k']}) {t['d_in']}->{t['d_hidden']}, same batches: tokens/s ours (sparse products) fp32 / bf16 vs dictionary_learning {label}Trainer",
                         f"{_fmt(ours_k['tokens_per_s'])} / {_fmt(ours_k_bf16['tokens_per_s'])} vs {_fmt(theirs['tokens_per_s'])} = "
                         f"**{theirs['ours_speedup']:.2f}x** / **{theirs['ours_bf16_speedup']:.2f}x**", ""))  # fmt: skip
        trained = t.get("trained")
        if trained is not None:
            tr = {r["trainer"]: r for r in trained["rows"]}
            std_t, april_t = tr["dictionary_learning StandardTrainer"], tr["dictionary_learning StandardTrainerAprilUpdate"]
            rows.append(("SAE training", f"ReLU resumed from a trained SAE, {trained['sae']}, {trained['active_fraction']:.1%} of activations nonzero (sparse products under {trained['sparse_relu_max_density']['fp32']:.0%} fp32, {trained['sparse_relu_max_density']['bf16']:.0%} bf16): ours fp32 / bf16 vs StandardTrainer",
                         f"{_fmt(tr['ours: train_step']['tokens_per_s'])} / {_fmt(tr['ours: train_step bf16']['tokens_per_s'])} vs {_fmt(std_t['tokens_per_s'])} = "
                         f"**{std_t['ours_speedup']:.2f}x** / **{std_t['ours_bf16_speedup']:.2f}x**", ">= 1.5x (fp32)"))  # fmt: skip
            rows.append(("SAE training", "... vs StandardTrainerAprilUpdate",
                         f"{_fmt(april_t['tokens_per_s'])} = **{april_t['ours_speedup']:.2f}x** / **{april_t['ours_bf16_speedup']:.2f}x**", ">= 2x (fastest)"))  # fmt: skip
        jumprelu = t.get("jumprelu")
        if jumprelu is not None:
            for start, what in (("fresh", f"from a fresh SAE {t['d_in']}->{t['d_hidden']}"),
                                ("trained", f"from {jumprelu['trained']['sae']}, {jumprelu['trained']['fired_fraction']:.1%} of activations nonzero")):
                jr = {r["trainer"]: r for r in jumprelu[start]["rows"]}
                theirs = jr["dictionary_learning JumpReluTrainer"]
                rows.append(("SAE training", f"JumpReLU {what}: tokens/s ours fp32 / bf16 vs dictionary_learning JumpReluTrainer",
                             f"{_fmt(jr['ours: train_step JumpReLU']['tokens_per_s'])} / {_fmt(jr['ours: train_step JumpReLU bf16']['tokens_per_s'])} vs "
                             f"{_fmt(theirs['tokens_per_s'])} = **{theirs['ours_speedup']:.2f}x** / **{theirs['ours_bf16_speedup']:.2f}x**", ""))  # fmt: skip
    if "concepts" in results:
        c = results["concepts"]
        ours, interplm, row = c["rows"]
        rows.append(("concept metrics", f"{c['residues']:,} residues x {c['features']:,} features x {c['concepts']} concepts x {len(c['thresholds'])} thresholds",
                     f"{_fmt(ours['seconds'])} s vs {_fmt(interplm['seconds'])} s (InterPLM-style loop{', scaled from ' + str(c['reference_concepts_timed']) + ' concepts' if c['reference_concepts_timed'] < c['concepts'] else ''}) = **{interplm['speedup_of_ours']:.1f}x**, identical counts", ">= 20x"))  # fmt: skip
        rows.append(("concept metrics", "... vs a loop over each concept's labelled rows", f"{_fmt(row['seconds'])} s = {row['speedup_of_ours']:.1f}x", ""))
    if "pymol" in results:
        pm = results["pymol"]
        by = {r["measure"].split(" (")[0].strip(): r for r in pm["rows"]}
        rows.append(("PyMOL", f"`interplm color` on {pm['structure']} ({pm['residues']} residues), cold: new session incl. pipeline load",
                     f"{_fmt(pm['rows'][0]['value'])} s", ""))  # fmt: skip
        rows.append(("PyMOL", "`interplm color`, warm (recolour; median / p95)", f"{_fmt(pm['rows'][3]['value'])} s / {_fmt(pm['rows'][4]['value'])} s", "< 0.2 s"))
        for name in ("top_examples", "features_for_concept", "features_active_at"):
            med = next(r for r in pm["rows"] if r["measure"].startswith(f"FeatureDatabase.{name} (median"))
            p95 = next(r for r in pm["rows"] if r["measure"].startswith(f"FeatureDatabase.{name} (95th"))
            rows.append(("feature database", f"`{name}` ({pm['query_database']} database; median / p95)", f"{_fmt(med['value'])} ms / {_fmt(p95['value'])} ms", "< 10 ms"))
    if "mutate" in results:
        mu = results["mutate"]
        rows.append(("mutation scan", f"{mu['positions']} positions x 19 of a {mu['residues']}-residue protein, embedded default",
                     f"**{_fmt(mu['cold_cpu_per_thread_s'])} s** CPU per thread cold ({_fmt(mu['cold_s'])} s wall at load {mu['load_average'][0]:.1f}; {_fmt(mu['speedup'])}x one mutant at a time), {_fmt(mu['warm_s'])} s for another feature", "< 60 s"))  # fmt: skip
    if "memory" in results:
        m = results["memory"]
        for r in m["rows"]:
            value = f"peak RSS {_fmt(r['peak_rss_gib'])} GiB = {r['rss_over_store']:.2f} x store" if r["peak_rss_gib"] is not None else r["note"]
            rows.append(("memory", f"{r['run']}, {m['store_bytes'] / 2**30:.2f} GiB store", value, "well under 1 x store" if r["run"].startswith("ours") else ""))
    if "distributed" in results:
        d = results["distributed"]
        for r in d["rows"][1:]:
            rows.append(("torchrun", f"{r['processes']} processes x {r['threads_each']} threads vs 1 x {d['rows'][0]['threads_each']}",
                         (f"embed {r['embed_speedup']:.2f}x, " if r.get("embed_speedup") else "") +
                         f"train {r['train_speedup']:.2f}x; max weight diff {d['check'].get('max_abs_weight_diff', 0):.1e}", "equal results"))  # fmt: skip
    if "precision" in results:
        pr = results["precision"]
        for r in pr["embedding"]:
            rows.append(("bf16 compute", f"embedding, {r['model']}: residues/s bf16 vs fp32",
                         f"{_fmt(r['bf16_res_per_s'])} vs {_fmt(r['fp32_res_per_s'])} = **{r['speedup']:.2f}x**", ">= 1.8x"))  # fmt: skip
            if "profile" in r:
                pf = r["profile"]
                rows.append(("bf16 compute", "... where the time goes (CPU s under the profiler, fp32 -> bf16)",
                             f"attention {pf['fp32']['attention_s']:.2f} -> {pf['bf16']['attention_s']:.2f} ({pf['attention_speedup']:.2f}x); "
                             f"matrix products {pf['fp32']['matmul_s']:.2f} -> {pf['bf16']['matmul_s']:.2f} ({pf['matmul_speedup']:.2f}x); "
                             f"the rest {pf['fp32']['other_s']:.2f} -> {pf['bf16']['other_s']:.2f}", ""))  # fmt: skip
        for r in pr["training"]:
            rows.append(("bf16 compute", f"SAE training {r['sae']}, batch {r['batch_size']}: tokens/s bf16 vs fp32",
                         f"{_fmt(r['bf16_tokens_per_s'])} vs {_fmt(r['fp32_tokens_per_s'])} = **{r['speedup']:.2f}x**", ">= 1.5x"))  # fmt: skip
        e, c = pr["error"], pr["concepts"]
        rows.append(("bf16 compute", f"embedded default, {e['proteins']} proteins: SAE activations bf16 vs fp32",
                     f"max abs error {_fmt(e['activation_max_abs_error'])}, mean relative {_fmt(e['activation_mean_relative_error'])}; "
                     f"active features per residue Jaccard {e['active_set_jaccard_mean']:.3f} (worst {e['active_set_jaccard_min']:.2f})", ""))  # fmt: skip
        rows.append(("bf16 compute", f"test F1 of the {c['chosen_matches']} matches the demo database chose, bf16 vs fp32",
                     f"max change **{c['max_abs_f1_change']:.4f}**, {c['matches_changed_over_tolerance']} over 0.01", "<= 0.01"))  # fmt: skip
    if "rounding" in results:
        ro = {r["embeddings"]: r for r in results["rounding"]["rows"]}
        rows.append(("bf16 compute", "... the same check on other embeddings: fp32 rounded to float16 / to bfloat16; fair-esm's own fp32 blocks",
                     " / ".join(f"{ro[n]['matches_changed_over_tolerance']} over 0.01" for n in ("float16", "bfloat16", "fair-esm blocks"))
                     + f" (bf16 compute: {ro['bf16 compute']['matches_changed_over_tolerance']})", ""))  # fmt: skip
    if "scaling" in results:
        rows += scaling_rows(results["scaling"])
    if "roofline" in results:
        rows += roofline_rows(results["roofline"])
    return rows


def roofline_rows(rl: dict) -> list[tuple[str, str, str, str]]:
    """What the engine targets need of the measured matmul peak, and what bf16 embedding can gain."""
    rows = []
    for r in rl["rows"]:
        rows.append(("roofline", f"{r['model']}: {r['mflop_per_residue']:.1f} MFLOP per residue ({r['attention_flop_share']:.0%} attention); "
                                 f"fractions of the measured {_fmt(rl['matmul_peak_gflops'])} GFLOP/s fp32 peak",
                     f"ours fp32 {r['ours_fp32_fraction_of_fp32_peak']:.0%}; 2x esm.cpp fp32 needs {r['fp32_target_fraction_of_fp32_peak']:.0%}; "
                     f"1.5x esm.cpp's fastest ({_fmt(r['esm_cpp_best_gflops'])} GFLOP/s) needs **{r['best_target_fraction_of_fp32_peak']:.0%}** "
                     f"(fp32 at the peak: {r['fp32_peak_vs_esm_cpp_best']:.2f}x esm.cpp's fastest), {r['best_target_fraction_of_bf16_peak']:.0%} of the bf16 peak", ""))  # fmt: skip
    for r in rl["bf16_embedding"]:
        needed = r["attention_speedup_needed"]
        rows.append(("roofline", f"bf16 embedding, {r['model']}: attention {r['fp32_attention_share']:.0%} of fp32 op time, gains {r['attention_speedup']:.2f}x",
                     f"at most **{r['bound_speedup']:.2f}x** with the rest at {r['rest_speedup']:.2f}x (measured {r['measured_speedup']:.2f}x); "
                     + (f"1.8x needs attention at {needed:.2f}x" if needed is not None else "1.8x out of reach whatever attention gains"), ""))  # fmt: skip
    return rows


def scaling_rows(sc: dict) -> list[tuple[str, str, str, str]]:
    """The cost curves in a few lines: each curve's largest point (the PNG has them all)."""
    def curve(name: str) -> list[dict]:
        return [r for r in sc["rows"] if r["curve"] == name]

    rows = []
    by_length = curve("embed vs length")
    for model in dict.fromkeys(r["model"] for r in by_length):
        pts = sorted((r for r in by_length if r["model"] == model), key=lambda r: r["length"])
        rates = " / ".join(f"{_fmt(r['residues_per_s'])} at {r['length']:,}" for r in pts if r is pts[0] or r["length"] == 1022 or r is pts[-1])
        rows.append(("cost curves", f"embedding vs length, {model} (layer {pts[0]['layer']}), ~{sc['residues_per_length']:,} residues per length: residues/s",
                     f"{rates}; peak memory above the loaded model {_fmt(pts[-1]['extra_rss_mib'])} MiB at {pts[-1]['length']:,}", ""))  # fmt: skip
    if curve("embed vs proteins"):
        big = curve("embed vs proteins")[-1]
        rows.append(("cost curves", f"embedding {big['proteins']:,} corpus proteins ({big['residues']:,} residues), embedded default",
                     f"{_fmt(big['seconds'])} s ({_fmt(big['residues_per_s'])} residues/s)", ""))  # fmt: skip
    if curve("count_matches vs residues"):
        big = curve("count_matches vs residues")[-1]
        rows.append(("cost curves", f"`count_matches`, {big['residues']:,} annotated residues x {big['features']:,} features x {big['concepts']} concepts",
                     f"{_fmt(big['seconds'])} s ({_fmt(1e6 * big['s_per_residue'])} s per million residues), numpy peak {_fmt(big['peak_alloc_mib'])} MiB", ""))  # fmt: skip
    if curve("build-db vs proteins"):
        big = curve("build-db vs proteins")[-1]
        rows.append(("cost curves", f"`build_database` (build-db) on {big['proteins']} annotated proteins ({big['residues']:,} residues)",
                     f"{_fmt(big['seconds'])} s, database {_fmt(big['database_mib'])} MiB", ""))  # fmt: skip
    whole = [r for r in curve("interplm embed (corpus)") if r["proteins"] == sc["corpus"]["proteins"]]
    if whole:
        r = whole[-1]
        rows.append(("cost curves", f"`interplm embed --dtype float16`, whole corpus ({r['proteins']:,} proteins, {r['residues'] / 1e6:.1f} M residues)",
                     f"**{r['kind']}**: {_fmt(r['seconds'] / 60)} min, store {_fmt(r['store_gib'])} GiB, peak RSS {_fmt(r['peak_rss_mib'] / 1024)} GiB", ""))  # fmt: skip
    if curve("mutation scan vs positions"):
        big = curve("mutation scan vs positions")[-1]
        rows.append(("cost curves", f"mutation scan, cold, {big['positions']} positions x 19 of a {big['length']}-residue protein",
                     f"{_fmt(big['seconds'])} s ({_fmt(big['s_per_position'])} s per position)", ""))  # fmt: skip
    return rows


def summarise(results_dir: Path) -> str:
    results = {}
    for name in [*BENCHMARKS, *DERIVED]:
        path = results_dir / f"{name}.json"
        if path.is_file():
            results[name] = json.loads(path.read_text())
    if not results:
        return "(no results yet)\n"
    modes = sorted({r["mode"] for r in results.values()})
    dates = sorted(r["date"] for r in results.values())
    machines: dict[str, list[str]] = {}  # results of separate runs may come from different machines: name each
    for name, r in results.items():
        m = r["machine"]
        machines.setdefault(f"{m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, torch {m['torch']} ({m['torch_threads']} threads), "
                            f"Python {m['python']}{', GPU ' + m['gpu'] if m.get('gpu') else ''}", []).append(name)  # fmt: skip
    if len(machines) == 1:
        machine_line = f"Machine: {next(iter(machines))}"
    else:
        machine_line = "Machines: " + "; ".join(f"{described} ({', '.join(names)})" for described, names in machines.items())
    lines = [
        f"{machine_line}; load average at start {', '.join(str(r['machine']['load_average_at_start']) for r in results.values())}.",
        f"Mode: **{' + '.join(modes)}**{' (small sizes: smoke-run numbers, not the measurement)' if 'quick' in modes else ''}; results written {dates[0]} to {dates[-1]}.",
        "",
        "| benchmark | what | result | target |",
        "|---|---|---|---|",
    ]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in summary_rows(results)]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--only", help=f"comma-separated subset of {','.join(BENCHMARKS)}")
    p.add_argument("--results-dir", type=Path, default=_common.RESULTS_DIR)
    p.add_argument("--summary-only", action="store_true", help="only rewrite SUMMARY.md from existing results")
    p.add_argument("--data", type=Path, default=_common.SHARED_DATA, help=f"the shared data folder, passed to each benchmark (default {_common.SHARED_DATA})")
    args, extra = p.parse_known_args(argv)
    names = BENCHMARKS if not args.only else [n.strip() for n in args.only.split(",")]
    unknown = sorted(set(names) - set(BENCHMARKS))
    if unknown:
        p.error(f"unknown benchmarks {unknown}")
    failed = []
    if not args.summary_only:
        for name in names:
            cmd = [sys.executable, str(Path(__file__).with_name(f"bench_{name}.py")), "--results-dir", str(args.results_dir), "--data", str(args.data), *extra]
            if args.quick:
                cmd.append("--quick")
            print(f"\n=== {name}: {' '.join(cmd[1:])}", flush=True)
            start = time.perf_counter()
            if subprocess.run(cmd).returncode != 0:
                failed.append(name)
            print(f"=== {name}: {'FAILED' if name in failed else 'done'} in {time.perf_counter() - start:.0f} s", flush=True)
        if all((args.results_dir / f"{name}.json").is_file() for name in roofline.NEEDED):
            try:
                roofline.write_roofline(args.results_dir, args.data)
            except roofline.ResultMismatch as exc:  # e.g. embed.json of an earlier run on another machine
                print(f"roofline: {exc}", file=sys.stderr)
                failed.append("roofline")
    from interplm_plugins.core.atomic import write_text_atomic

    text = summarise(args.results_dir)
    write_text_atomic(args.results_dir / "SUMMARY.md", text)
    print("\n" + text)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
