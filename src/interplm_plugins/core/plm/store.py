"""The on-disk embedding store that SAE training, normalisation and evaluation stream from.

An :class:`EmbeddingStore` is a folder::

    store.json          # format, metadata (PLM name and identity, layer, dim, dtype), shard table
    shard_00000.npy     # [rows, dim] residue vectors of whole proteins, memory-mapped on read
    shard_00001.npy ...

``store.json`` is rewritten atomically after each shard (:class:`_StoreWriter`), so an interrupted
:func:`~interplm_plugins.core.plm.embed.embed_to_store` resumes with the proteins it had not
finished, and a reader never sees a shard without its index. The store records the
``compute_precision`` of its embeddings; a store is only resumed in the same one
(:func:`check_resumable`). :func:`iter_store_sample` is the one shuffled pass over (a sample of) a
store's residues that SAE normalisation and evaluation share.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from interplm_plugins.core.atomic import atomic_path, write_text_atomic
from interplm_plugins.core.plm.precision import DEFAULT_PRECISION
from interplm_plugins.errors import InterPLMError

STORE_FORMAT = "interplm-plugins-embedding-store/1"
STORE_INDEX = "store.json"


class EmbeddingStore:
    """A read-only, memory-mapped store of one layer's per-residue embeddings (see the module docstring)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        index_file = self.path / STORE_INDEX
        if not index_file.is_file():
            raise InterPLMError(f"not an embedding store (no {STORE_INDEX})", file=self.path)
        try:
            index = json.loads(index_file.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            raise InterPLMError(f"unreadable store index ({exc})", file=index_file) from None
        if not isinstance(index, dict) or index.get("format") != STORE_FORMAT:
            raise InterPLMError(f"not an embedding store of format {STORE_FORMAT}", file=index_file)
        self.metadata: dict = index.get("metadata")
        if not isinstance(self.metadata, dict):
            raise InterPLMError("store index has no metadata object", file=index_file)
        self.complete: bool = bool(index.get("complete"))
        dim = self.metadata.get("dim")
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
            raise InterPLMError(f"store index: dim must be a positive integer, not {dim!r}", file=index_file)
        self.dim = dim
        self._shards: list[dict] = index.get("shards")
        if not isinstance(self._shards, list):
            raise InterPLMError("store index has no list of shards", file=index_file)
        self.proteins: list[str] = []
        self.lengths: list[int] = []
        self._where: dict[str, tuple[int, int, int]] = {}  # id -> (shard, row offset, length)
        for s, shard in enumerate(self._shards):
            _check_shard_entry(shard, s, index_file)
            offset = 0
            for pid, length in zip(shard["proteins"], shard["lengths"]):
                if pid in self._where:
                    raise InterPLMError("store index lists this protein twice", file=index_file, record=pid)
                self._where[pid] = (s, offset, length)
                self.proteins.append(pid)
                self.lengths.append(length)
                offset += length
        self.num_residues = int(sum(self.lengths))
        self._open: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.proteins)

    def __contains__(self, protein_id: str) -> bool:
        return protein_id in self._where

    def _map_shard(self, s: int) -> np.ndarray:
        file = self.path / self._shards[s]["file"]
        try:
            array = np.load(file, mmap_mode="r")  # allow_pickle stays False: object arrays are refused
        except (OSError, ValueError) as exc:
            reason = "not a NumPy array file (pickled data is never loaded)" if "pickle" in str(exc) else str(exc)
            raise InterPLMError(f"unreadable embedding shard ({reason})", file=file) from None
        expected = (int(self._shards[s]["rows"]), self.dim)
        if array.shape != expected:
            raise InterPLMError(f"shard has shape {array.shape}, index says {expected} (truncated?)", file=file)
        if array.dtype.kind != "f":
            raise InterPLMError(f"shard holds {array.dtype} values, not floating-point embeddings", file=file)
        return array

    def _shard(self, s: int) -> np.ndarray:
        if s not in self._open:
            self._open[s] = self._map_shard(s)
        return self._open[s]

    def _read_rows(self, s: int, rows: np.ndarray) -> np.ndarray:
        """``shard[rows]`` as an array in memory, read in file order through a mapping that is
        closed afterwards: streaming a store larger than memory never keeps its pages mapped."""
        array = self._open[s] if s in self._open else self._map_shard(s)
        in_file_order = np.sort(rows)
        data = array[in_file_order]  # sequential reads
        del array  # (unmapped here unless get() keeps it open)
        return data[np.searchsorted(in_file_order, rows)]  # rows are distinct: their places in the sorted read

    def get(self, protein_id: str) -> np.ndarray:
        """The ``[length, dim]`` embeddings of one protein (a read-only memory-mapped view)."""
        if protein_id not in self._where:
            raise InterPLMError("protein not in the embedding store", file=self.path, record=protein_id)
        s, offset, length = self._where[protein_id]
        return self._shard(s)[offset : offset + length]

    def iter_batches(
        self, batch_size: int, seed: int = 0, start_batch: int = 0, epochs: int | None = None
    ) -> Iterator[np.ndarray]:
        """Shuffled ``[batch_size, dim]`` residue batches, streaming one shard at a time.

        Each epoch visits the shards in a seeded random order and each shard's rows in a seeded
        random permutation, so only one shard is in memory and the stream is a deterministic
        function of ``seed``: ``start_batch=n`` gives exactly what the first call gives after
        ``n`` batches (how training resumes). ``epochs=None`` cycles forever; a finite run ends
        with a last, possibly short, batch.
        """
        if self.num_residues == 0:
            raise InterPLMError("the embedding store holds no residues", file=self.path)
        if batch_size <= 0:
            raise InterPLMError(f"batch size must be positive, got {batch_size}")
        skip = start_batch * batch_size
        if epochs is not None and skip >= epochs * self.num_residues:
            return
        epoch, skip = divmod(skip, self.num_residues)
        pending: np.ndarray | None = None  # rows carried into the next batch (fewer than batch_size)
        while epochs is None or epoch < epochs:
            rng = np.random.default_rng([seed, epoch])
            for s in rng.permutation(len(self._shards)):
                rows = int(self._shards[s]["rows"])
                perm = rng.permutation(rows)  # drawn even for skipped shards: the stream must not depend on skip
                if skip >= rows:
                    skip -= rows
                    continue
                chunk = self._read_rows(int(s), perm[skip:])
                skip = 0
                start = 0
                if pending is not None:  # complete the carried rows (never a copy of the whole shard)
                    need = batch_size - len(pending)
                    if len(chunk) < need:
                        pending = np.concatenate([pending, chunk])
                        continue
                    yield np.concatenate([pending, chunk[:need]])
                    pending, start = None, need
                while start + batch_size <= len(chunk):
                    yield chunk[start : start + batch_size].copy()  # (a view would keep the whole shard alive)
                    start += batch_size
                if start < len(chunk):
                    pending = chunk[start:].copy()
                del chunk  # before the next shard is read: one shard in memory at a time
            epoch += 1
        if pending is not None and len(pending):
            yield pending


def _is_count(value, minimum: int = 0) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def _check_shard_entry(shard, s: int, index_file: Path) -> None:
    """Raise unless shard ``s`` of a store index is well formed (the index is the only truth a reader has)."""
    where = f"store index: shard {s}"
    if not isinstance(shard, dict) or not all(k in shard for k in ("file", "rows", "proteins", "lengths")):
        raise InterPLMError(f"{where} lacks file, rows, proteins or lengths", file=index_file)
    name = shard["file"]
    if not isinstance(name, str) or not name or Path(name).name != name or name in (".", ".."):
        raise InterPLMError(f"{where}: file {name!r} is not a file name inside the store", file=index_file)
    proteins, lengths, rows = shard["proteins"], shard["lengths"], shard["rows"]
    if not isinstance(proteins, list) or not all(isinstance(p, str) and p for p in proteins):
        raise InterPLMError(f"{where}: proteins must be a list of ids", file=index_file)
    if not isinstance(lengths, list) or len(lengths) != len(proteins) or not all(_is_count(n, 1) for n in lengths):
        raise InterPLMError(f"{where}: lengths must be one positive integer per protein", file=index_file)
    if not _is_count(rows) or sum(lengths) != rows:
        raise InterPLMError(f"{where}: its proteins' lengths add up to {sum(lengths)}, not its {rows!r} rows", file=index_file)


#: Store metadata a resumed embedding must share with the store (with the value a store that
#: predates the key has): the rest of the store was computed with these.
RESUME_KEYS: dict[str, object] = {"plm_identity": None, "layer": None, "dim": None, "dtype": None, "compute_precision": DEFAULT_PRECISION}


def check_resumable(existing: EmbeddingStore, metadata: dict) -> None:
    """Raise unless ``existing`` was made as ``metadata`` says (:data:`RESUME_KEYS`), so that adding to it mixes nothing."""
    for key, default in RESUME_KEYS.items():
        was, now = existing.metadata.get(key, default), metadata.get(key, default)
        if was != now:
            raise InterPLMError(f"store was made with {key}={was!r}, not {now!r}; use another output folder or --no-resume", file=existing.path)


class _StoreWriter:
    """Appends proteins to a store folder shard by shard; ``store.json`` is the commit point."""

    def __init__(self, path: Path, metadata: dict, shard_residues: int, resume: bool):
        self.path = path
        self.shard_residues = shard_residues
        index_file = path / STORE_INDEX
        if index_file.exists() and resume:
            existing = EmbeddingStore(path)
            check_resumable(existing, metadata)
            self.shards = existing._shards
        else:
            if path.exists():
                shutil.rmtree(path)
            self.shards = []
        path.mkdir(parents=True, exist_ok=True)
        self.metadata = metadata
        self.dtype = np.dtype(metadata["dtype"])
        self.done = {pid for shard in self.shards for pid in shard["proteins"]}
        self._ids: list[str] = []
        self._arrays: list[np.ndarray] = []
        self._rows = 0
        # Shards a killed run wrote but never indexed are garbage: remove them.
        indexed = {shard["file"] for shard in self.shards}
        for stray in path.glob("shard_*.npy"):
            if stray.name not in indexed:
                stray.unlink()

    def add(self, protein_id: str, array: np.ndarray) -> None:
        self._ids.append(protein_id)
        self._arrays.append(array.astype(self.dtype, copy=False))
        self._rows += len(array)
        if self._rows >= self.shard_residues:
            self.flush()

    def flush(self, complete: bool = False) -> None:
        if self._ids:
            name = f"shard_{len(self.shards):05d}.npy"
            with atomic_path(self.path / name) as tmp:
                with open(tmp, "wb") as fh:
                    np.save(fh, np.concatenate(self._arrays))
            self.shards.append({"file": name, "rows": self._rows, "proteins": self._ids, "lengths": [len(a) for a in self._arrays]})
            self._ids, self._arrays, self._rows = [], [], 0
        index = {"format": STORE_FORMAT, "metadata": self.metadata, "complete": complete, "shards": self.shards}
        write_text_atomic(self.path / STORE_INDEX, json.dumps(index))


def iter_store_sample(store, max_residues: int | None, batch_size: int = 4096, seed: int = 0):
    """Batches ``[B, D]`` float32 tensors of one shuffled pass over ``store``, at most ``max_residues`` rows."""
    seen = 0
    for batch in store.iter_batches(batch_size, seed=seed, epochs=1):
        if max_residues is not None:
            batch = batch[: max_residues - seen]
        if len(batch) == 0:
            break
        seen += len(batch)
        yield torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))
        if max_residues is not None and seen >= max_residues:
            break
