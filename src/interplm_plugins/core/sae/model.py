"""Sparse autoencoders over PLM residue embeddings: ReLU (InterPLM), TopK, BatchTopK, JumpReLU, Matryoshka BatchTopK.

Layout (dictionary_learning's ``AutoEncoder``, as InterPLM publishes it): ``bias`` [d_in] is
subtracted before encoding and added after decoding; ``encoder`` is ``Linear(d_in, d_hidden)``
with a bias, ``decoder`` is ``Linear(d_hidden, d_in, bias=False)``, so ``decoder.weight[:, i]``
is feature ``i``'s direction.

Normalisation (:mod:`interplm_plugins.core.sae.normalize`) is folded into the weights: encoder rows
and biases are divided by a per-feature scale and decoder columns multiplied by it, so
activations are divided by the scale and reconstructions are unchanged. The scale is also kept in
the ``activation_scale`` buffer, because TopK / BatchTopK must *select* features by their
unscaled pre-activations (dividing by a per-feature scale would change which ones win), and
BatchTopK / Matryoshka / JumpReLU compare them with thresholds in unscaled units.

Inference never depends on the batch: BatchTopK and Matryoshka select features by batch top-k
only while training; in eval mode they keep activations above the threshold estimated during
training, and a file without such an estimate is refused at load. ReLU, TopK and BatchTopK are
the few lines of :meth:`SparseAutoencoder.sparsify`; JumpReLU
(:mod:`~interplm_plugins.core.sae.jumprelu`) and Matryoshka
(:mod:`~interplm_plugins.core.sae.matryoshka`) keep their specifics in their own modules, and the
kind names are :mod:`~interplm_plugins.core.sae.kinds`.

Files (saving, loading this toolkit's and InterPLM's formats, :func:`~interplm_plugins.core.sae.files.sae_hash`)
are :mod:`~interplm_plugins.core.sae.files`.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from interplm_plugins.core.sae.jumprelu import BANDWIDTH, INITIAL_THRESHOLD, jumprelu_inference
from interplm_plugins.core.sae.kinds import BATCH_KINDS, K_KINDS, KINDS
from interplm_plugins.core.sae.matryoshka import validate_prefixes
from interplm_plugins.errors import InterPLMError

CONFIG_FORMAT = "interplm-plugins-sae/1"


@dataclass
class SAEConfig:
    """Shape, kind and provenance of a sparse autoencoder (stored as the JSON beside its weights).

    ``k`` is the number of active features per residue for ``topk`` and the mean number per
    residue for ``batchtopk`` / ``matryoshka`` (unused by ``relu`` and ``jumprelu``).
    ``l1_coefficient`` is the sparsity weight: of the L1 term for ``relu``, of the L0 term for
    ``jumprelu``. ``prefixes`` are Matryoshka's nested prefix ends (the full width is implied).
    ``plm`` / ``plm_identity`` / ``plm_layer`` name the embeddings it reads.
    """

    d_in: int
    d_hidden: int
    kind: str = "relu"
    k: int | None = None
    l1_coefficient: float = 0.0
    plm: str | None = None
    plm_identity: str | None = None
    plm_layer: int | None = None
    normalized: bool = False
    prefixes: list[int] | None = None

    def __post_init__(self) -> None:
        self.validate()

    def validate(self, file: str | os.PathLike | None = None) -> None:
        """Raise :class:`InterPLMError` unless the fields describe a buildable SAE."""
        for name in ("d_in", "d_hidden"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise InterPLMError(f"SAE {name} must be a positive integer, not {value!r}", file=file)
        if self.kind not in KINDS:
            raise InterPLMError(f"unknown SAE kind {self.kind!r} (expected one of {', '.join(KINDS)})", file=file)
        if self.kind in K_KINDS:
            if not isinstance(self.k, int) or isinstance(self.k, bool) or not 1 <= self.k <= self.d_hidden:
                raise InterPLMError(f"a {self.kind} SAE needs an integer k in 1..{self.d_hidden}, not {self.k!r}", file=file)
        l1 = self.l1_coefficient
        if isinstance(l1, bool) or not isinstance(l1, (int, float)) or not np.isfinite(l1) or l1 < 0:
            raise InterPLMError(f"l1_coefficient must be a finite number >= 0, not {l1!r}", file=file)
        if self.kind == "matryoshka":
            validate_prefixes(self.prefixes, self.d_hidden, file=file)
        elif self.prefixes is not None:
            raise InterPLMError(f"only a matryoshka SAE has prefixes, not a {self.kind} one", file=file)
        if not isinstance(self.normalized, bool):
            raise InterPLMError(f"normalized must be true or false, not {self.normalized!r}", file=file)
        layer = self.plm_layer
        if layer is not None and (isinstance(layer, bool) or not isinstance(layer, int) or layer < 0):
            raise InterPLMError(f"plm_layer must be a layer number >= 0 or null, not {layer!r}", file=file)
        for name in ("plm", "plm_identity"):
            if getattr(self, name) is not None and not isinstance(getattr(self, name), str):
                raise InterPLMError(f"{name} must be a string or null, not {getattr(self, name)!r}", file=file)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        if data["prefixes"] is None:  # files of the kinds without prefixes stay as they were
            del data["prefixes"]
        return {"format": CONFIG_FORMAT, **data}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_dict(cls, data: Any, file: str | os.PathLike | None = None) -> "SAEConfig":
        """Build from :meth:`to_dict`'s output; unknown fields or a foreign format are errors."""
        if not isinstance(data, dict):
            raise InterPLMError(f"SAE config must be a JSON object, not {type(data).__name__}", file=file)
        data = dict(data)
        fmt = data.pop("format", None)
        if fmt != CONFIG_FORMAT:
            raise InterPLMError(f"not an SAE config of this toolkit (format {fmt!r}, expected {CONFIG_FORMAT!r})", file=file)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        missing = sorted(n for n in ("d_in", "d_hidden") if n not in data)
        if unknown or missing:
            raise InterPLMError(f"SAE config has unknown fields {unknown} / lacks {missing}", file=file)
        try:
            return cls(**data)
        except InterPLMError as err:
            raise InterPLMError(err.reason, file=file) from None

    @classmethod
    def from_json(cls, text: str, file: str | os.PathLike | None = None) -> "SAEConfig":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InterPLMError(f"SAE config is not valid JSON ({exc.msg} at line {exc.lineno})", file=file) from None
        return cls.from_dict(data, file=file)


class SparseAutoencoder(nn.Module):
    """``f = encode(x)``, ``x_hat = decode(f) = decoder(f) + bias``; see the module docstring.

    BatchTopK / Matryoshka keep the ``k * N`` largest activations of a batch of ``N`` residues
    while training (or when ``batch_topk=True``); in eval mode they keep activations above
    ``threshold``, estimated during training (encoding without one is an error, never a batch
    top-k). JumpReLU keeps each feature above its own learned ``threshold``.
    """

    def __init__(self, config: SAEConfig, generator: torch.Generator | None = None):
        super().__init__()
        config.validate()
        self.config = config
        d_in, d_hidden = config.d_in, config.d_hidden
        self.bias = nn.Parameter(torch.zeros(d_in))
        self.encoder = nn.Linear(d_in, d_hidden)
        self.decoder = nn.Linear(d_hidden, d_in, bias=False)
        self.register_buffer("activation_scale", torch.ones(d_hidden))
        if config.kind in BATCH_KINDS:
            self.register_buffer("threshold", torch.tensor(-1.0))
        elif config.kind == "jumprelu":
            self.threshold = nn.Parameter(torch.full((d_hidden,), INITIAL_THRESHOLD))
            self.register_buffer("bandwidth", torch.tensor(BANDWIDTH))
        self.reset_parameters(generator)

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Random unit-norm decoder columns (norm 0.1 for ReLU, Anthropic's April 2024 update),
        encoder = decoder transposed, zero biases."""
        w = torch.randn(self.d_in, self.d_hidden, generator=generator)
        w = w / w.norm(dim=0, keepdim=True) * (0.1 if self.kind == "relu" else 1.0)
        self.decoder.weight.copy_(w)
        self.encoder.weight.copy_(w.T)
        self.encoder.bias.zero_()
        self.bias.zero_()

    @property
    def d_in(self) -> int:
        return self.config.d_in

    @property
    def d_hidden(self) -> int:
        return self.config.d_hidden

    @property
    def kind(self) -> str:
        return self.config.kind

    def pre_activations(self, x: torch.Tensor) -> torch.Tensor:
        """Encoder output before any sparsifying non-linearity, in normalised units."""
        return self.encoder(x - self.bias)

    def encode(self, x: torch.Tensor, batch_topk: bool | None = None) -> torch.Tensor:
        """Feature activations ``[..., d_hidden]`` (>= 0) of inputs ``[..., d_in]``.

        ``batch_topk`` (BatchTopK only) forces batch selection (True) or thresholding (False);
        by default it follows ``self.training``.
        """
        return self.sparsify(self.pre_activations(x), batch_topk)

    def sparsify(self, pre: torch.Tensor, batch_topk: bool | None = None) -> torch.Tensor:
        """Activations from pre-activations (ReLU, top-k, batch top-k or threshold); see :meth:`encode`."""
        if self.kind == "relu":
            return torch.relu(pre)
        # Rank by the unscaled pre-activations; see the module docstring.
        ranking = pre * self.activation_scale
        if self.kind == "topk":
            top = ranking.topk(self.config.k, dim=-1, sorted=False)
            return torch.zeros_like(pre).scatter_(-1, top.indices, torch.relu(pre.gather(-1, top.indices)))
        if self.kind == "jumprelu":
            return jumprelu_inference(pre, ranking, self.threshold)
        use_batch = self.training if batch_topk is None else batch_topk
        if not use_batch and float(self.threshold) < 0:
            raise InterPLMError(
                f"this {self.kind} SAE has no inference threshold (it is estimated in training): without one a residue's "
                "activations would depend on the rest of the batch"
            )
        if use_batch:
            return torch.where(ranking >= self.batch_cut(ranking), torch.relu(pre), torch.zeros_like(pre))
        return torch.relu(pre) * (ranking > self.threshold)

    def ranking_of(self, pre: torch.Tensor) -> torch.Tensor:
        """The values :meth:`sparsify` ranks ``pre`` by (``pre * activation_scale``), or ``pre``
        itself while the scale is all ones, as in training (saving a product over the batch)."""
        return pre if bool((self.activation_scale == 1).all()) else pre * self.activation_scale

    def batch_cut(self, ranking: torch.Tensor) -> torch.Tensor:
        """BatchTopK's training cut-off: the ``k * residues``-th largest of ``ranking`` (a batch's
        ranked pre-activations); the entries at or above it are kept (ties with it too)."""
        return batch_cutoff(ranking, min(self.config.k * (ranking.numel() // self.d_hidden), ranking.numel()))

    def decode(self, f: torch.Tensor) -> torch.Tensor:
        """Reconstruction ``[..., d_in]`` of activations ``[..., d_hidden]``."""
        return self.decoder(f) + self.bias

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.encode(x)
        return self.decode(f), f


def batch_cutoff(ranking: torch.Tensor, n_keep: int) -> torch.Tensor:
    """The ``n_keep``-th largest value of ``ranking`` ``[..., d_hidden]``: BatchTopK's cut-off.

    Exact without a top-k over every entry (the slow part of a BatchTopK step: about 250 ms at
    2,048 x 10,240 on 2 cores): the cut-off is first found among each row's ``4 n_keep / rows``
    largest values; a row whose smallest candidate is not below it may hold more entries above
    it, so that whole row joins the candidates and the cut-off is found again (it can only rise,
    so the other rows stay settled and once suffices).
    """
    rows = ranking.reshape(-1, ranking.shape[-1])
    per_row = 4 * -(-n_keep // len(rows))
    if 2 * per_row >= rows.shape[1]:
        return rows.reshape(-1).topk(n_keep, sorted=False).values.min()
    candidates = rows.topk(per_row, dim=-1, sorted=False).values
    cut = candidates.reshape(-1).topk(n_keep, sorted=False).values.min()
    unsettled = candidates.min(dim=-1).values >= cut
    if bool(unsettled.any()):
        pool = torch.cat([candidates[~unsettled].reshape(-1), rows[unsettled].reshape(-1)])
        cut = pool.topk(n_keep, sorted=False).values.min()
    return cut


# ------------------------------------------------------------------------------ fit checks


def check_fits(sae: SparseAutoencoder, plm, layer: int) -> None:
    """Raise unless ``sae`` reads layer ``layer`` of ``plm`` (a :class:`~interplm_plugins.core.plm.model.PLM`)."""
    layer = plm.check_layer(layer)
    if sae.d_in != plm.embed_dim:
        raise InterPLMError(f"SAE of width {sae.d_in} does not fit {plm.name} layer {layer} (dim {plm.embed_dim})", file=plm.source)
    if sae.config.plm_layer is not None and sae.config.plm_layer != layer:
        raise InterPLMError(f"SAE was trained on layer {sae.config.plm_layer}, not layer {layer}", file=plm.source)


def check_fits_store(sae: SparseAutoencoder, store) -> None:
    """Raise unless ``sae`` reads the embeddings of ``store`` (width, and layer when both record one)."""
    source = getattr(store, "path", None)
    meta = getattr(store, "metadata", {}) or {}
    if sae.d_in != store.dim:
        raise InterPLMError(
            f"SAE of width {sae.d_in} does not fit the store's {meta.get('plm', 'PLM')} layer {meta.get('layer', '?')} (dim {store.dim})",
            file=source,
        )
    if sae.config.plm_layer is not None and meta.get("layer") is not None and int(meta["layer"]) != sae.config.plm_layer:
        raise InterPLMError(f"SAE was trained on layer {sae.config.plm_layer}, the store holds layer {meta['layer']}", file=source)


def copy_sae(sae: SparseAutoencoder) -> SparseAutoencoder:
    """An independent copy (weights and config)."""
    return copy.deepcopy(sae)
