"""benchmarks/roofline.py: the FLOP count is fair-esm's own, the shipped roofline.json is what the
shipped results give, and results that do not go together are refused."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"
sys.path.insert(0, str(REPO / "benchmarks"))
import roofline  # noqa: E402

sys.path.pop(0)


def test_forward_flops_are_the_products_fair_esm_computes():
    """torch's FLOP counter on fair-esm's own blocks (q/k/v/out and feed-forward addmm, attention bmm)."""
    from torch.utils.flop_counter import FlopCounterMode

    from interplm_plugins.core.plm.model import new_esm2

    model, lengths = new_esm2(3, 64, 4), [7, 40, 123]
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        for n in lengths:
            x = torch.randn(n + 2, 1, 64)  # (tokens with BOS and EOS, batch, dim), fair-esm's time-first layout
            for block in model.layers:
                x = block(x)[0]
    assert counter.get_total_flops() == roofline.forward_flops(lengths, 3, 64)
    assert roofline.forward_flops([10], 1, 8) == 24 * 64 * 12 + 4 * 144 * 8  # and the count grows as it should


def test_shipped_roofline_is_what_the_shipped_results_give(shared_data):
    shipped = json.loads((RESULTS / "roofline.json").read_text())
    assert json.loads(json.dumps(roofline.roofline(RESULTS, shared_data))) == shipped
    embed = json.loads((RESULTS / "embed.json").read_text())
    assert [r["model"] for r in shipped["rows"]] == [r["model"] for r in embed["engines"]]
    for row, engine in zip(shipped["rows"], embed["engines"]):  # the FLOP/s of a rate is the rate times FLOPs per residue
        assert row["esm_cpp_best_gflops"] == pytest.approx(engine["esm_cpp_best"] * row["mflop_per_residue"] / 1e3)
        assert row["best_target_fraction_of_fp32_peak"] == pytest.approx(1.5 * row["esm_cpp_best_gflops"] / shipped["matmul_peak_gflops"])


def _copy_results(tmp_path: Path) -> Path:
    for name in ("embed", "train", "precision"):
        shutil.copy(RESULTS / f"{name}.json", tmp_path / f"{name}.json")
    return tmp_path


def test_results_of_two_machines_or_other_proteins_are_refused(tmp_path, shared_data, capsys):
    results = _copy_results(tmp_path)
    train = json.loads((results / "train.json").read_text())
    train["machine"]["cpu_generation"]["model"] = "999"
    (results / "train.json").write_text(json.dumps(train))
    assert roofline.main(["--results-dir", str(results), "--data", str(shared_data)]) == 2
    assert "train.json" in capsys.readouterr().err and not (results / "roofline.json").exists()

    results = _copy_results(tmp_path)
    embed = json.loads((results / "embed.json").read_text())
    embed["engine_details"]["8M"]["residues"] += 1  # the row roofline reads for ESM-2 8M
    (results / "embed.json").write_text(json.dumps(embed))
    with pytest.raises(roofline.ResultMismatch, match="embed.json: engine proteins of ESM-2 8M"):
        roofline.roofline(results, shared_data)
