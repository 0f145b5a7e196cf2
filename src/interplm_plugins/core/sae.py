"""Sparse autoencoders over PLM residue embeddings: ReLU (InterPLM), TopK, BatchTopK, JumpReLU, Matryoshka BatchTopK.

Layout (dictionary_learning's ``AutoEncoder``, as InterPLM publishes it): ``bias`` [d_in] is
subtracted before encoding and added after decoding; ``encoder`` is ``Linear(d_in, d_hidden)``
with a bias, ``decoder`` is ``Linear(d_hidden, d_in, bias=False)``, so ``decoder.weight[:, i]``
is feature ``i``'s direction.

Normalisation (:mod:`interplm_plugins.core.normalize`) is folded into the weights: encoder rows
and biases are divided by a per-feature scale and decoder columns multiplied by it, so
activations are divided by the scale and reconstructions are unchanged. The scale is also kept in
the ``activation_scale`` buffer, because TopK / BatchTopK must *select* features by their
unscaled pre-activations (dividing by a per-feature scale would change which ones win), and
BatchTopK / Matryoshka / JumpReLU compare them with thresholds in unscaled units.

Inference never depends on the batch: BatchTopK and Matryoshka select features by batch top-k
only while training; in eval mode they keep activations above the threshold estimated during
training, and a file without such an estimate is refused at load. JumpReLU
(:mod:`~interplm_plugins.core.sae_jumprelu`) and Matryoshka
(:mod:`~interplm_plugins.core.sae_matryoshka`) keep their specifics in their own modules.

Files: ``save_sae(sae, "x.safetensors")`` writes the weights and ``x.json`` (the
:class:`SAEConfig`: kind, PLM name, layer, normalisation). ``load_sae`` reads those, or an
InterPLM / dictionary_learning / SAELens ``ae.pt`` state dict (``torch.load(weights_only=True)``;
see :func:`load_sae` for the layouts and how the kind is recognised).
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from interplm_plugins.core.sae_jumprelu import BANDWIDTH, INITIAL_THRESHOLD, jumprelu_inference
from interplm_plugins.core.sae_kinds import BATCH_KINDS, K_KINDS, KINDS
from interplm_plugins.core.sae_matryoshka import validate_prefixes
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
            flat_rank = ranking.reshape(-1)
            n_keep = min(self.config.k * (flat_rank.numel() // self.d_hidden), flat_rank.numel())
            top = flat_rank.topk(n_keep, sorted=False)
            kept = torch.zeros_like(flat_rank).scatter_(0, top.indices, torch.relu(pre.reshape(-1)[top.indices]))
            return kept.reshape(pre.shape)
        return torch.relu(pre) * (ranking > self.threshold)

    def decode(self, f: torch.Tensor) -> torch.Tensor:
        """Reconstruction ``[..., d_in]`` of activations ``[..., d_hidden]``."""
        return self.decoder(f) + self.bias

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.encode(x)
        return self.decode(f), f


# ----------------------------------------------------------------------------------- files


def config_path_for(path: str | os.PathLike) -> Path:
    """The JSON config beside an SAE weights file: ``x.safetensors`` -> ``x.json``."""
    return Path(path).with_suffix(".json")


def save_sae(sae: SparseAutoencoder, path: str | os.PathLike) -> Path:
    """Write ``path`` (safetensors weights, config also in its metadata) and its ``.json`` config, atomically."""
    from safetensors.torch import save_file

    from interplm_plugins.core.atomic import atomic_path, write_text_atomic

    path = Path(path)
    if path.suffix == ".json":
        raise InterPLMError("the SAE weights path must not end in .json (that name is used for its config)", file=path)
    config_json = sae.config.to_json()
    tensors = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in sae.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"interplm_sae_config": config_json})
    write_text_atomic(config_path_for(path), config_json)
    return path


def _check_state(state: dict[str, torch.Tensor], config: SAEConfig, file: Path) -> dict[str, torch.Tensor]:
    """Compare a state dict with the one ``config`` builds; return it as float32."""
    expected = SparseAutoencoder(config).state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise InterPLMError(f"SAE weights do not match a {config.kind} SAE: missing {missing}, unexpected {unexpected}", file=file)
    out = {}
    for key, ref in expected.items():
        value = state[key]
        if not isinstance(value, torch.Tensor) or not value.is_floating_point():
            raise InterPLMError(f"SAE weight {key} is not a floating-point tensor", file=file)
        if tuple(value.shape) != tuple(ref.shape):
            raise InterPLMError(
                f"SAE weight {key} has shape {tuple(value.shape)}, expected {tuple(ref.shape)} "
                f"for d_in={config.d_in}, d_hidden={config.d_hidden}",
                file=file,
            )
        if not torch.isfinite(value).all():
            raise InterPLMError(f"SAE weight {key} contains NaN or infinite values", file=file)
        out[key] = value.to(torch.float32)
    return out


def _build(config: SAEConfig, state: dict[str, torch.Tensor], file: Path) -> SparseAutoencoder:
    sae = SparseAutoencoder(config)
    sae.load_state_dict(_check_state(state, config, file))
    if config.kind in BATCH_KINDS and float(sae.threshold) < 0:
        raise InterPLMError(
            f"this {config.kind} SAE has no inference threshold (threshold < 0: none was estimated in training), so its "
            "activations would depend on the batch; train it with this toolkit (which always estimates one), or, for an ae.pt, "
            "pass --sae-kind topk to encode by per-residue top-k",
            file=file,
        )
    return sae.eval()


def _load_safetensors(path: Path) -> SparseAutoencoder:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            state = {key: handle.get_tensor(key) for key in handle.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise InterPLMError(f"not a readable safetensors file ({exc})", file=path) from None
    config_file = config_path_for(path)
    if config_file.is_file():
        try:
            text = config_file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise InterPLMError(f"cannot read SAE config ({exc})", file=config_file) from None
        config = SAEConfig.from_json(text, file=config_file)
    elif "interplm_sae_config" in metadata:
        config = SAEConfig.from_json(metadata["interplm_sae_config"], file=path)
    else:
        raise InterPLMError(f"SAE config {config_file.name} is missing beside the weights", file=path)
    return _build(config, state, path)


#: Class and trainer names in the config beside an ``ae.pt`` (InterPLM, dictionary_learning, SAELens) -> kind,
#: matched in this order on the lower-cased name.
_CLASS_NAME_KINDS = (("matryoshka", "matryoshka"), ("batchtopk", "batchtopk"), ("topk", "topk"), ("jumprelu", "jumprelu"))
_CONFIG_NAMES = ("config.json", "cfg.json", "config.yaml", "config.yml")
_CLASS_KEYS = ("dict_class", "trainer_class", "trainer_name", "architecture", "sae_type", "class_name")


def _config_beside(path: Path) -> dict[str, Any]:
    """The training config saved beside an ``ae.pt`` (dictionary_learning's ``config.json``, SAELens'
    ``cfg.json``, a YAML one), or ``{}``; an unreadable one is an error."""
    for name in _CONFIG_NAMES:
        candidate = path.with_name(name)
        if not candidate.is_file():
            continue
        try:
            text = candidate.read_text(encoding="utf-8")
            if candidate.suffix == ".json":
                data = json.loads(text)
            else:
                import yaml

                data = yaml.safe_load(text)
        except Exception as exc:  # JSON / YAML / decoding errors: one line naming the file
            raise InterPLMError(f"cannot read the SAE's training config ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})", file=candidate) from None
        return data if isinstance(data, dict) else {}
    return {}


def _find_values(data: Any, keys: tuple[str, ...]) -> list[Any]:
    """Values of ``keys`` anywhere in nested dicts (``{"trainer": {"dict_class": ...}}``), outermost first."""
    found, queue = [], [data]
    while queue:
        item = queue.pop(0)
        if isinstance(item, dict):
            found += [item[k] for k in keys if k in item]
            queue += [v for v in item.values() if isinstance(v, dict)]
    return found


def kind_from_config(config: dict[str, Any]) -> str | None:
    """The SAE kind a training config names by its class or trainer (``BatchTopKSAE`` -> ``batchtopk``), or None."""
    for value in _find_values(config, _CLASS_KEYS):
        name = str(value).lower().replace("_", "").replace("-", "")
        for marker, kind in _CLASS_NAME_KINDS:
            if marker in name:
                return kind
        if "relu" in name or "autoencoder" in name:
            return "relu"
    return None


def _to_interplm_layout(state: dict[str, torch.Tensor], config: dict[str, Any], file: Path) -> None:
    """Rename, in place, other layouts to this toolkit's keys (``bias``, ``encoder.*``, ``decoder.weight``).

    - ``W_enc [d_in, F]``, ``b_enc``, ``W_dec [F, d_in]``, ``b_dec`` (dictionary_learning's JumpReLU and
      Matryoshka, SAELens); SAELens' ``log_threshold`` becomes ``threshold``;
    - InterPLM's JumpReLU ``decoder.bias`` (the output bias);
    - ``b_dec`` (TopK / BatchTopK) -> ``bias``.
    Where the original does not subtract the output bias before encoding (JumpReLU's
    ``apply_b_dec_to_input = False``, the default of InterPLM and dictionary_learning), the encoder bias
    absorbs it: ``W (x - b) + (b_enc + W b) = W x + b_enc``. Matryoshka (``group_sizes``) subtracts it.
    """
    if "W_enc" in state:
        for old, new, transpose in (("W_enc", "encoder.weight", True), ("b_enc", "encoder.bias", False), ("W_dec", "decoder.weight", True)):
            if old not in state or state[old].ndim != (2 if transpose else 1):
                raise InterPLMError(f"SAE file has W_enc but no {'2' if transpose else '1'}-D {old}", file=file)
            state[new] = state.pop(old).T.contiguous() if transpose else state.pop(old)
        if "log_threshold" in state:
            state["threshold"] = state.pop("log_threshold").exp()
    elif "decoder.bias" in state:
        state["b_dec"] = state.pop("decoder.bias")
    if "b_dec" in state:
        state["bias"] = state.pop("b_dec")
    if "bias" not in state or "encoder.weight" not in state or state["encoder.weight"].ndim != 2:
        raise InterPLMError("not an InterPLM SAE: no 2-D 'encoder.weight' and 1-D bias", file=file)
    applies_bias = _find_values(config, ("apply_b_dec_to_input",))
    subtracts_bias = bool(applies_bias[0]) if applies_bias else ("group_sizes" in state or "threshold" not in state or state["threshold"].ndim == 0)
    if not subtracts_bias and tuple(state["bias"].shape) == (state["encoder.weight"].shape[1],) and "encoder.bias" in state:
        state["encoder.bias"] = state["encoder.bias"] + state["encoder.weight"] @ state["bias"]


def _kind_from_keys(state: dict[str, torch.Tensor], d_hidden: int) -> str:
    """The kind the keys imply: per-feature thresholds -> jumprelu, group sizes -> matryoshka,
    ``k`` -> topk (a BatchTopK file has the same keys as a TopK one: its config tells them apart), else relu."""
    threshold = state.get("threshold")
    if threshold is not None and tuple(threshold.shape) == (d_hidden,):
        return "jumprelu"
    if "group_sizes" in state:
        return "matryoshka"
    return "topk" if "k" in state else "relu"


def _load_interplm_pt(path: Path, plm_name: str | None, layer: int | None, kind: str | None) -> SparseAutoencoder:
    """InterPLM's / dictionary_learning's / SAELens' ``ae.pt`` (see :func:`load_sae`)."""
    from interplm_plugins.core.plm.weights import torch_load_tensor_dict

    state = torch_load_tensor_dict(path, "PyTorch SAE", "an SAE state dict like InterPLM's ae.pt")
    if bool(state.pop("normalize_to_sqrt_d", torch.tensor(False)).item()):
        raise InterPLMError("SAE uses sqrt(d) input normalisation (normalize_to_sqrt_d), which is not supported", file=path)
    training_config = _config_beside(path)
    _to_interplm_layout(state, training_config, path)
    d_hidden, d_in = (int(n) for n in state["encoder.weight"].shape)
    kind = kind or kind_from_config(training_config) or _kind_from_keys(state, d_hidden)
    k_tensor = state.pop("k", None)
    k = int(k_tensor.item()) if k_tensor is not None and kind in K_KINDS else None
    if kind in K_KINDS and k is None:
        found = _find_values(training_config, ("k",))
        k = int(found[0]) if found and isinstance(found[0], (int, float)) else None
    group_sizes = state.pop("group_sizes", None)
    prefixes = None
    if kind == "matryoshka":
        if group_sizes is None:
            raise InterPLMError("a matryoshka SAE file needs its group_sizes", file=path)
        prefixes = [int(v) for v in torch.cumsum(group_sizes.flatten(), 0)[:-1].tolist()]
    if kind not in BATCH_KINDS + ("jumprelu",):
        state.pop("threshold", None)  # a TopK file's threshold is unused: it encodes by per-residue top-k
    if kind == "jumprelu":
        state.setdefault("bandwidth", torch.tensor(0.0))  # a training setting; files do not carry it
    # InterPLM files have no activation_scale: their scale is activation_rescale_factor, folded in below
    if "activation_scale" not in state and d_hidden > 0:
        state["activation_scale"] = torch.ones(d_hidden)
    rescale = state.pop("activation_rescale_factor", None)
    if plm_name is not None:
        from interplm_plugins.core.plm.model import ESM2_MODELS

        if plm_name in ESM2_MODELS and ESM2_MODELS[plm_name][1] != d_in:
            raise InterPLMError(f"SAE of width {d_in} does not fit {plm_name} (dim {ESM2_MODELS[plm_name][1]})", file=path)
    try:
        config = SAEConfig(
            d_in=d_in, d_hidden=d_hidden, kind=kind, k=k, plm=plm_name, plm_layer=layer, prefixes=prefixes,
            # InterPLM names its normalised files ae_normalized.pt
            normalized="normalized" in path.stem,
        )  # fmt: skip
    except InterPLMError as err:
        raise InterPLMError(err.reason, file=path) from None
    sae = _build(config, state, path)
    if rescale is not None:
        if tuple(rescale.shape) != (d_hidden,) or not torch.isfinite(rescale).all() or (rescale <= 0).any():
            raise InterPLMError(f"activation_rescale_factor must be {d_hidden} positive finite numbers", file=path)
        if not torch.all(rescale == 1):
            from interplm_plugins.core.normalize import normalize_sae

            sae = normalize_sae(sae, rescale.numpy())
    return sae


def load_sae(
    path: str | os.PathLike, plm_name: str | None = None, layer: int | None = None, kind: str | None = None
) -> SparseAutoencoder:
    """Load an SAE in eval mode: ``.safetensors`` + ``.json`` (saved by :func:`save_sae`), or an ``ae.pt``
    state dict of InterPLM, dictionary_learning or SAELens (``torch.load(weights_only=True)``).

    An ``ae.pt`` carries no metadata: ``plm_name`` and ``layer`` say what it reads, and ``kind`` how it
    encodes; by default the kind comes from the class or trainer named in a ``config.json`` /
    ``cfg.json`` / ``config.yaml`` beside it, else from its keys (per-feature ``threshold``: jumprelu,
    ``group_sizes``: matryoshka, ``k``: topk, none of these: relu). InterPLM's TopK and BatchTopK files
    have the same keys, so a BatchTopK ``ae.pt`` without its config needs ``kind="batchtopk"``.
    ``activation_rescale_factor`` (InterPLM's normalisation) is folded into the weights.
    """
    path = Path(path)
    if not path.is_file():
        raise InterPLMError("no such SAE file", file=path)
    if kind is not None and kind not in KINDS:
        raise InterPLMError(f"unknown SAE kind {kind!r} (expected one of {', '.join(KINDS)})", file=path)
    if path.suffix == ".safetensors" or (path.suffix not in (".pt", ".pth", ".bin") and _looks_like_safetensors(path)):
        sae = _load_safetensors(path)
        if kind is not None and kind != sae.kind:
            raise InterPLMError(f"the SAE's config says it is a {sae.kind} SAE, not {kind}", file=path)
        return sae
    return _load_interplm_pt(path, plm_name, layer, kind)


def _looks_like_safetensors(path: Path) -> bool:
    """safetensors files start with an 8-byte little-endian header length, then a JSON object."""
    with open(path, "rb") as handle:
        head = handle.read(9)
    return len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < path.stat().st_size


def sae_hash(sae: SparseAutoencoder) -> str:
    """Short sha256 of the kind, k and weights: identifies an SAE in caches and database provenance."""
    h = hashlib.sha256(f"{sae.kind}:{sae.config.k if sae.kind != 'relu' else ''}".encode())
    for key, value in sorted(sae.state_dict().items()):
        array = value.detach().to("cpu", torch.float32).contiguous().numpy()
        h.update(f"{key}{array.shape}".encode())
        h.update(array.tobytes())
    return h.hexdigest()[:16]


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
