"""A short, fixed-seed run of tests/fuzz_parsers.py: mutated real and corpus files through the
FASTA, UniProt and structure readers give InterPLMError or a well-formed result, nothing else.
The script runs longer by hand (``python tests/fuzz_parsers.py --seconds 600``)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

_spec = importlib.util.spec_from_file_location("fuzz_parsers", Path(__file__).resolve().parent / "fuzz_parsers.py")
fuzz_parsers = sys.modules.setdefault("fuzz_parsers", importlib.util.module_from_spec(_spec))
_spec.loader.exec_module(fuzz_parsers)  # registered first: its dataclasses look their module up


def test_short_fuzz_run_finds_no_crash(shared_data, tmp_path):
    report = fuzz_parsers.run(iterations=1500, seed=0, targets=("fasta", "uniprot", "structure"), shared=shared_data,
                              crash_dir=tmp_path / "crashes")  # fmt: skip
    summary = report.as_dict()
    assert summary["crashes"] == {}, summary["crashes"]
    for target in ("fasta", "uniprot", "structure"):
        assert summary["seed_files"][target] >= 15
        # the mutations reach both outcomes: parsed inputs and refused ones
        assert summary["outcomes"].get(f"{target}:ok", 0) > 20, summary["outcomes"]
        assert summary["outcomes"].get(f"{target}:error", 0) > 100, summary["outcomes"]
    assert summary["total_inputs"] >= 1500


def test_mutations_are_deterministic_for_a_seed():
    import random

    data = b">P1 x\nMKTAYIAKQR\n>P2\nGSHM\n"
    first = [fuzz_parsers.mutate(data, random.Random(7), [data]) for _ in range(3)]
    again = [fuzz_parsers.mutate(data, random.Random(7), [data]) for _ in range(3)]
    assert first == again and any(m != data for m in first)
