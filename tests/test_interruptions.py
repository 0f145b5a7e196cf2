"""Interrupted work loses nothing, checked with real ``interplm`` processes killed with SIGKILL:

- ``build-db`` killed mid-run leaves the previous database byte for byte; a reader opened before
  keeps answering during the killed run, during the rerun and after it, while a new open sees
  the new database; the killed run's temporary file does not break the rerun, which removes it
  once it is stale;
- ``embed`` killed mid-run resumes: the rerun keeps the shards already written, embeds only the
  rest, and every protein's embedding equals fair-esm's.
(SIGKILL during ``train`` then resume is tested in test_cli_pipeline.py.)
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from interplm_plugins.core.atomic import STALE_AFTER_S, remove_stale_temp_files, temp_files_for
from interplm_plugins.core.database.schema import FeatureDatabase
from interplm_plugins.core.inputs.sequences import read_fasta, write_fasta
from interplm_plugins.core.plm.embed import embed_sequences
from interplm_plugins.core.plm.store import EmbeddingStore

pytestmark = pytest.mark.skipif(os.name != "posix", reason="SIGKILL and flock are POSIX")


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "interplm_plugins.cli", "-q", *args]


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _wait_for(condition, proc: subprocess.Popen, what: str, timeout: float = 240.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            raise AssertionError(f"the process ended (status {proc.returncode}) before {what}: {proc.stderr.read()[-2000:]!r}")
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def _kill(proc: subprocess.Popen) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait(timeout=60) == -signal.SIGKILL


@pytest.fixture(scope="module")
def scan_records(swissprot_fasta, tiny_db_records):
    """300 real proteins none of which is in the conftest database (so old and new databases differ)."""
    taken = {r.id for r in tiny_db_records}
    return [r for r in read_fasta(swissprot_fasta) if len(r.sequence) <= 600 and r.id not in taken][:300]


def _answers(db: FeatureDatabase) -> dict:
    """What a reader shows: provenance facts, top examples and concept matches of a few features."""
    return {
        "provenance": (db.provenance["num_proteins"], db.provenance["created"], db.provenance["data_sources"]),
        "top": [[(e.protein_id, round(e.max_activation, 4)) for e in db.top_examples(f, 3)] for f in range(0, db.num_features, 9)],
        "concepts": [(m.feature, m.concept, round(m.f1, 4)) for m in db.features_for_concept("Helix", k=5)],
        "info": db.feature_info(1)["n_active_residues"],
    }


def test_build_db_killed_mid_run_then_rerun_while_a_reader_stays_open(
    tmp_path, tiny_db_path, tiny_esm2_path, tiny_sae_path, scan_records
):
    path = tmp_path / "features.sqlite"
    shutil.copy(tiny_db_path, path)
    digest = _digest(path)
    fasta = tmp_path / "scan.fasta"
    write_fasta(scan_records, fasta)
    command = _cli("build-db", str(fasta), "--model", str(tiny_esm2_path), "--sae", str(tiny_sae_path), "--out", str(path),
                   "--toks-per-batch", "1024")  # fmt: skip

    with FeatureDatabase(path) as reader:
        before = _answers(reader)
        assert before["concepts"], "the conftest database should have concept matches"

        # 1. SIGKILL in the middle of the pass: the old file is untouched, the reader unaffected
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        _wait_for(lambda: temp_files_for(path), proc, "the build started writing its temporary database")
        deadline = time.monotonic() + 0.3
        while time.monotonic() < deadline:  # reads while the rebuild runs
            assert _answers(reader) == before
        _kill(proc)
        leftovers = temp_files_for(path)
        assert len(leftovers) == 1, "the run finished before it was killed (or left no temporary file)"
        assert _digest(path) == digest
        with FeatureDatabase(path) as reopened:
            assert _answers(reopened) == before
        assert _answers(reader) == before

        # 2. the rerun succeeds despite the leftover and, the leftover being stale, removes it
        old = time.time() - STALE_AFTER_S - 60
        os.utime(leftovers[0], (old, old))
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        reads = 0
        while proc.poll() is None:  # the open reader keeps answering from the file it opened
            assert _answers(reader) == before
            reads += 1
            time.sleep(0.05)
        out, err = proc.communicate()
        assert proc.returncode == 0, err
        assert reads > 0
        assert not leftovers[0].exists() and temp_files_for(path) == []
        assert _answers(reader) == before  # still the old snapshot after the rename

    with FeatureDatabase(path) as fresh:  # a new open sees the new database
        after = _answers(fresh)
        assert fresh.provenance["num_proteins"] == len(scan_records)
        assert fresh.provenance["data_sources"] == [str(fasta)]
        assert after != before and after["concepts"] == []  # built without --concepts
        top = fresh.top_examples(0, 1)
        assert not top or top[0].protein_id in {r.id for r in scan_records}


def test_embed_killed_mid_run_resumes_without_redoing_or_losing_work(tmp_path, tiny_esm2_path, tiny_plm, scan_records):
    scan_records = scan_records[:150]  # ~25 shards of 2,000 residues: killed after 2, far from the end
    fasta = tmp_path / "proteins.fasta"
    write_fasta(scan_records, fasta)
    out = tmp_path / "store"
    command = _cli("embed", str(fasta), "--model", str(tiny_esm2_path), "--layer", "2", "--out", str(out),
                   "--shard-residues", "2000", "--toks-per-batch", "1024")  # fmt: skip

    def shards_indexed() -> int:
        try:
            return len(json.loads((out / "store.json").read_text())["shards"])
        except (OSError, ValueError, KeyError):
            return 0

    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _wait_for(lambda: shards_indexed() >= 2, proc, "two shards were written")
    _kill(proc)

    partial = EmbeddingStore(out)  # the index a killed run leaves is a valid store of whole proteins
    assert not partial.complete, "the run finished before it was killed"
    assert 0 < len(partial) < len(scan_records)
    for pid in partial.proteins:
        assert partial.get(pid).shape[0] == len(next(r for r in scan_records if r.id == pid).sequence)
    kept = {s["file"]: (out / s["file"]).stat().st_mtime_ns for s in partial._shards}
    done_before = list(partial.proteins)

    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr

    store = EmbeddingStore(out)
    assert store.complete
    assert sorted(store.proteins) == sorted(r.id for r in scan_records)
    assert store.proteins[: len(done_before)] == done_before  # the kept shards come first, as they were
    assert {f: (out / f).stat().st_mtime_ns for f in kept} == kept  # not rewritten: no work redone
    indexed = {s["file"] for s in store._shards}
    assert sorted(p.name for p in out.glob("shard_*.npy")) == sorted(indexed)  # no stray shard

    # every embedding equals fair-esm's forward pass (one protein per batch, no padding), before
    # and after the kill alike; a sample keeps the test short
    rng = np.random.default_rng(0)
    sample = sorted(set(rng.choice(done_before, 10).tolist()) | set(rng.choice(store.proteins[len(done_before) :], 15).tolist()))
    by_id = {r.id: r for r in scan_records}
    reference = dict(embed_sequences(tiny_plm, [by_id[p] for p in sample], 2, toks_per_batch=1))
    for pid in sample:
        np.testing.assert_allclose(store.get(pid), reference[pid][2], atol=2e-4, err_msg=pid)


def test_stale_temporary_files_are_removed_only_when_their_writer_is_dead(tmp_path):
    """What a rerun does with the leftovers of killed writers (core.atomic)."""
    target = tmp_path / "x.sqlite"
    target.write_text("old")
    code = (
        "import sys, time\n"
        "from interplm_plugins.core.atomic import atomic_path\n"
        "with atomic_path(sys.argv[1]) as tmp:\n"
        "    tmp.write_text('half')\n"
        "    print('writing', flush=True)\n"
        "    time.sleep(120)\n"
    )
    writers = [subprocess.Popen([sys.executable, "-c", code, str(target)], stdout=subprocess.PIPE, text=True) for _ in range(2)]
    for proc in writers:
        assert proc.stdout.readline().strip() == "writing"
    live, dead = writers
    _kill(dead)
    temps = temp_files_for(target)
    assert len(temps) == 2
    old = time.time() - 3600
    for tmp in temps:
        os.utime(tmp, (old, old))
    try:
        removed = remove_stale_temp_files(target)
        assert len(removed) == 1  # the dead writer's file; the live writer holds its lock
        assert len(temp_files_for(target)) == 1
        (survivor,) = temp_files_for(target)
        assert survivor.read_text() == "half"
    finally:
        _kill(live)
    now = time.time()
    os.utime(survivor, (now, now))
    assert remove_stale_temp_files(target) == []  # dead but young: left for now (it may have just been made)
    assert target.read_text() == "old"
