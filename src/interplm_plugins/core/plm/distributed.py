"""Sharded embedding on several processes of one job (``torchrun``; :mod:`~interplm_plugins.core.parallel`).

:func:`embed_to_store_distributed`: the proteins, in length order, are dealt round robin; process
``r`` embeds its share into its own store under ``OUT/parts/rank<r>-of-<W>/`` (resumable like any
store), then process 0 hard-links each part's shards into ``OUT`` (as
``shard_rank<r>-of-<W>_<n>.npy``; copied where links are impossible) and writes ``OUT/store.json``
listing them, so ``OUT`` is an ordinary store. Proteins already in an existing ``OUT`` store are
kept and not embedded again; rerunning with the same number of processes resumes every part.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Sequence

import torch.distributed as dist

from interplm_plugins.core.atomic import write_text_atomic
from interplm_plugins.core.parallel import _active, _share_errors, barrier
from interplm_plugins.core.plm.embed import checked_store_request, embed_to_store, store_path_for_layer
from interplm_plugins.core.plm.precision import DEFAULT_PRECISION
from interplm_plugins.core.plm.store import STORE_FORMAT, STORE_INDEX, EmbeddingStore, check_resumable
from interplm_plugins.errors import InterPLMError

PARTS_DIR = "parts"


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
