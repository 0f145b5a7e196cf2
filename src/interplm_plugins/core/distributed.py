"""Several processes on one job: data-parallel SAE training and sharded embedding (``torchrun``).

Launch any of the two commands under ``torchrun`` and they detect it from the environment it
sets (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``)::

    torchrun --nproc_per_node 2 -m interplm_plugins.cli train STORE --out OUT ...
    torchrun --nproc_per_node 2 -m interplm_plugins.cli embed FASTA --out STORE ...

Backends: NCCL with one GPU per process (``cuda:LOCAL_RANK``) when CUDA is available, gloo on
CPUs otherwise. See docs/DISTRIBUTED.md for clusters (several nodes, rendezvous).

Training (:func:`train_sae_distributed`): every process builds the same SAE from the same seed
and reads the same seeded batch stream (``store.iter_batches(batch_size, seed, start_batch=step)``,
the global batch); process ``r`` of ``W`` steps on rows ``[r*B//W, (r+1)*B//W)`` of each batch.
Gradients are summed across processes with weights ``rows / B`` (one all-reduce of one flat
buffer), so each process applies the update the whole batch gives, and the weights stay equal
everywhere; dead-feature counters use the union of features that fired on any process, the
starting bias and dead-feature resampling see the whole batch, logged metrics are averaged over
it, BatchTopK keeps the ``k * B`` largest activations of the whole batch (the slices' top values
are gathered to find the cut-off) and the AuxK loss normalises by the whole batch's residual
variance. A run on ``W`` processes therefore equals the one-process run with the same
``--batch-size``, for every SAE kind, up to float rounding (the batch is summed in another order).

Process 0 writes the checkpoint (the same file as a one-process run: either can resume the
other's) and the SAE, atomically; on resume it reads the checkpoint and broadcasts it, so only
process 0 needs the output folder. Resuming with the same number of processes, threads and
device reproduces the uninterrupted run bit for bit.

Embedding (:func:`embed_to_store_distributed`): the proteins, in length order, are dealt round
robin; process ``r`` embeds its share into its own store under ``OUT/parts/rank<r>-of-<W>/``
(resumable like any store), then process 0 hard-links each part's shards into ``OUT`` (as
``shard_rank<r>-of-<W>_<n>.npy``; copied where links are impossible) and writes ``OUT/store.json``
listing them, so ``OUT`` is an ordinary store. Proteins already in an existing ``OUT`` store are
kept and not embedded again; rerunning with the same number of processes resumes every part.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from interplm_plugins.core.atomic import write_text_atomic
from interplm_plugins.core.plm.embed import checked_store_request, embed_to_store, store_path_for_layer
from interplm_plugins.core.plm.precision import DEFAULT_PRECISION
from interplm_plugins.core.plm.store import STORE_FORMAT, STORE_INDEX, EmbeddingStore, check_resumable
from interplm_plugins.core.sae.files import save_sae
from interplm_plugins.core.sae.model import SAEConfig, SparseAutoencoder
from interplm_plugins.core.sae.train import (
    CHECKPOINT_NAME,
    SAE_NAME,
    StepSync,
    TrainConfig,
    _load_checkpoint,
    _save_checkpoint,
    _store_identity,
    make_training_state,
    prepared_sae_config,
    train_step,
)
from interplm_plugins.errors import InterPLMError

PARTS_DIR = "parts"


# ------------------------------------------------------------------------------ environment


@dataclass(frozen=True)
class DistEnv:
    """This process's place in the job (from torchrun's environment variables)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise InterPLMError(f"environment variable {name}={value!r} is not an integer") from None


def dist_env() -> DistEnv:
    """Rank, world size and local rank from ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` (default 0, 1, 0)."""
    env = DistEnv(_env_int("RANK", 0), _env_int("WORLD_SIZE", 1), _env_int("LOCAL_RANK", 0))
    if env.world_size < 1 or not 0 <= env.rank < env.world_size:
        raise InterPLMError(f"RANK={env.rank} does not fit WORLD_SIZE={env.world_size}")
    return env


def is_distributed() -> bool:
    """True when launched as one of several processes (``WORLD_SIZE`` > 1, as torchrun sets it)."""
    return dist_env().world_size > 1


def default_device(env: DistEnv | None = None) -> torch.device:
    """``cuda:LOCAL_RANK`` when CUDA is available, else the CPU."""
    env = env or dist_env()
    if torch.cuda.is_available():
        return torch.device("cuda", env.local_rank % torch.cuda.device_count())
    return torch.device("cpu")


def default_backend(device: torch.device) -> str:
    return "nccl" if device.type == "cuda" else "gloo"


@contextlib.contextmanager
def process_group(backend: str | None = None) -> Iterator[DistEnv]:
    """Join the job's process group (unless already joined) for the duration of the block."""
    env = dist_env()
    device = default_device(env)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    owned = False
    if env.world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend=backend or default_backend(device))
        owned = True
    try:
        yield env
        if owned:
            dist.barrier()  # leave together: a process tearing down gloo while a peer still talks aborts
    finally:
        if owned:
            dist.destroy_process_group()
            gc.collect()  # drop gloo's finished work objects while the interpreter is whole


def _active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def barrier() -> None:
    if _active():
        dist.barrier()


def broadcast_object(value, src: int = 0):
    """``value`` of process ``src`` on every process (itself when not distributed)."""
    if not _active():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def _share_errors(error: InterPLMError | None) -> None:
    """Raise on every process if any process met an error (so none waits for the others forever)."""
    if not _active():
        if error is not None:
            raise error
        return
    reasons: list = [None] * dist.get_world_size()
    dist.all_gather_object(reasons, None if error is None else (error.reason, str(error.file) if error.file else None, error.record))
    if error is not None:
        raise error
    for reason in reasons:
        if reason is not None:
            raise InterPLMError(reason[0], file=reason[1], record=reason[2])


# --------------------------------------------------------------------------------- training


def slice_bounds(batch_size: int, rank: int, world_size: int) -> tuple[int, int]:
    """Rows ``[start, end)`` of a ``batch_size`` global batch that process ``rank`` steps on."""
    return rank * batch_size // world_size, (rank + 1) * batch_size // world_size


class DistributedSync(StepSync):
    """:class:`~interplm_plugins.core.sae.train.StepSync` over the default process group."""

    single = False

    def __init__(self, batch: torch.Tensor):
        self.batch = batch

    def batch_sum(self, value: torch.Tensor) -> torch.Tensor:
        value = value.detach().clone()
        dist.all_reduce(value)
        return value

    def gather(self, values: torch.Tensor) -> torch.Tensor:
        parts = [torch.empty_like(values) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, values.contiguous())
        return torch.cat(parts)

    def global_batch(self, x: torch.Tensor) -> torch.Tensor:
        return self.batch

    def global_size(self, x: torch.Tensor) -> int:
        return len(self.batch)

    def reduce_gradients(self, parameters: list[torch.nn.Parameter], weight: float) -> None:
        grads = [p.grad for p in parameters]
        flat = torch.cat([g.reshape(-1) for g in grads]).mul_(weight)
        dist.all_reduce(flat)
        offset = 0
        for g in grads:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()

    def reduce_any(self, mask: torch.Tensor) -> torch.Tensor:
        counts = mask.to(torch.int32)
        dist.all_reduce(counts, op=dist.ReduceOp.MAX)
        return counts.bool()

    def reduce_min(self, value: torch.Tensor) -> torch.Tensor:
        value = value.detach().clone().reshape(())
        dist.all_reduce(value, op=dist.ReduceOp.MIN)
        return value

    def reduce_mean(self, values: torch.Tensor, weight: float) -> torch.Tensor:
        values = values * weight
        dist.all_reduce(values)
        return values


def _move_state(state, device: torch.device) -> None:
    state.sae.to(device)
    state.tokens_since_fired = state.tokens_since_fired.to(device)


def train_sae_distributed(
    store,
    sae_config: SAEConfig,
    train_config: TrainConfig,
    out_dir: str | os.PathLike,
    resume: bool = True,
    progress: bool = True,
    device: torch.device | str | None = None,
) -> SparseAutoencoder:
    """:func:`~interplm_plugins.core.sae.train.train_sae` on every process of the job (see the module docstring).

    Call it on every process, inside :func:`process_group`; every process returns the trained SAE
    (on the CPU); process 0 writes ``out_dir/sae.safetensors``, the checkpoints and the log.
    Without a process group it trains on one process.
    """
    rank, world = (dist.get_rank(), dist.get_world_size()) if _active() else (0, 1)
    device = torch.device(device) if device is not None else default_device()
    out_dir = Path(out_dir)
    error = None
    if train_config.batch_size < world:
        error = InterPLMError(f"batch size {train_config.batch_size} is smaller than the {world} processes")
    try:
        sae_config = prepared_sae_config(store, sae_config)
    except InterPLMError as exc:
        error = exc
    _share_errors(error)
    store_id = _store_identity(store)
    state = make_training_state(sae_config, train_config)

    payload, error = None, None
    if rank == 0:
        out_dir.mkdir(parents=True, exist_ok=True)
        checkpoint = out_dir / CHECKPOINT_NAME
        try:
            if resume and checkpoint.exists():
                payload = _load_checkpoint(checkpoint, sae_config, train_config, store_id)
            elif checkpoint.exists():
                checkpoint.unlink()
        except InterPLMError as exc:
            error = exc
    _share_errors(error)
    payload = broadcast_object(payload)
    if payload is not None:
        state.load_state_dict(payload)
    _move_state(state, device)

    start, end = slice_bounds(train_config.batch_size, rank, world)
    bar = tqdm(total=train_config.steps, initial=state.step, unit="step", desc=f"train SAE ({world} processes)", disable=not (progress and rank == 0))
    with bar:
        if state.step < train_config.steps:
            for batch in store.iter_batches(train_config.batch_size, seed=train_config.seed, start_batch=state.step):
                full = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).to(device)
                sync = DistributedSync(full) if world > 1 else None
                metrics = train_step(state, full[start:end] if world > 1 else full, sync)
                bar.update(1)
                if state.step % train_config.log_every == 0 or state.step == train_config.steps:
                    state.log.append(metrics)
                    bar.set_postfix(loss=f"{metrics['loss']:.4g}", l0=f"{metrics['l0']:.1f}", dead=f"{metrics['dead_fraction']:.2f}")
                if rank == 0 and (state.step % train_config.checkpoint_every == 0 or state.step == train_config.steps):
                    _save_checkpoint(state, out_dir, sae_config, store_id)
                if state.step >= train_config.steps:
                    break
    if state.step < train_config.steps:
        raise InterPLMError(f"the store ran out of batches after step {state.step}", file=getattr(store, "path", None))
    sae = state.sae.eval().to("cpu")
    if rank == 0:
        save_sae(sae, out_dir / SAE_NAME)
    barrier()
    return sae


# -------------------------------------------------------------------------------- embedding


def part_name(rank: int, world_size: int) -> str:
    return f"rank{rank:04d}-of-{world_size:04d}"


def deal_records(records: Sequence, rank: int, world_size: int) -> list:
    """Process ``rank``'s share: every ``world_size``-th protein in length order (balanced work)."""
    order = sorted(range(len(records)), key=lambda i: (len(records[i].sequence), i))
    return [records[i] for i in order[rank::world_size]]


def _linked_name(rank: int, world_size: int, shard_file: str) -> str:
    return f"shard_{part_name(rank, world_size)}_{shard_file.removeprefix('shard_')}"


def _existing_shards(path: Path, metadata: dict, own_prefixes: tuple[str, ...]) -> list[dict]:
    """Shards of an existing store at ``path`` other than this job's own parts' (checked to fit)."""
    if not (path / STORE_INDEX).is_file():
        return []
    existing = EmbeddingStore(path)
    check_resumable(existing, metadata)
    return [s for s in existing._shards if not s["file"].startswith(own_prefixes)]


def _link_into(source: Path, target: Path) -> None:
    """``target`` becomes ``source``'s file: a hard link, or an atomic copy where links are impossible."""
    if target.exists() and os.path.samefile(source, target):
        return
    temporary = target.with_name(f".{target.name}.link")
    temporary.unlink(missing_ok=True)
    try:
        os.link(source, temporary)
    except OSError:  # another file system, or one without hard links
        shutil.copyfile(source, temporary)
    os.replace(temporary, target)


def embed_to_store_distributed(
    plm,
    records: Sequence,
    layers: int | Sequence[int],
    out_dir: str | os.PathLike,
    toks_per_batch: int = 4096,
    shard_residues: int = 200_000,
    dtype: str = "float32",
    resume: bool = True,
    progress: bool = False,
    **embed_options,
) -> dict[int, EmbeddingStore]:
    """:func:`~interplm_plugins.core.plm.embed.embed_to_store` with the proteins shared among the job's
    processes (see the module docstring). Call it on every process; every process returns the stores."""
    rank, world = (dist.get_rank(), dist.get_world_size()) if _active() else (0, 1)
    out_dir = Path(out_dir)
    layer_list: list[int] = []
    error = None
    try:
        layer_list = checked_store_request(plm, records, layers)
        if not resume and rank == 0:
            for layer in layer_list:
                shutil.rmtree(store_path_for_layer(out_dir, layer, layer_list), ignore_errors=True)
            shutil.rmtree(out_dir / PARTS_DIR, ignore_errors=True)
    except InterPLMError as exc:
        error = exc
    _share_errors(error)
    barrier()

    part_root = out_dir / PARTS_DIR / part_name(rank, world)
    stores = {layer: store_path_for_layer(out_dir, layer, layer_list) for layer in layer_list}
    part_paths = {r: {layer: store_path_for_layer(out_dir / PARTS_DIR / part_name(r, world), layer, layer_list) for layer in layer_list} for r in range(world)}
    base: dict[int, list[dict]] = {}
    own_prefixes = tuple(f"shard_{part_name(r, world)}_" for r in range(world))
    error = None
    try:
        for layer, path in stores.items():
            metadata = {"plm_identity": plm.identity, "layer": layer, "dim": plm.embed_dim, "dtype": dtype,
                        "compute_precision": embed_options.get("precision", DEFAULT_PRECISION)}  # fmt: skip
            base[layer] = _existing_shards(path, metadata, own_prefixes) if resume else []
    except InterPLMError as exc:
        error = exc
    _share_errors(error)
    done = set.intersection(*({pid for shard in base[layer] for pid in shard["proteins"]} for layer in layer_list))
    mine = [r for r in deal_records(records, rank, world) if r.id not in done]
    error = None
    try:
        embed_to_store(plm, mine, layer_list, part_root, toks_per_batch=toks_per_batch, shard_residues=shard_residues,
                       dtype=dtype, resume=resume, progress=progress and rank == 0, **embed_options)  # fmt: skip
    except InterPLMError as exc:
        error = exc
    _share_errors(error)
    barrier()
    if rank == 0:
        for layer, path in stores.items():
            shards = list(base[layer])
            metadata = None
            path.mkdir(parents=True, exist_ok=True)
            for r in range(world):
                part = EmbeddingStore(part_paths[r][layer])
                metadata = metadata or part.metadata
                for shard in part._shards:
                    name = _linked_name(r, world, shard["file"])
                    _link_into(part.path / shard["file"], path / name)
                    shards.append({**shard, "file": name})
            index = {"format": STORE_FORMAT, "metadata": metadata, "complete": True, "shards": shards}
            write_text_atomic(path / STORE_INDEX, json.dumps(index))
    barrier()
    return {layer: EmbeddingStore(path) for layer, path in stores.items()}
