"""Several processes on one job (``torchrun``): where this process is, and the process group.

Launch a command under ``torchrun`` and it detects it from the environment torchrun sets
(``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``)::

    torchrun --nproc_per_node 2 -m interplm_plugins.cli train STORE --out OUT ...
    torchrun --nproc_per_node 2 -m interplm_plugins.cli embed FASTA --out STORE ...

Backends: NCCL with one GPU per process (``cuda:LOCAL_RANK``) when CUDA is available, gloo on
CPUs otherwise. See docs/DISTRIBUTED.md for clusters (several nodes, rendezvous). The two jobs
built on this are sharded embedding (:mod:`~interplm_plugins.core.plm.distributed`) and
data-parallel SAE training (:mod:`~interplm_plugins.core.sae.distributed`); both use the same
helpers to share a value or an error among the processes.
"""

from __future__ import annotations

import contextlib
import gc
import os
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.distributed as dist

from interplm_plugins.errors import InterPLMError


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
