"""Smoke run of the benchmarks (benchmarks/run_all.py --quick): every script runs end to end,
checks its own correctness (same embeddings as esm-extract, identical concept counts, equal
distributed results) and writes its JSON, then roofline.json and the summary. Timings are never asserted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_quick_benchmarks_run_check_themselves_and_write_results(tmp_path, shared_data):
    names = ["embed", "train", "concepts", "pymol", "memory", "distributed", "rounding", "scaling"]
    cmd = [sys.executable, str(REPO / "benchmarks" / "run_all.py"), "--quick", "--results-dir", str(tmp_path), "--only", ",".join(names)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=420)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = {name: json.loads((tmp_path / f"{name}.json").read_text()) for name in names}
    for name, doc in results.items():
        assert doc["mode"] == "quick" and doc["rows"] and doc["machine"]["cores"] >= 1, name
    assert all(row["max_abs_diff"] < 1e-3 for row in results["embed"]["rows"])
    engines = results["embed"]["engine_details"]["8M"]  # esm.cpp and transformers on the same weights as ours
    assert engines["agreement"]["max_abs_esm_cpp_fp32_vs_ours_fp32"] < 1e-3 and engines["agreement"]["max_abs_transformers_vs_ours_fp32"] < 1e-3
    assert {"ours fp32", "ours bf16", "transformers eager fp32"} <= set(engines["residues_per_s"]) and engines["esm_cpp_best_mode"].startswith("esm.cpp")
    assert [row["counts"] for row in results["concepts"]["rows"][1:]] == ["identical", "identical"]
    # ours in both precisions against both dictionary_learning trainers
    assert {row["trainer"] for row in results["train"]["rows"]} >= {"ours: train_step", "ours: train_step bf16", "dictionary_learning StandardTrainerAprilUpdate"}
    assert results["train"]["matmul_peak_gflops_bf16"] > 0
    assert {row["trainer"] for row in results["train"]["topk_rows"]} == {
        name for kind in ("TopK", "BatchTopK", "MatryoshkaBatchTopK") for name in (f"ours: train_step {kind}", f"ours: train_step {kind} bf16", f"dictionary_learning {kind}Trainer")
    }
    trained = results["train"]["trained"]  # the four ReLU trainers resumed from the embedded default's trained SAE
    assert {row["trainer"] for row in trained["rows"]} == {"ours: train_step", "ours: train_step bf16", "dictionary_learning StandardTrainer", "dictionary_learning StandardTrainerAprilUpdate"}
    assert 0 < trained["active_fraction"] < trained["sparse_relu_max_density"]["fp32"]  # a trained SAE's sparsity: ours ran sparse products
    jumprelu = results["train"]["jumprelu"]["trained"]  # JumpReLU from the same trained weights, against dictionary_learning's JumpReluTrainer
    for table in results["train"]["jumprelu"].values():  # and from a fresh SAE
        assert {row["trainer"] for row in table["rows"]} == {"ours: train_step JumpReLU", "ours: train_step JumpReLU bf16", "dictionary_learning JumpReluTrainer"}
    assert 0 < jumprelu["fired_fraction"] < jumprelu["sparse_max_density"]["fp32"]  # ours ran sparse products (fp32)
    rounding = {row["embeddings"]: row for row in results["rounding"]["rows"]}  # the conclusion check on known perturbations
    assert set(rounding) == {"fair-esm blocks", "float16", "bfloat16", "bf16 compute"}
    assert 0 < rounding["fair-esm blocks"]["embedding_max_abs_diff"] < 1e-4 and rounding["fair-esm blocks"]["matches_changed_over_tolerance"] == 0
    assert 0 < rounding["float16"]["embedding_mean_relative_diff"] < 2**-11 < rounding["bfloat16"]["embedding_mean_relative_diff"] < 2**-8  # round to nearest
    assert all(results["rounding"]["comparisons"][name]["chosen_matches"] == results["rounding"]["chosen_matches"] > 0 for name in rounding)
    assert results["distributed"]["check"]["max_abs_weight_diff"] < 1e-4
    assert all(run["peak_rss"] > 0 for run in results["memory"]["runs"])
    scaling, rows = results["scaling"], results["scaling"]["rows"]
    assert Path(scaling["plot"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len({row["curve"] for row in rows}) == 6
    by_length = [row for row in rows if row["curve"] == "embed vs length"]
    assert all(row["residues"] == row["length"] * row["proteins"] and row["peak_rss_mib"] > row["baseline_rss_mib"] > 0 for row in by_length)
    assert all(len(row["runs_s"]) == scaling["length_repeats"] and row["seconds"] in row["runs_s"] for row in by_length)
    assert {row["model"] for row in by_length} == {"demo 4x256", "ESM-2 8M 6x320"} and max(row["windows"] for row in by_length) > 1  # past 1,022
    corpus = [row for row in rows if row["curve"] == "interplm embed (corpus)"]
    measured = [row for row in corpus if row["kind"] == "measured"]
    assert len(measured) == 2 and 0 < measured[0]["store_bytes"] < measured[1]["store_bytes"] < corpus[-1]["store_bytes"]
    assert corpus[-1]["kind"].startswith("extrapolated") and corpus[-1]["proteins"] == scaling["corpus"]["proteins"] > 100_000
    assert all(row["mutants"] == 19 * row["positions"] for row in rows if row["curve"] == "mutation scan vs positions")
    if "pymol" in results:
        assert results["pymol"]["residues"] == 732
        assert results["pymol"]["sessions"][0]["max_bfactor"] <= 1.0  # activations replaced the pLDDT b-factors
    rl = json.loads((tmp_path / "roofline.json").read_text())  # derived after them: the engines' FLOP/s against the measured peak
    assert rl["mode"] == "quick" and [row["residues"] for row in rl["rows"]] == [row["residues"] for row in results["embed"]["engines"]]
    assert all(0 < row["ours_fp32_fraction_of_fp32_peak"] and row["mflop_per_residue"] > 0 for row in rl["rows"])
    summary = (tmp_path / "SUMMARY.md").read_text()
    assert "| benchmark | what | result | target |" in summary and "quick" in summary
    assert "fp32 rounded to float16 / to bfloat16" in summary
