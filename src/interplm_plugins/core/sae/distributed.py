"""Data-parallel SAE training on several processes of one job (``torchrun``; :mod:`~interplm_plugins.core.parallel`).

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
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from interplm_plugins.core.parallel import _active, _share_errors, barrier, broadcast_object, default_device
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

    Call it on every process, inside :func:`~interplm_plugins.core.parallel.process_group`; every
    process returns the trained SAE (on the CPU); process 0 writes ``out_dir/sae.safetensors``, the
    checkpoints and the log. Without a process group it trains on one process.
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
