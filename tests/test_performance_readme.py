"""The README's performance numbers are recomputed from the shipped benchmark results.

``benchmarks/results/*.json`` are what the benchmark scripts wrote; ``SUMMARY.md`` must be exactly
what ``run_all.py`` makes of them, and every number in the README's performance section must be one
of their values (at the precision the README prints it, in the units it names). A README number
with no file behind it, or one left stale after a rerun, fails here."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"

# Numbers in the section that are not results: what a token stands for, and why it is not a value.
NOT_RESULTS = {
    "512": "AVX-512, the instruction set",
    "256": "the embedded default's width (4 x 256) and bench_precision's SAE input, a size",
    "480": "ESM-2 35M's width (12 x 480), a size",
}
# Unit changes the README makes: as is, percent, minutes, MiB -> GiB, bytes -> GiB/MiB, per million.
SCALES = (1, 100, 1 / 60, 1 / 1024, 2**-30, 2**-20, 1e6, 1e-6)


def _values(node, out: list[float]) -> list[float]:
    if isinstance(node, bool):
        return out
    if isinstance(node, (int, float)):
        out.append(float(node))
    elif isinstance(node, dict):
        for value in node.values():
            _values(value, out)
    elif isinstance(node, list):
        for value in node:
            _values(value, out)
    return out


def _performance_section() -> str:
    text = (REPO / "README.md").read_text()
    section = text[text.index("## Performance") : text.index("\nTraining at scale")]
    section = re.sub(r"\d{4}-\d\d-\d\d", " ", section)  # dates and clock times say when, not what
    return re.sub(r"\d\d:\d\d", " ", section)


def _numbers(section: str) -> list[str]:
    """Numbers with at least two significant digits (a lone digit could match anything)."""
    tokens = re.findall(r"(?<![\w.-])(\d[\d,]*(?:\.\d+)?(?:e-?\d+)?)", section)
    return [t for t in tokens if len(t.replace(",", "").split("e")[0].replace(".", "").lstrip("0")) >= 2]


def _shown_as(token: str, value: float) -> bool:
    """Whether ``value``, in one of the README's units, rounds to ``token`` at its printed precision."""
    plain = token.replace(",", "")
    mantissa, _, exponent = plain.partition("e")
    decimals = len(mantissa.partition(".")[2])
    half_unit = 0.5 * 10.0 ** (int(exponent or 0) - decimals) * 1.0001
    return any(abs(value * scale - float(plain)) <= half_unit for scale in SCALES)


def test_summary_is_what_run_all_makes_of_the_shipped_results():
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import run_all
    finally:
        sys.path.pop(0)
    assert run_all.summarise(RESULTS) == (RESULTS / "SUMMARY.md").read_text()


def test_every_performance_number_in_the_readme_is_a_shipped_result():
    values: list[float] = []
    for path in sorted(RESULTS.glob("*.json")):
        _values(json.loads(path.read_text()), values)
    numbers = _numbers(_performance_section())
    assert len(numbers) > 150  # the section was found and read
    orphans = [n for n in numbers if n not in NOT_RESULTS and not any(_shown_as(n, v) for v in values)]
    assert not orphans, f"README performance numbers found in no benchmarks/results/*.json: {orphans}"


def test_a_number_from_no_file_is_caught():
    """The check above can fail: a made-up result and a stale one are both reported."""
    values = _values(json.loads((RESULTS / "embed.json").read_text()), [])
    assert _shown_as("6.41", 6.4071) and _shown_as("10,682", 10682.3) and _shown_as("49", 0.4912) and _shown_as("5.0e-6", 4.98e-6)
    assert not _shown_as("6.42", 6.4071) and not _shown_as("1.0e-5", 4.98e-6)
    assert not any(_shown_as("7,777", v) for v in values)
