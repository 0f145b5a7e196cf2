"""Per-residue ESM-2 embeddings and the on-disk embedding store that SAE training streams from.

``embed_sequences`` batches proteins by a token budget over length-sorted sequences, runs the
forward pass only as deep as the deepest requested layer, drops BOS/EOS, and embeds proteins
longer than the model's 1,022-residue window as overlapping windows: each residue takes its
vector from the window in which it lies furthest from an edge, so every residue has context on
both sides wherever the protein allows. Non-standard residues (X, U, O, B, Z) are tokenised by
ESM's own alphabet, which has a token for each.

An :class:`EmbeddingStore` is a folder::

    store.json          # format, metadata (PLM name and identity, layer, dim, dtype), shard table
    shard_00000.npy     # [rows, dim] residue vectors of whole proteins, memory-mapped on read
    shard_00001.npy ...

``store.json`` is rewritten atomically after each shard, so an interrupted ``embed_to_store``
resumes with the proteins it had not finished, and a reader never sees a shard without its index.

``precision="bf16"`` runs the forward pass under bfloat16 autocast (matrix products in bf16, the
residual stream, layer norms and softmax in float32; :mod:`~interplm_plugins.core.precision`);
outputs are float32 either way, and the store's ``dtype`` (float32 or float16) is what is kept on
disk. The store records its ``compute_precision``; a store is only resumed in the same one.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from interplm_plugins.core.atomic import atomic_path, write_text_atomic
from interplm_plugins.core.inputs.sequences import ProteinRecord
from interplm_plugins.core.plm import PLM
from interplm_plugins.core.precision import DEFAULT_PRECISION, check_precision, compute_precision
from interplm_plugins.errors import InterPLMError

STORE_FORMAT = "interplm-plugins-embedding-store/1"
STORE_INDEX = "store.json"
#: Residues ESM-2 embeds at once (its 1,024 positions less BOS and EOS).
MAX_WINDOW = 1022


# ------------------------------------------------------------------------------ forward pass


def _fast_path_ok(layer) -> bool:
    """True for fair-esm ESM-2 blocks (rotary self-attention, no extra key/value bias) without
    hooks, which :func:`_block_forward` computes; anything else (a hooked block, as
    :mod:`~interplm_plugins.core.intervene` makes) goes through the block's own ``forward``."""
    attn = getattr(layer, "self_attn", None)
    hooked = any(getattr(m, name, None) for m in (layer, attn) for name in ("_forward_hooks", "_forward_pre_hooks"))
    return (
        attn is not None
        and not hooked
        and getattr(attn, "rot_emb", None) is not None
        and not getattr(attn, "encoder_decoder_attention", False)  # (ESM-2 passes query = key = value)
        and getattr(attn, "bias_k", None) is None
        and not getattr(attn, "add_zero_attn", False)
        and not attn.training
    )


def _fused_attention_weights(attn) -> tuple[torch.Tensor, torch.Tensor]:
    """One ``(3E, E)`` projection for q, k and v (q pre-scaled), with the q and k features of
    each head reordered so that rotary pairs (``i``, ``i + head_dim/2``) are adjacent; cached on
    the module until any of its weights changes."""
    params = (attn.q_proj.weight, attn.q_proj.bias, attn.k_proj.weight, attn.k_proj.bias, attn.v_proj.weight, attn.v_proj.bias)
    key = tuple((p.data_ptr(), p._version) for p in params)
    cached = getattr(attn, "_interplm_fused_qkv", None)
    if cached is not None and cached[0] == key:
        return cached[1], cached[2]
    heads, head_dim = attn.num_heads, attn.head_dim
    half = head_dim // 2
    within = torch.stack([torch.arange(half), torch.arange(half) + half], dim=1).reshape(-1)  # 0, h, 1, h+1, ...
    order = (torch.arange(heads)[:, None] * head_dim + within[None, :]).reshape(-1).to(attn.q_proj.weight.device)
    with torch.no_grad():
        weight = torch.cat([attn.q_proj.weight[order] * attn.scaling, attn.k_proj.weight[order], attn.v_proj.weight])
        bias = torch.cat([attn.q_proj.bias[order] * attn.scaling, attn.k_proj.bias[order], attn.v_proj.bias])
    attn._interplm_fused_qkv = (key, weight, bias)
    return weight, bias


def _rotation(attn, length: int, like: torch.Tensor) -> torch.Tensor:
    """``exp(i * position * inv_freq)`` as a complex ``(length, 1, head_dim/2)`` tensor (cached)."""
    cached = getattr(attn, "_interplm_rotation", None)
    if cached is not None and cached.shape[0] >= length and cached.device == like.device:
        return cached[:length]
    inv_freq = attn.rot_emb.inv_freq.to(like.device, torch.float32)
    angles = torch.outer(torch.arange(max(length, 1024), device=like.device, dtype=torch.float32), inv_freq)
    rotation = torch.polar(torch.ones_like(angles), angles)[:, None, :]
    attn._interplm_rotation = rotation
    return rotation[:length]


def _block_forward(layer, x: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
    """fair-esm's ``TransformerLayer.forward`` on batch-first ``x`` ``(B, T, E)``, with fewer passes.

    The same operations on the same weights (pre-norm, q scaled, rotary q/k, attention masked at
    padding keys, exact-erf GELU feed-forward), computed as: one matrix product for q, k and v;
    the rotary rotation as one complex multiplication (q and k features reordered so that each
    rotated pair is adjacent: dot products are unchanged); PyTorch's fused
    ``scaled_dot_product_attention``, which never builds the ``(B, heads, T, T)`` weight tensors
    fair-esm materialises several times; a fused GELU. Results agree with fair-esm's to float32
    rounding. ``keep``: ``(B, 1, 1, T)``, True at real tokens.
    """
    attn = layer.self_attn
    batch, length, dim = x.shape
    heads, head_dim = attn.num_heads, attn.head_dim
    weight, bias = _fused_attention_weights(attn)
    qkv = torch.nn.functional.linear(layer.self_attn_layer_norm(x), weight, bias)  # (B, T, 3E)
    rotation = _rotation(attn, length, x)
    # The rotation is complex float32 (there is no complex bfloat16): under bf16 autocast q and k
    # are rotated in float32 (``.float()`` is a no-op otherwise) and attention casts them back.
    q = torch.view_as_real(torch.view_as_complex(qkv[..., :dim].float().unflatten(-1, (heads, head_dim // 2, 2))) * rotation)
    k = torch.view_as_real(torch.view_as_complex(qkv[..., dim : 2 * dim].float().unflatten(-1, (heads, head_dim // 2, 2))) * rotation)
    v = qkv[..., 2 * dim :].unflatten(-1, (heads, head_dim))
    out = torch.nn.functional.scaled_dot_product_attention(
        q.flatten(-2).transpose(1, 2), k.flatten(-2).transpose(1, 2), v.transpose(1, 2), attn_mask=keep, scale=1.0
    )
    x = x + attn.out_proj(out.transpose(1, 2).reshape(batch, length, dim))
    return x + layer.fc2(torch.nn.functional.gelu(layer.fc1(layer.final_layer_norm(x))))


def forward_layers(plm: PLM, tokens: torch.Tensor, layers: Sequence[int]) -> dict[int, torch.Tensor]:
    """fair-esm's ``ESM2.forward`` representations for ``layers``, stopping after the deepest one.

    Returns ``{layer: (B, T, E)}`` as ``model(tokens, repr_layers=layers)["representations"]``
    would (the last layer after ``emb_layer_norm_after``), without computing deeper blocks or
    logits, and with fused attention (:func:`_block_forward`; equal to float32 rounding).
    """
    model = plm.model
    wanted = sorted({plm.check_layer(layer) for layer in layers})
    deepest = wanted[-1]
    padding_mask = tokens.eq(model.padding_idx)
    x = model.embed_scale * model.embed_tokens(tokens)
    if model.token_dropout:  # the same rescaling ESM2.forward applies (it depends on <mask> counts)
        x = x.masked_fill((tokens == model.mask_idx).unsqueeze(-1), 0.0)
        mask_ratio_train = 0.15 * 0.8
        src_lengths = (~padding_mask).sum(-1)
        mask_ratio_observed = (tokens == model.mask_idx).sum(-1).to(x.dtype) / src_lengths
        x = x * (1 - mask_ratio_train) / (1 - mask_ratio_observed)[:, None, None]
    x = x * (1 - padding_mask.unsqueeze(-1).type_as(x))
    out: dict[int, torch.Tensor] = {}
    if 0 in wanted:
        out[0] = x
    has_padding = bool(padding_mask.any())
    keep = (~padding_mask)[:, None, None, :] if has_padding else None
    for index, block in enumerate(model.layers[:deepest]):
        if _fast_path_ok(block):
            x = _block_forward(block, x, keep)
        else:  # fair-esm's own block, time-first
            x = block(x.transpose(0, 1), self_attn_padding_mask=padding_mask if has_padding else None, need_head_weights=False)[0]
            x = x.transpose(0, 1)
        if index + 1 in wanted and index + 1 != model.num_layers:
            out[index + 1] = x
    if deepest == model.num_layers:
        out[deepest] = model.emb_layer_norm_after(x)
    return out


# ------------------------------------------------------------------------------- batching


@dataclass(frozen=True)
class _Piece:
    """One window of one protein: residues ``start:end`` of record ``index``."""

    index: int
    start: int
    end: int


def window_starts(length: int, window: int, overlap: int) -> list[int]:
    """Start offsets of windows of ``window`` residues covering ``length`` with at least ``overlap`` shared."""
    if length <= window:
        return [0]
    if not 0 <= overlap < window:
        raise InterPLMError(f"window overlap {overlap} must be >= 0 and smaller than the window ({window})")
    step = window - overlap
    count = -(-(length - window) // step) + 1
    # Spread the windows evenly so the last one ends exactly at the protein's end.
    return [round(i * (length - window) / (count - 1)) for i in range(count)]


def _window_owner(starts: list[int], window: int, length: int) -> np.ndarray:
    """For each residue, the index of the window in which it lies furthest from an edge."""
    pos = np.arange(length)[:, None]
    begin = np.asarray(starts)[None, :]
    end = np.minimum(begin + window, length)
    inside = (pos >= begin) & (pos < end)
    margin = np.where(inside, np.minimum(pos - begin, end - 1 - pos), -1)
    return margin.argmax(axis=1)


def _token_batches(pieces: list[_Piece], toks_per_batch: int) -> Iterator[list[_Piece]]:
    """Group length-sorted pieces so that ``(longest + 2) * count <= toks_per_batch`` (one piece at least)."""
    batch: list[_Piece] = []
    longest = 0
    for piece in pieces:
        size = piece.end - piece.start + 2
        if batch and max(longest, size) * (len(batch) + 1) > toks_per_batch:
            yield batch
            batch, longest = [], 0
        batch.append(piece)
        longest = max(longest, size)
    if batch:
        yield batch


@torch.inference_mode()
def embed_sequences(
    plm: PLM,
    records: Iterable[ProteinRecord],
    layers: int | Sequence[int],
    toks_per_batch: int = 4096,
    window: int = MAX_WINDOW,
    overlap: int = 256,
    progress: bool = False,
    precision: str = DEFAULT_PRECISION,
) -> Iterator[tuple[str, dict[int, np.ndarray]]]:
    """Yield ``(protein id, {layer: float32 [length, dim]})`` for each record, BOS/EOS removed.

    Proteins are processed in length order (so padding is small) and yielded as soon as all
    their windows are done; the order of the output is therefore not the input order.
    ``precision``: the forward pass's compute precision (``"fp32"``, or ``"bf16"``; see the module
    docstring); the arrays yielded are float32 either way.
    """
    check_precision(precision)
    layer_list = [layers] if isinstance(layers, int) else list(layers)
    if not layer_list:
        raise InterPLMError("no layer requested")
    for layer in layer_list:
        plm.check_layer(layer)
    window = min(int(window), MAX_WINDOW)
    records = list(records)
    pieces: list[_Piece] = []
    owners: dict[int, tuple[list[int], np.ndarray]] = {}
    for i, rec in enumerate(records):
        starts = window_starts(len(rec.sequence), window, overlap)
        owners[i] = (starts, _window_owner(starts, window, len(rec.sequence)))
        pieces.extend(_Piece(i, s, min(s + window, len(rec.sequence))) for s in starts)
    pieces.sort(key=lambda p: (p.end - p.start, p.index, p.start))
    pending: dict[int, dict[int, dict[int, np.ndarray]]] = {}  # record -> window start -> layer -> array
    converter = plm.alphabet.get_batch_converter()
    device = next(plm.model.parameters()).device
    total = sum(len(r.sequence) for r in records)
    with tqdm(total=total, unit="res", desc="embed", disable=not progress) as bar:
        for batch in _token_batches(pieces, toks_per_batch):
            data = [(str(p.index), records[p.index].sequence[p.start : p.end]) for p in batch]
            _, _, tokens = converter(data)
            with compute_precision(precision, device):  # (only around the forward pass: never across the yield)
                reps = forward_layers(plm, tokens.to(device), layer_list)
            for row, piece in enumerate(batch):
                n = piece.end - piece.start
                got = {layer: reps[layer][row, 1 : n + 1].float().cpu().numpy() for layer in layer_list}
                pending.setdefault(piece.index, {})[piece.start] = got
                bar.update(n)
                starts, owner = owners[piece.index]
                if len(pending[piece.index]) == len(starts):
                    done = pending.pop(piece.index)
                    yield records[piece.index].id, _stitch(done, starts, owner, layer_list)


def _stitch(parts: dict[int, dict[int, np.ndarray]], starts: list[int], owner: np.ndarray, layers: list[int]) -> dict[int, np.ndarray]:
    if len(starts) == 1:
        return parts[starts[0]]
    out = {}
    for layer in layers:
        dim = parts[starts[0]][layer].shape[1]
        full = np.empty((len(owner), dim), dtype=np.float32)
        for w, start in enumerate(starts):
            rows = np.nonzero(owner == w)[0]
            full[rows] = parts[start][layer][rows - start]
        out[layer] = full
    return out


# ---------------------------------------------------------------------------- the store


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


def checked_store_request(plm: PLM, records: Sequence[ProteinRecord], layers: int | Sequence[int]) -> list[int]:
    """The sorted layers of a store request, after checking the model has them and protein ids are unique."""
    layer_list = [layers] if isinstance(layers, int) else sorted(set(layers))
    seen: set[str] = set()
    for record in records:
        if record.id in seen:
            raise InterPLMError("duplicate protein id", record=record.id)
        seen.add(record.id)
    for layer in layer_list:
        plm.check_layer(layer)
    return layer_list


def store_path_for_layer(out_dir: str | os.PathLike, layer: int, layers: Sequence[int]) -> Path:
    """Where ``embed_to_store`` puts ``layer``: ``out_dir`` itself for one layer, ``out_dir/layer_<n>`` for several."""
    return Path(out_dir) if len(layers) == 1 else Path(out_dir) / f"layer_{layer}"


def embed_to_store(
    plm: PLM,
    records: Sequence[ProteinRecord],
    layers: int | Sequence[int],
    out_dir: str | os.PathLike,
    toks_per_batch: int = 4096,
    shard_residues: int = 200_000,
    dtype: str = "float32",
    resume: bool = True,
    progress: bool = False,
    precision: str = DEFAULT_PRECISION,
    **embed_options,
) -> dict[int, EmbeddingStore]:
    """Embed ``records`` into one store per layer (see :func:`store_path_for_layer`); resumable.

    Proteins already in an existing store of the same PLM, layer, dtype and compute precision are
    skipped (unless ``resume`` is false, which starts afresh). ``dtype`` is the stored precision,
    ``precision`` the compute precision of the forward pass (:func:`embed_sequences`).
    """
    if dtype not in ("float32", "float16"):
        raise InterPLMError(f"store dtype must be float32 or float16, not {dtype}")
    check_precision(precision)
    layer_list = checked_store_request(plm, records, layers)
    writers = {}
    for layer in layer_list:
        meta = {"plm": plm.name, "plm_identity": plm.identity, "plm_source": plm.source, "layer": layer, "dim": plm.embed_dim, "dtype": dtype,
                "compute_precision": precision}  # fmt: skip
        writers[layer] = _StoreWriter(store_path_for_layer(out_dir, layer, layer_list), meta, shard_residues, resume)
    done = set.intersection(*(w.done for w in writers.values()))
    todo = [r for r in records if r.id not in done]
    for pid, arrays in embed_sequences(plm, todo, layer_list, toks_per_batch=toks_per_batch, progress=progress, precision=precision, **embed_options):
        for layer, writer in writers.items():
            if pid not in writer.done:
                writer.add(pid, arrays[layer])
    for writer in writers.values():
        writer.flush(complete=True)
    return {layer: EmbeddingStore(w.path) for layer, w in writers.items()}
