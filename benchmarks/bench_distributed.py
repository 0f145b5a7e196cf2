"""Scale-out: ``interplm train`` and ``interplm embed`` under torchrun, 1 process against N.

The same work on the same machine: SAE training (ReLU 320 -> 4,096, batch 4,096) on a store of
real proteins embedded with an ESM-2 8M-architecture model (random weights), and embedding those
proteins, each with ``torchrun --standalone --nproc_per_node P`` for P = 1 and P = ``--processes``
(default: the number of CPU cores, or of GPUs). On CPUs every run gets all cores (``OMP_NUM_THREADS``
= cores / P), so this measures what splitting the work costs or gains, not more hardware; on a
machine with several GPUs each process drives one (NCCL). The N-process SAE is checked against
the 1-process one (same global batch: equal to float rounding). Wall-clock times include process
start-up and model loading.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402


def torchrun(processes: int, threads: int, *args: str) -> float:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes), "-m", "interplm_plugins.cli", "-q", *args]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "TQDM_DISABLE": "1"}
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    import torch

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    gpus = torch.cuda.device_count()
    p = _common.parser(__doc__.splitlines()[0])
    p.add_argument("--processes", type=int, default=gpus if gpus > 1 else cores)
    p.add_argument("--proteins", type=int, default=200)
    p.add_argument("--d-hidden", type=int, default=4096)
    p.add_argument("--batch-size", type=int, default=4096)
    p.add_argument("--steps", type=int, default=60)
    args = p.parse_args(argv)
    if args.quick:
        args.proteins, args.d_hidden, args.batch_size, args.steps = 6, 128, 256, 5

    from interplm_plugins.core.inputs.sequences import write_fasta
    from interplm_plugins.core.plm.model import new_esm2, save_esm2_checkpoint
    from interplm_plugins.core.plm.store import EmbeddingStore
    from interplm_plugins.core.sae.files import load_sae

    rows, check = [], {}
    with _common.Workdir(args.workdir) as work:
        records = _common.benchmark_records(args.data, args.proteins, max_length=200 if args.quick else 1022)
        write_fasta(records, work / "proteins.fasta")
        residues = sum(len(r.sequence) for r in records)
        model = save_esm2_checkpoint(new_esm2(6, 320, 20, seed=0), work / "esm2_t6_8M_random.pt")
        embed_args = [str(work / "proteins.fasta"), "--model", str(model), "--layer", "3", "--shard-residues", "20000"]
        train_args = ["--width", str(args.d_hidden), "--batch-size", str(args.batch_size), "--steps", str(args.steps),
                      "--warmup", "5", "--checkpoint-every", str(args.steps)]  # fmt: skip
        for processes in sorted({1, args.processes}):
            threads = max(1, cores // processes) if gpus <= 1 else 1
            if args.quick:  # a smoke run starts fewer processes: the stores are embedded here, in one process
                from interplm_plugins.core.plm.embed import embed_to_store
                from interplm_plugins.core.plm.loading import load_plm

                embed_to_store(load_plm(model), records, 3, work / f"emb{processes}", shard_residues=20_000)
                embed_s = None  # (not measured)
            else:
                embed_s = torchrun(processes, threads, "embed", *embed_args, "--out", str(work / f"emb{processes}"))
            # Train every run on the same store (the 1-process one) so the results can be compared.
            train_cli = ["train", str(work / "emb1"), "--out", str(work / f"sae{processes}"), *train_args]
            if args.quick and processes == 1:  # (one process start fewer in a smoke run)
                from interplm_plugins.cli import main as interplm

                train_s, _ = _common.timed(lambda: interplm(["-q", *train_cli]))
            else:
                train_s = torchrun(processes, threads, *train_cli)
            rows.append({"processes": processes, "threads_each": threads, "embed_s": embed_s, "embed_res_per_s": residues / embed_s if embed_s else None,
                         "train_s": train_s, "train_tokens_per_s": args.steps * args.batch_size / train_s})  # fmt: skip
        if args.processes > 1:
            one = load_sae(work / "sae1" / "sae.safetensors").state_dict()
            many = load_sae(work / f"sae{args.processes}" / "sae.safetensors").state_dict()
            check["max_abs_weight_diff"] = max(float((one[k] - many[k]).abs().max()) for k in one)
            a, b = EmbeddingStore(work / "emb1"), EmbeddingStore(work / f"emb{args.processes}")
            assert sorted(a.proteins) == sorted(b.proteins)
            check["max_abs_embedding_diff"] = max(float(np.abs(np.asarray(a.get(i)) - np.asarray(b.get(i))).max()) for i in a.proteins)
    base = rows[0]
    for row in rows:
        row["embed_speedup"] = base["embed_s"] / row["embed_s"] if row["embed_s"] else None
        row["train_speedup"] = base["train_s"] / row["train_s"]
    _common.print_table(f"torchrun scale-out ({'GPUs, NCCL' if gpus > 1 else f'{cores} CPU cores, gloo'}; {residues} residues embedded, "
                        f"{args.steps} SAE steps of {args.batch_size})", rows,
                        ["processes", "threads_each", "embed_res_per_s", "embed_speedup", "train_tokens_per_s", "train_speedup"])  # fmt: skip
    if check:
        print(f"N-process vs 1-process: SAE weights differ by at most {check['max_abs_weight_diff']:.2e}, "
              f"embeddings by {check['max_abs_embedding_diff']:.2e}")
    _common.write_result(args, "distributed", {"target": "none (scaling measured; results equal)", "rows": rows, "check": check,
                                               "residues": residues, "d_hidden": args.d_hidden, "batch_size": args.batch_size})  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
