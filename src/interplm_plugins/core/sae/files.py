"""SAE files: this toolkit's safetensors + JSON, and the ``ae.pt`` state dicts of InterPLM, dictionary_learning and SAELens.

``save_sae(sae, "x.safetensors")`` writes the weights and ``x.json`` (the
:class:`~interplm_plugins.core.sae.model.SAEConfig`: kind, PLM name, layer, normalisation).
``load_sae`` reads those, or an InterPLM / dictionary_learning / SAELens ``ae.pt`` state dict
(``torch.load(weights_only=True)``; see :func:`load_sae` for the layouts and how the kind is
recognised); InterPLM's ``activation_rescale_factor`` is folded in by
:func:`~interplm_plugins.core.sae.normalize.normalize_sae`. :func:`sae_hash` names an SAE's exact
weights in caches and database provenance.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch

from interplm_plugins.core.plm.model import ESM2_MODELS
from interplm_plugins.core.plm.weights import torch_load_tensor_dict
from interplm_plugins.core.sae.kinds import BATCH_KINDS, K_KINDS, KINDS
from interplm_plugins.core.sae.model import SAEConfig, SparseAutoencoder
from interplm_plugins.core.sae.normalize import normalize_sae
from interplm_plugins.errors import InterPLMError


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
