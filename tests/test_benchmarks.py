"""Smoke run of the benchmarks (benchmarks/run_all.py --quick): every script runs end to end,
checks its own correctness (same embeddings as esm-extract, identical concept counts, equal
distributed results) and writes its JSON and the summary. Timings are never asserted."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_quick_benchmarks_run_check_themselves_and_write_results(tmp_path, shared_data):
    names = ["embed", "concepts", "memory", "distributed"]
    if importlib.util.find_spec("dictionary_learning") is not None:  # the optional peer of the training benchmark
        names.append("train")
    if importlib.util.find_spec("pymol") is not None:
        names.append("pymol")
    cmd = [sys.executable, str(REPO / "benchmarks" / "run_all.py"), "--quick", "--results-dir", str(tmp_path), "--only", ",".join(names)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = {name: json.loads((tmp_path / f"{name}.json").read_text()) for name in names}
    for name, doc in results.items():
        assert doc["mode"] == "quick" and doc["rows"] and doc["machine"]["cores"] >= 1, name
    assert all(row["max_abs_diff"] < 1e-3 for row in results["embed"]["rows"])
    engines = results["embed"]["engine_details"]["8M"]  # esm.cpp and transformers on the same weights as ours
    assert engines["agreement"]["max_abs_esm_cpp_fp32_vs_ours_fp32"] < 1e-3 and engines["agreement"]["max_abs_transformers_vs_ours_fp32"] < 1e-3
    assert {"ours fp32", "ours bf16", "transformers eager fp32"} <= set(engines["residues_per_s"]) and engines["esm_cpp_best_mode"].startswith("esm.cpp")
    assert [row["counts"] for row in results["concepts"]["rows"][1:]] == ["identical", "identical"]
    assert results["distributed"]["check"]["max_abs_weight_diff"] < 1e-4
    assert all(run["peak_rss"] > 0 for run in results["memory"]["runs"])
    if "pymol" in results:
        assert results["pymol"]["residues"] == 732
        assert results["pymol"]["sessions"][0]["max_bfactor"] <= 1.0  # activations replaced the pLDDT b-factors
    summary = (tmp_path / "SUMMARY.md").read_text()
    assert "| benchmark | what | result | target |" in summary and "quick" in summary
