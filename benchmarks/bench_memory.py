"""Memory: SAE training streams an embedding store larger than the memory it uses.

A synthetic store (float32 residues of ESM-2 8M's width, 320; default 3 GB in shards of 100,000
residues, written straight in the store format) is trained on for one full pass (every residue
once) in a child process, whose peak resident memory (``ru_maxrss``) is compared with the store's
size. The same pass is run a second time under an address-space limit (``RLIMIT_AS``) of 2/3 of
the store size (full size only: a torch process alone needs ~1 GB of address space), which a
process that held the store in memory could not even allocate. For comparison, the usual
alternative, loading all embeddings into memory and sampling batches from there, is run on the
same store and steps.
"""

from __future__ import annotations

import json
import math
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

DIM = 320


def write_store(path: Path, residues: int, shard_residues: int, seed: int = 0) -> int:
    """A store of ``residues`` random float32 rows, proteins of 100-500 residues; returns its bytes."""
    from interplm_plugins.core.atomic import write_text_atomic
    from interplm_plugins.core.plm.store import STORE_FORMAT, STORE_INDEX

    rng = np.random.default_rng(seed)
    path.mkdir(parents=True, exist_ok=True)
    shards, written, index = [], 0, 0
    while written < residues:
        rows = min(shard_residues, residues - written)
        lengths = []
        while sum(lengths) < rows:
            lengths.append(int(min(rng.integers(100, 500), rows - sum(lengths))))
        name = f"shard_{len(shards):05d}.npy"
        array = np.lib.format.open_memmap(path / name, mode="w+", dtype=np.float32, shape=(rows, DIM))
        for start in range(0, rows, 50_000):
            stop = min(rows, start + 50_000)
            array[start:stop] = rng.standard_normal((stop - start, DIM), dtype=np.float32)
        array.flush()
        del array
        proteins = [f"synthetic_{index + i:07d}" for i in range(len(lengths))]
        index += len(lengths)
        shards.append({"file": name, "rows": rows, "proteins": proteins, "lengths": lengths})
        written += rows
    metadata = {"plm": "synthetic", "plm_identity": "synthetic", "plm_source": "benchmarks/bench_memory.py", "layer": 1, "dim": DIM, "dtype": "float32"}
    write_text_atomic(path / STORE_INDEX, json.dumps({"format": STORE_FORMAT, "metadata": metadata, "complete": True, "shards": shards}))
    return sum(os.path.getsize(path / s["file"]) for s in shards)


def _status() -> dict[str, int]:
    out = {}
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(("VmPeak", "VmHWM")):
                key, value = line.split(":")
                out[key] = int(value.split()[0]) * 1024
    return out


def child(spec: dict) -> dict:
    if spec.get("limit_as"):
        resource.setrlimit(resource.RLIMIT_AS, (spec["limit_as"], spec["limit_as"]))
    import torch

    from interplm_plugins.core.plm.store import EmbeddingStore
    from interplm_plugins.core.sae.model import SAEConfig
    from interplm_plugins.core.sae.train import TrainConfig, make_training_state, train_sae, train_step

    store = EmbeddingStore(spec["store"])
    steps = math.ceil(store.num_residues / spec["batch_size"])
    sae_config = SAEConfig(d_in=store.dim, d_hidden=spec["d_hidden"], kind="relu")
    config = TrainConfig(steps=steps, batch_size=spec["batch_size"], warmup_steps=10, checkpoint_every=steps)
    start = time.perf_counter()
    if spec["mode"] == "stream":
        train_sae(store, sae_config, config, spec["out"], resume=False, progress=False)
    else:  # everything in memory, batches sampled from there
        data = np.concatenate([np.asarray(store.get(pid)) for pid in store.proteins])
        state = make_training_state(sae_config, config)
        rng = np.random.default_rng(0)
        for _ in range(steps):
            train_step(state, torch.from_numpy(data[rng.integers(0, len(data), spec["batch_size"])]))
    return {"mode": spec["mode"], "limit_as": spec.get("limit_as"), "steps": steps, "residues_streamed": steps * spec["batch_size"],
            "seconds": time.perf_counter() - start, "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, **_status()}  # fmt: skip


def run_child(spec: dict) -> dict:
    try:
        return _common.run_child(__file__, spec)
    except _common.ChildFailed as exc:  # e.g. the address-space limit was too tight: a result, not a crash
        return {"mode": spec["mode"], "limit_as": spec.get("limit_as"), "failed": str(exc).splitlines()[0]}


def main(argv: list[str] | None = None) -> int:
    p = _common.parser(__doc__.splitlines()[0])
    p.add_argument("--store-gb", type=float, default=3.0, help="store size in GB (default 3)")
    p.add_argument("--shard-residues", type=int, default=100_000)
    p.add_argument("--d-hidden", type=int, default=1024, help="SAE width (small: this measures the data path)")
    p.add_argument("--batch-size", type=int, default=4096)
    p.add_argument("--limit-as-gb", type=float, help="address-space limit of an extra streaming run (default: 2/3 of the store, for stores >= 2 GB)")
    p.add_argument("--child", help="(internal)")
    args = p.parse_args(argv)
    if _common.child_mode(args, child):
        return 0
    if args.quick:
        args.store_gb, args.shard_residues, args.d_hidden, args.batch_size = 0.02, 10_000, 64, 2048

    residues = int(args.store_gb * 1e9 / (DIM * 4))
    with _common.Workdir(args.workdir) as work:
        start = time.perf_counter()
        store_bytes = write_store(work / "store", residues, args.shard_residues)
        print(f"store: {residues} residues x {DIM} float32 = {store_bytes / 2**30:.2f} GiB in shards of "
              f"{args.shard_residues} (written in {time.perf_counter() - start:.0f} s)")  # fmt: skip
        spec = {"store": str(work / "store"), "out": str(work / "sae"), "d_hidden": args.d_hidden, "batch_size": args.batch_size}
        runs = [run_child({**spec, "mode": "stream"})]
        # (below ~2 GB, 2/3 of the store is less than a torch process needs to start)
        limit = int(args.limit_as_gb * 2**30) if args.limit_as_gb else int(store_bytes * 2 / 3) if store_bytes >= 2e9 else None
        if limit:
            runs.append(run_child({**spec, "mode": "stream", "limit_as": limit}))
        runs.append(run_child({**spec, "mode": "in-memory"}))
    rows = []
    for r in runs:
        label = {"stream": "ours: train_sae streaming the store", "in-memory": "all embeddings loaded, batches sampled in memory"}[r["mode"]]
        if r.get("limit_as"):
            label += f" (RLIMIT_AS {r['limit_as'] / 2**30:.2f} GiB)"
        if "failed" in r:
            rows.append({"run": label, "peak_rss_gib": None, "rss_over_store": None, "seconds": None, "note": "failed: " + r["failed"]})
            continue
        rows.append({"run": label, "peak_rss_gib": r["peak_rss"] / 2**30, "rss_over_store": r["peak_rss"] / store_bytes,
                     "seconds": r["seconds"], "note": f"{r['residues_streamed']} residues in {r['steps']} steps"})  # fmt: skip
    _common.print_table(f"Peak memory while training on a {store_bytes / 2**30:.2f} GiB store", rows,
                        ["run", "peak_rss_gib", "rss_over_store", "seconds", "note"])  # fmt: skip
    _common.write_result(args, "memory", {
        "target": "peak RSS well under the store size while streaming it",
        "store_bytes": store_bytes, "residues": residues, "shard_residues": args.shard_residues,
        "d_hidden": args.d_hidden, "batch_size": args.batch_size, "rows": rows, "runs": runs,
    })  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
