"""Per-residue ESM-2 embeddings, in memory or written to an embedding store that SAE training streams from.

``embed_sequences`` batches proteins by a token budget over length-sorted sequences, lays each
batch's sequences end to end (:class:`Packing`: no padding; attention runs per sequence), runs the
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
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from interplm_plugins.core.inputs.sequences import ProteinRecord
from interplm_plugins.core.plm import bf16_attention
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


def _rotation(attn, positions: torch.Tensor) -> torch.Tensor:
    """``exp(i * position * inv_freq)`` for each row's ``positions``, a complex ``(rows, 1, head_dim/2)`` tensor (table cached)."""
    length = int(positions.max()) + 1 if positions.numel() else 1
    table = getattr(attn, "_interplm_rotation", None)
    if table is None or table.shape[0] < length or table.device != positions.device:
        inv_freq = attn.rot_emb.inv_freq.to(positions.device, torch.float32)
        angles = torch.outer(torch.arange(max(length, 1024), device=positions.device, dtype=torch.float32), inv_freq)
        table = torch.polar(torch.ones_like(angles), angles)[:, None, :]
        attn._interplm_rotation = table
    return table[positions]


@dataclass(frozen=True)
class Packing:
    """Sequences laid end to end as token rows: sequence ``i`` has ``lengths[i]`` rows (BOS and EOS
    included), then ``tail`` rows of padding that belong to no sequence (they keep the number of
    rows on a short ladder, see :func:`padded_length`; nothing attends to them)."""

    lengths: tuple[int, ...]
    tail: int = 0

    @classmethod
    def of_batch(cls, tokens: torch.Tensor, padding_idx: int, rows_for: Callable[[int], int] | None = None) -> tuple[Packing, torch.Tensor]:
        """A padded batch ``(B, T)`` (padding at each sequence's end) as ``(packing, (N,) token rows)``;
        ``rows_for(real rows)``: the number of rows to pad to with ``padding_idx`` (default: none)."""
        lengths = tuple(tokens.ne(padding_idx).sum(1).tolist())
        total = sum(lengths)
        packing = cls(lengths, (rows_for(total) if rows_for else total) - total)
        rows = tokens[:, : max(lengths)][packing.padding_mask(tokens.device).logical_not()]
        return packing, torch.cat([rows, rows.new_full((packing.tail,), padding_idx)])

    @property
    def rows(self) -> int:
        return sum(self.lengths) + self.tail

    def starts(self) -> list[int]:
        """The first row of each sequence."""
        return np.concatenate([[0], np.cumsum(self.lengths[:-1])]).astype(int).tolist() if self.lengths else []

    def runs(self) -> list[tuple[int, int, int]]:
        """``(first row, sequences, length)`` of each run of consecutive sequences of one length:
        attention runs once per run, on a ``(sequences, heads, length, head_dim)`` view, unmasked."""
        out: list[tuple[int, int, int]] = []
        row = 0
        for length in self.lengths:
            if out and out[-1][2] == length:
                out[-1] = (out[-1][0], out[-1][1] + 1, length)
            else:
                out.append((row, 1, length))
            row += length
        return out

    def sequence_of_rows(self, device) -> torch.Tensor:
        """The sequence index of each row (``len(lengths)`` for tail rows)."""
        counts = torch.tensor([*self.lengths, self.tail], device=device)
        return torch.repeat_interleave(torch.arange(len(self.lengths) + 1, device=device), counts)

    def positions(self, device) -> torch.Tensor:
        """Each row's position within its sequence (tail rows count on from the last sequence's end)."""
        sequence = self.sequence_of_rows(device)
        starts = torch.tensor([*self.starts(), sum(self.lengths)], device=device)
        return torch.arange(self.rows, device=device) - starts[sequence]

    def pad(self, x: torch.Tensor, value: float = 0) -> torch.Tensor:
        """Rows ``(N, ...)`` as a batch ``(sequences, longest, ...)``, padded with ``value``."""
        out = x.new_full((len(self.lengths), max(self.lengths), *x.shape[1:]), value)
        out[self.padding_mask(x.device).logical_not()] = x[: sum(self.lengths)]
        return out

    def unpad(self, batch: torch.Tensor) -> torch.Tensor:
        """The inverse of :meth:`pad` (tail rows zero)."""
        real = batch[self.padding_mask(batch.device).logical_not()]
        return torch.cat([real, real.new_zeros((self.tail, *real.shape[1:]))]) if self.tail else real

    def padding_mask(self, device) -> torch.Tensor:
        """``(sequences, longest)``, True past each sequence's end (fair-esm's padding mask)."""
        return torch.arange(max(self.lengths), device=device)[None, :] >= torch.tensor(self.lengths, device=device)[:, None]


def _attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, packing: Packing) -> torch.Tensor:
    """Softmax attention of each sequence's rows over its own rows; ``(N, heads, head_dim)`` in and out.

    One fused ``scaled_dot_product_attention`` per run of equal-length sequences, without a mask:
    no padded keys and no masked kernel (with the padded rows of the linear layers, padding cost
    6-15 % of a forward pass on real proteins, measured). Under bf16 autocast, our AVX512-BF16
    kernel instead where it runs (:mod:`~interplm_plugins.core.plm.bf16_attention`). Tail rows stay zero."""
    out = q.new_zeros(q.shape)
    own_bf16 = v.dtype == torch.bfloat16 and bf16_attention.usable(q)  # v is bf16 only under bf16 autocast
    for first, count, length in packing.runs():
        rows = slice(first, first + count * length)
        if own_bf16:
            bf16_attention.attention(q[rows], k[rows], v[rows], count, out=out[rows])
            continue
        view = lambda t: t[rows].unflatten(0, (count, length)).transpose(1, 2)  # noqa: E731  (count, heads, length, head_dim)
        out[rows] = torch.nn.functional.scaled_dot_product_attention(view(q), view(k), view(v), scale=1.0).transpose(1, 2).flatten(0, 1)
    return out


def _block_forward(layer, x: torch.Tensor, rotation: torch.Tensor, packing: Packing) -> torch.Tensor:
    """fair-esm's ``TransformerLayer.forward`` on packed rows ``x`` ``(N, E)``, with fewer passes.

    The same operations on the same weights (pre-norm, q scaled, rotary q/k, each sequence
    attending over its own tokens, exact-erf GELU feed-forward), computed as: one matrix product
    for q, k and v; the rotary rotation as one complex multiplication (q and k features reordered
    so that each rotated pair is adjacent: dot products are unchanged); PyTorch's fused
    ``scaled_dot_product_attention`` per run of equal-length sequences (:func:`_attention`),
    which never builds the ``(B, heads, T, T)`` weight tensors fair-esm materialises several
    times; a fused GELU. Results agree with fair-esm's to float32 rounding.
    """
    attn = layer.self_attn
    dim = x.shape[-1]
    heads, head_dim = attn.num_heads, attn.head_dim
    weight, bias = _fused_attention_weights(attn)
    qkv = torch.nn.functional.linear(layer.self_attn_layer_norm(x), weight, bias)  # (N, 3E)
    # The rotation is complex float32 (there is no complex bfloat16): under bf16 autocast q and k
    # are rotated in float32 (``.float()`` is a no-op otherwise) and attention casts them back.
    q = torch.view_as_real(torch.view_as_complex(qkv[:, :dim].float().unflatten(-1, (heads, head_dim // 2, 2))) * rotation).flatten(-2)
    k = torch.view_as_real(torch.view_as_complex(qkv[:, dim : 2 * dim].float().unflatten(-1, (heads, head_dim // 2, 2))) * rotation).flatten(-2)
    v = qkv[:, 2 * dim :].unflatten(-1, (heads, head_dim))
    x = x + attn.out_proj(_attention(q, k, v, packing).flatten(1))
    return x + layer.fc2(torch.nn.functional.gelu(layer.fc1(layer.final_layer_norm(x))))


def forward_packed(plm: PLM, tokens: torch.Tensor, packing: Packing, layers: Sequence[int]) -> dict[int, torch.Tensor]:
    """fair-esm's ``ESM2.forward`` representations for ``layers`` of sequences packed end to end.

    ``tokens``: ``(N,)``, each sequence's tokens (BOS and EOS included) one after another as
    ``packing`` says. Returns ``{layer: (N, E)}``, row for row what ``model(tokens,
    repr_layers=layers)["representations"]`` gives each sequence's tokens (the last layer after
    ``emb_layer_norm_after``), without padding, deeper blocks or logits, with fused attention
    (:func:`_block_forward`; equal to float32 rounding). Tail rows are padding: ignore them.
    """
    model = plm.model
    wanted = sorted({plm.check_layer(layer) for layer in layers})
    deepest = wanted[-1]
    x = model.embed_scale * model.embed_tokens(tokens)
    if model.token_dropout:  # the same rescaling ESM2.forward applies (it depends on each sequence's <mask> count)
        masked = tokens == model.mask_idx
        x = x.masked_fill(masked.unsqueeze(-1), 0.0)
        sequence = packing.sequence_of_rows(tokens.device)
        lengths = torch.tensor([*packing.lengths, max(packing.tail, 1)], device=tokens.device, dtype=x.dtype)
        mask_ratio_observed = torch.zeros(len(lengths), device=tokens.device, dtype=x.dtype).index_add_(0, sequence, masked.to(x.dtype)) / lengths
        x = x * (1 - 0.15 * 0.8) / (1 - mask_ratio_observed)[sequence, None]
    out: dict[int, torch.Tensor] = {}
    if 0 in wanted:
        out[0] = x
    positions = packing.positions(tokens.device)
    for index, block in enumerate(model.layers[:deepest]):
        if _fast_path_ok(block):
            x = _block_forward(block, x, _rotation(block.self_attn, positions), packing)
        else:  # fair-esm's own block, time-first on the padded batch
            padded = packing.pad(x).transpose(0, 1)
            padding_mask = packing.padding_mask(x.device)
            padded = block(padded, self_attn_padding_mask=padding_mask if bool(padding_mask.any()) else None, need_head_weights=False)[0]
            x = packing.unpad(padded.transpose(0, 1))
        if index + 1 in wanted and index + 1 != model.num_layers:
            out[index + 1] = x
    if deepest == model.num_layers:
        out[deepest] = model.emb_layer_norm_after(x)
    return out


def forward_layers(plm: PLM, tokens: torch.Tensor, layers: Sequence[int]) -> dict[int, torch.Tensor]:
    """fair-esm's ``ESM2.forward`` representations for ``layers`` of a padded batch ``tokens`` ``(B, T)``.

    Returns ``{layer: (B, T, E)}`` as ``model(tokens, repr_layers=layers)["representations"]``
    would at every real token (:func:`forward_packed` on the batch's sequences); padding
    positions are zero.
    """
    packing, rows = Packing.of_batch(tokens, plm.model.padding_idx)
    real = packing.padding_mask(tokens.device).logical_not()
    reps = forward_packed(plm, rows, packing, layers)
    out = {}
    for layer, rows in reps.items():
        full = rows.new_zeros((*tokens.shape, rows.shape[-1]))
        full[:, : max(packing.lengths)][real] = rows
        out[layer] = full
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

    A batch's rows are padded to it. Every distinct batch shape makes oneDNN (PyTorch's CPU
    kernels) build and cache a primitive, and its cache keeps up to 1,024 of them: batches of every
    size grew the resident memory of ``interplm embed`` by ~1 KB per residue embedded until that
    cache was full (1.7 GB after 3,000 proteins with the demo model). With the ladder there are at
    most a few hundred sizes, and the tail adds at most 63 rows (1.5 % of a full 4,096-token batch).
    """
    if tokens <= 128:
        return tokens
    step = 16 if tokens <= 256 else 32 if tokens <= 512 else 64
    return -(-tokens // step) * step


def _token_batches(pieces: list[_Piece], toks_per_batch: int) -> Iterator[list[_Piece]]:
    """Group length-sorted pieces so that their tokens (BOS and EOS included) add up to at most ``toks_per_batch`` (one piece at least)."""
    batch: list[_Piece] = []
    tokens = 0
    for piece in pieces:
        size = piece.end - piece.start + 2
        if batch and tokens + size > toks_per_batch:
            yield batch
            batch, tokens = [], 0
        batch.append(piece)
        tokens += size
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
            packing, tokens = Packing.of_batch(converter(data)[2], plm.alphabet.padding_idx, padded_length)
            with compute_precision(precision, device):  # (only around the forward pass: never across the yield)
                reps = forward_packed(plm, tokens.to(device), packing, layer_list)
            for first, piece in zip(packing.starts(), batch):
                n = piece.end - piece.start
                got = {layer: reps[layer][first + 1 : first + 1 + n].float().cpu().numpy() for layer in layer_list}
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
