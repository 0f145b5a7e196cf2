"""torchrun with 2 CPU processes (gloo): data-parallel training equals one process, resumes exactly
after SIGKILL, and sharded embedding writes the same store contents; real torchrun subprocesses."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from interplm_plugins.cli import main
from interplm_plugins.core import parallel
from interplm_plugins.core.inputs.sequences import read_fasta, write_fasta
from interplm_plugins.core.plm.distributed import deal_records
from interplm_plugins.core.plm.embed import embed_to_store
from interplm_plugins.core.plm.store import EmbeddingStore
from interplm_plugins.core.sae.distributed import slice_bounds
from interplm_plugins.core.sae.files import load_sae

TRAIN_ARGS = ["--width", "64", "--batch-size", "128", "--warmup", "5", "--l1", "0.01", "--checkpoint-every", "10", "--steps", "200"]


def _torchrun(*args: str, nproc: int = 2, timeout: float = 120, **popen) -> subprocess.CompletedProcess | subprocess.Popen:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc), *args]
    env = {**os.environ, "INTERPLM_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    if popen:
        return subprocess.Popen(cmd, env=env, **popen)
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)


def _ok(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_sae(path / "sae.safetensors").state_dict()


@pytest.fixture(scope="module")
def work(tmp_path_factory, tiny_esm2_path, swissprot_fasta):
    folder = tmp_path_factory.mktemp("dist")
    records = [r for r in read_fasta(swissprot_fasta) if len(r.sequence) <= 400][:24]
    write_fasta(records, folder / "proteins.fasta")
    from interplm_plugins.core.plm.loading import load_plm

    embed_to_store(load_plm(tiny_esm2_path), records, 2, folder / "store", shard_residues=1500)
    return folder


def test_two_process_training_equals_one_process_and_resumes_after_sigkill(work, tmp_path):
    store = str(work / "store")
    assert main(["-q", "train", store, "--out", str(tmp_path / "one"), *TRAIN_ARGS]) == 0
    cli = ["-m", "interplm_plugins.cli", "-q", "train", store, *TRAIN_ARGS]
    _ok(_torchrun(*cli, "--out", str(tmp_path / "two")))
    one, two = _weights(tmp_path / "one"), _weights(tmp_path / "two")
    for key in one:
        torch.testing.assert_close(two[key], one[key], rtol=1e-4, atol=1e-5, msg=key)
    log_one = [json.loads(line) for line in (tmp_path / "one" / "train_log.jsonl").read_text().splitlines()]
    log_two = [json.loads(line) for line in (tmp_path / "two" / "train_log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in log_two] == [e["step"] for e in log_one]
    assert log_two[-1]["mse"] == pytest.approx(log_one[-1]["mse"], rel=1e-4)  # metrics are over the whole batch

    killed = tmp_path / "killed"
    proc = _torchrun(*cli, "--out", str(killed), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 90
    while not (killed / "checkpoint.pt").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (killed / "sae.safetensors").exists(), "the run finished before it could be killed"
    step = torch.load(killed / "checkpoint.pt", weights_only=True)["step"]
    assert 0 < step < 200
    _ok(_torchrun(*cli, "--out", str(killed)))
    resumed = _weights(killed)
    for key in two:
        torch.testing.assert_close(resumed[key], two[key], rtol=0, atol=0, msg=key)


DRIVER = textwrap.dedent(
    """
    import sys, torch
    from interplm_plugins.core import parallel
    from interplm_plugins.core.plm.store import EmbeddingStore
    from interplm_plugins.core.sae.distributed import train_sae_distributed
    from interplm_plugins.core.sae.model import SAEConfig
    from interplm_plugins.core.sae.train import TrainConfig
    from interplm_plugins.errors import InterPLMError

    store, out = EmbeddingStore(sys.argv[1]), sys.argv[2]
    with parallel.process_group() as env:
        for kind in ("relu", "topk", "batchtopk", "jumprelu", "matryoshka"):
            config = SAEConfig(d_in=store.dim, d_hidden=48, kind=kind, k=None if kind in ("relu", "jumprelu") else 4, l1_coefficient=0.5,
                               prefixes=[12, 24] if kind == "matryoshka" else None)
            train = TrainConfig(steps=30, batch_size=97, warmup_steps=2, resample_every=7, dead_after_tokens=97,
                                checkpoint_every=10, seed=3, threshold_start_step=5, log_every=1)
            train_sae_distributed(store, config, train, f"{out}/{kind}", progress=False)
        try:  # an error found on the processes is raised on all of them (none waits forever)
            train_sae_distributed(store, config, TrainConfig(steps=2, batch_size=1), f"{out}/bad", progress=False)
        except InterPLMError as err:
            open(f"{out}/error-{env.rank}.txt", "w").write(err.reason)
    """
)


def test_resampling_and_topk_match_one_process(work, tmp_path):
    """Dead-feature resampling (which sees the whole batch), TopK with AuxK, BatchTopK, JumpReLU and Matryoshka give the
    one-process result, with a batch that does not split evenly; errors reach every process."""
    from interplm_plugins.core.sae.model import SAEConfig
    from interplm_plugins.core.sae.train import TrainConfig, train_sae

    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    _ok(_torchrun(str(script), str(work / "store"), str(tmp_path / "two")))
    for rank in (0, 1):
        assert (tmp_path / "two" / f"error-{rank}.txt").read_text() == "batch size 1 is smaller than the 2 processes"
    store = EmbeddingStore(work / "store")
    for kind in ("relu", "topk", "batchtopk", "jumprelu", "matryoshka"):
        config = SAEConfig(d_in=store.dim, d_hidden=48, kind=kind, k=None if kind in ("relu", "jumprelu") else 4, l1_coefficient=0.5,
                           prefixes=[12, 24] if kind == "matryoshka" else None)
        train = TrainConfig(steps=30, batch_size=97, warmup_steps=2, resample_every=7, dead_after_tokens=97,
                            checkpoint_every=10, seed=3, threshold_start_step=5, log_every=1)
        train_sae(store, config, train, tmp_path / "one" / kind, progress=False)
        log = [json.loads(line) for line in (tmp_path / "two" / kind / "train_log.jsonl").read_text().splitlines()]
        if kind == "relu":
            assert any(entry.get("resampled", 0) > 0 for entry in log), "nothing was resampled: the test misses its point"
        if kind not in ("relu", "jumprelu"):
            assert any(entry.get("auxk", 0) > 0 for entry in log), "no dead features: AuxK was not exercised"
        one, two = _weights(tmp_path / "one" / kind), _weights(tmp_path / "two" / kind)
        for key in one:
            torch.testing.assert_close(two[key], one[key], rtol=1e-4, atol=1e-5, msg=f"{kind} {key}")


def test_sharded_embedding_gives_the_same_store_contents(work, tiny_esm2_path, tmp_path):
    out = tmp_path / "sharded"
    cli = ["-m", "interplm_plugins.cli", "-q", "embed", str(work / "proteins.fasta"), "--model", str(tiny_esm2_path),
           "--layer", "2", "--out", str(out), "--shard-residues", "1500"]  # fmt: skip
    _ok(_torchrun(*cli))
    single, sharded = EmbeddingStore(work / "store"), EmbeddingStore(out)
    assert sharded.complete and sharded.metadata["layer"] == 2 and sharded.dim == single.dim
    assert sorted(sharded.proteins) == sorted(single.proteins)
    assert sharded.num_residues == single.num_residues
    for pid in single.proteins:
        np.testing.assert_allclose(sharded.get(pid), single.get(pid), rtol=1e-5, atol=1e-5)
    # Both processes did part of the work, and the merged store is an ordinary one.
    files = [s["file"] for s in sharded._shards]
    assert any("rank0000" in f for f in files) and any("rank0001" in f for f in files)
    assert all("/" not in f for f in files)
    before = json.loads((out / "store.json").read_text())
    _ok(_torchrun(*cli))  # rerun: everything is done, the store is unchanged
    assert json.loads((out / "store.json").read_text()) == before
    assert len(list(EmbeddingStore(out).iter_batches(512, seed=0, epochs=1))) == -(-single.num_residues // 512)


def test_environment_and_work_split(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    env = parallel.dist_env()
    assert (env.rank, env.world_size, env.local_rank, env.is_main) == (3, 4, 1, False)
    assert parallel.is_distributed()
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("RANK", "0")
    assert not parallel.is_distributed()
    bounds = [slice_bounds(10, r, 3) for r in range(3)]
    assert bounds[0][0] == 0 and bounds[-1][1] == 10 and all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))

    class R:
        def __init__(self, i, n):
            self.id, self.sequence = f"p{i}", "A" * n

    records = [R(i, n) for i, n in enumerate([5, 300, 40, 41, 900, 7, 12])]
    shares = [deal_records(records, r, 2) for r in range(2)]
    assert sorted(x.id for s in shares for x in s) == sorted(r.id for r in records)
    assert abs(sum(len(x.sequence) for x in shares[0]) - sum(len(x.sequence) for x in shares[1])) <= 900
