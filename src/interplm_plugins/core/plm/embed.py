"""Per-residue ESM-2 embeddings, in memory or written to an embedding store that SAE training streams from.

``embed_sequences`` batches proteins by a token budget over length-sorted sequences, runs the
forward pass only as deep as the deepest requested layer, drops BOS/EOS, and embeds proteins
longer than the model's 1,022-residue window as overlapping windows: each residue takes its
vector from the window in which it lies furthest from an edge, so every residue has context on
both sides wherever the protein allows. Non-standard residues (X, U, O, B, Z) are tokenised by
ESM's own alphabet, which has a token for each.

``embed_to_store`` writes them into an :class:`~interplm_plugins.core.plm.store.EmbeddingStore`
(the folder layout and its atomic index are described there), one store per layer; an
interrupted run resumes with the proteins it had not finished.

``precision="bf16"`` runs the forward pass under bfloat16 autocast (matrix products in bf16, the
residual stream, layer norms and softmax in float32; :mod:`~interplm_plugins.core.plm.precision`);
outputs are float32 either way, and the store's ``dtype`` (float32 or float16) is what is kept on
disk. The store records its ``compute_precision``; a store is only resumed in the same one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from interplm_plugins.core.inputs.sequences import ProteinRecord
from interplm_plugins.core.plm.model import PLM
from interplm_plugins.core.plm.precision import DEFAULT_PRECISION, check_precision, compute_precision
from interplm_plugins.core.plm.store import EmbeddingStore, _StoreWriter
from interplm_plugins.errors import InterPLMError

#: Residues ESM-2 embeds at once (its 1,024 positions less BOS and EOS).
MAX_WINDOW = 1022


# ------------------------------------------------------------------------------ forward pass


def _fast_path_ok(layer) -> bool:
    """True for fair-esm ESM-2 blocks (rotary self-attention, no extra key/value bias) without
    hooks, which :func:`_block_forward` computes; anything else (a hooked block, as
    :mod:`~interplm_plugins.core.plm.intervene` makes) goes through the block's own ``forward``."""
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


def padded_length(tokens: int) -> int:
    """``tokens`` past 128 rounded up to the next step of a ladder (16 up to 256, 32 up to 512, then 64).

    Every distinct batch shape makes oneDNN (PyTorch's CPU kernels) build and cache a primitive, and
    its cache keeps up to 1,024 of them: length-sorted batches of every length from 3 to 1,024
    tokens grew the resident memory of ``interplm embed`` by ~1 KB per residue embedded until that
    cache was full (1.7 GB after 3,000 proteins with the demo model). With the ladder there are at
    most 150 lengths, and the padding adds at most 1/8 more tokens (measured: as fast as exact
    lengths at 400 residues, faster at 200). Shorter batches keep their length: padding them
    forces the masked attention path, which cost 20 % at 50 residues, and their primitives are small.
    """
    if tokens <= 128:
        return tokens
    step = 16 if tokens <= 256 else 32 if tokens <= 512 else 64
    return -(-tokens // step) * step


def _token_batches(pieces: list[_Piece], toks_per_batch: int) -> Iterator[list[_Piece]]:
    """Group length-sorted pieces so that ``padded_length(longest + 2) * count <= toks_per_batch`` (one piece at least)."""
    batch: list[_Piece] = []
    longest = 0
    for piece in pieces:
        size = padded_length(piece.end - piece.start + 2)
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
            tokens = torch.nn.functional.pad(tokens, (0, padded_length(tokens.shape[1]) - tokens.shape[1]), value=plm.alphabet.padding_idx)
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


# ---------------------------------------------------------------------------- into a store


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
