"""Shared helpers of the benchmark scripts: arguments, machine description, tables, JSON results.

Every script compares our code with what a user would otherwise run, on the same work in the same
run, and reports ratios. ``--quick`` shrinks the work to seconds (the smoke test and development
use it); the default sizes are the ones benchmarks/README.md reports. Results are written
atomically to ``<results-dir>/<name>.json`` (default ``benchmarks/results``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Sequence

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RESULTS_DIR = HERE / "results"
SHARED_DATA = (REPO.parent / "shared" / "data").resolve()
SEQUENCE_FILES = ("mmseqs2_examples_QUERY_500.fasta", "swissprot_train.fasta")

os.environ.setdefault("INTERPLM_OFFLINE", "1")


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="small sizes (seconds): a smoke run, not a measurement")
    p.add_argument("--results-dir", type=Path, default=RESULTS_DIR, help=f"where <name>.json goes (default {RESULTS_DIR})")
    p.add_argument("--workdir", type=Path, help="scratch folder (default: a temporary folder, removed afterwards)")
    p.add_argument("--data", type=Path, default=SHARED_DATA, help=f"the shared data folder (default {SHARED_DATA})")
    return p


_RESULT = "RESULT "


class ChildFailed(RuntimeError):
    """A measurement run in its own process exited non-zero or printed no result."""


def run_child(script: str, spec: dict, env: dict | None = None) -> dict:
    """Run ``script --child SPEC`` (a fresh process, so its memory and start-up are its own) and return its result."""
    proc = subprocess.run([sys.executable, script, "--child", json.dumps(spec)], capture_output=True, text=True, env=env)
    line = next((x for x in proc.stdout.splitlines() if x.startswith(_RESULT)), None)
    if proc.returncode != 0 or line is None:
        raise ChildFailed((proc.stderr.strip().splitlines() or ["?"])[-1][:300] + "\n" + proc.stdout[-2000:] + proc.stderr[-4000:])
    return json.loads(line[len(_RESULT):])


def child_mode(args: argparse.Namespace, measure: Callable[[dict], dict]) -> bool:
    """In a ``--child`` process: run ``measure`` on the spec, print its result for :func:`run_child`, return True."""
    if not getattr(args, "child", None):
        return False
    print(_RESULT + json.dumps(measure(json.loads(args.child))))
    return True


class Workdir:
    """``--workdir`` if given (kept), else a temporary folder removed on exit."""

    def __init__(self, path: Path | None):
        self._tmp = None if path else tempfile.TemporaryDirectory(prefix="interplm-bench-")
        self.path = Path(path) if path else Path(self._tmp.name)
        self.path.mkdir(parents=True, exist_ok=True)

    def __enter__(self) -> Path:
        return self.path

    def __exit__(self, *exc: object) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()


def _cpuinfo() -> dict[str, str]:
    """The first processor's fields of /proc/cpuinfo (empty where there is none)."""
    fields: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if not line.strip():
                break
            key, _, value = line.partition(":")
            fields[key.strip()] = value.strip()
    except OSError:
        pass
    return fields


def _cpu_model(info: dict[str, str]) -> str:
    return info.get("model name") or platform.processor() or platform.machine()


# The instruction sets the precision and engine results depend on. A VM's model name can be as
# bare as "AMD EPYC": family and model tell its generation (AMD family 25 model 17 is Zen 4, where
# bf16 gained about half as much as on the Zen 5 of an earlier run, family 26).
_CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "avx512_fp16", "amx_bf16", "amx_int8")


def _cpu_generation(info: dict[str, str]) -> dict[str, Any]:
    flags = set(info.get("flags", "").split())
    return {"vendor": info.get("vendor_id"), "family": info.get("cpu family"), "model": info.get("model"),
            "stepping": info.get("stepping"), "flags": [f for f in _CPU_FLAGS if f in flags]}  # fmt: skip


def _memory_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def machine() -> dict[str, Any]:
    """What the numbers were measured on (CPU, cores, memory, torch, load at the start)."""
    import torch

    cpuinfo = _cpuinfo()
    info: dict[str, Any] = {
        "cpu": _cpu_model(cpuinfo),
        "cpu_generation": _cpu_generation(cpuinfo),
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "memory_gib": _memory_gib(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None,
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def interleaved_step_times(runners: dict, batches: list, warmup: int) -> dict[str, list[float]]:
    """Seconds per step of each ``runners[name](step, x)`` after ``warmup`` steps, the order
    reversed every other step (ours, theirs, theirs, ours, ...) so that a busy machine slows all alike."""
    times: dict[str, list[float]] = {name: [] for name in runners}
    names = list(runners)
    for step, x in enumerate(batches):
        for name in names if step % 2 == 0 else names[::-1]:
            start = time.perf_counter()
            runners[name](step, x)
            if step >= warmup:
                times[name].append(time.perf_counter() - start)
    return times


def matmul_peak_gflops(size: int = 4096, repeats: int = 5, dtype=None) -> float:
    """This CPU's (or GPU's) matrix-product rate in ``dtype`` (default float32): best of ``repeats``
    ``size``-cubed products."""
    import torch

    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    torch.mm(a, b)
    best = min(timed(lambda: torch.mm(a, b))[0] for _ in range(repeats))
    return 2 * size**3 / best / 1e9


def print_table(title: str, rows: list[dict[str, Any]], columns: Sequence[str]) -> None:
    def fmt(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:,.3g}" if abs(value) < 100 else f"{value:,.0f}"
        return str(value)

    cells = [[fmt(row.get(c, "")) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) if cells else len(c) for i, c in enumerate(columns)]
    print(f"\n{title}")
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths)))
    print("  ".join("-" * w for w in widths))
    for r in cells:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths)))


def write_result(args: argparse.Namespace, name: str, payload: dict[str, Any]) -> Path:
    """``<results-dir>/<name>.json`` (atomic), with the machine and the mode (quick or full)."""
    from interplm_plugins.core.atomic import write_text_atomic

    document = {
        "benchmark": name,
        "mode": "quick" if args.quick else "full",
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": machine(),
        **payload,
    }
    path = Path(args.results_dir) / f"{name}.json"
    write_text_atomic(path, json.dumps(document, indent=2, default=float) + "\n")
    print(f"\nwrote {path}")
    return path


def peak_rss_mib(who: int = resource.RUSAGE_SELF) -> float:
    """Peak resident memory (``ru_maxrss``, KiB on Linux) in MiB."""
    return resource.getrusage(who).ru_maxrss / 1024


def benchmark_records(data: Path, count: int, max_length: int = 1022):
    """The first ``count`` real proteins of <= ``max_length`` residues, alternating between the two
    sequence files (mmseqs2 examples and Swiss-Prot), ids made unique and file-name safe."""
    from interplm_plugins.core.inputs.sequences import ProteinRecord, read_fasta

    pools = [[r for r in read_fasta(data / "sequences" / name) if len(r.sequence) <= max_length] for name in SEQUENCE_FILES]
    out, seen = [], set()
    for i in range(max(len(p) for p in pools)):
        for pool in pools:
            if i < len(pool) and len(out) < count:
                rid = "".join(ch if ch.isalnum() or ch in "._-" else "_" for ch in pool[i].id)
                while rid in seen:
                    rid += "_"
                seen.add(rid)
                out.append(ProteinRecord(rid, pool[i].sequence, ""))
    return out
