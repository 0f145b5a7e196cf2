"""ESM-2 checkpoints in Hugging Face's format, loaded into fair-esm's ``ESM2`` (the fast forward pass).

A spec is a Hub repo id (``facebook/esm2_t6_8M_UR50D``, optionally ``@revision``), fetched through
:func:`~interplm_plugins.core.plm.hub.hub_download` (cache, offline mode, ``HF_ENDPOINT``), or a local folder in
transformers' ``EsmForMaskedLM`` / ``EsmModel`` layout: ``config.json``, ``model.safetensors`` (or
``pytorch_model.bin``, read with ``weights_only=True``) and, when present, the tokenizer's ``vocab.txt``.

What the conversion checks and maps (transformers' ``modeling_esm.py`` against fair-esm's ``esm2.py``):

* rotary position embeddings only (``position_embedding_type == "rotary"``), no embedding layer norm
  before the blocks (``emb_layer_norm_before``), GELU, ``intermediate_size == 4 * hidden_size``; the
  unused ``esm.embeddings.position_embeddings`` of old exports is ignored;
* query/key/value map one to one: both implementations rotate the halves of each head (``rotate_half``),
  with HF's shared ``rotary_embeddings.inv_freq`` copied into every block (recomputed from ``rope_theta``
  when a file lacks it);
* token dropout and its mask-ratio rescaling follow ``config.token_dropout``; ``layer_norm_eps`` is set on
  every layer norm (HF's default 1e-12 differs from fair-esm's 1e-5, so it is read, not assumed);
* ``esm.encoder.emb_layer_norm_after`` is fair-esm's final layer norm: the deepest layer's embedding is
  after it, as fair-esm and transformers' ``last_hidden_state`` both give it; the LM head
  (``lm_head.decoder`` tied to the word embeddings) and the contact regression are carried over;
* the vocabulary must be fair-esm's ESM-1b alphabet in the same order (``vocab.txt`` compared token by
  token; ``pad``/``mask`` ids and ``vocab_size`` always), since token ids are not remapped.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

import torch
from esm.data import Alphabet
from esm.model.esm2 import ESM2

from interplm_plugins.core.plm.hub import REPO_ID_PATTERN, hub_download_first
from interplm_plugins.core.plm.model import PLM
from interplm_plugins.core.plm.weights import torch_load_tensor_dict
from interplm_plugins.errors import InterPLMError

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
CONFIG_FILE = "config.json"
VOCAB_FILE = "vocab.txt"
_IGNORED = re.compile(r"^(embeddings\.position_ids|embeddings\.position_embeddings\.weight|pooler\..*|rotary_embeddings\.inv_freq|encoder\.layer\.[^.]+\.attention\.self\.rotary_embeddings\.inv_freq)$")
#: HF block suffix -> fair-esm block suffix.
_BLOCK_KEYS = {
    "attention.self.query": "self_attn.q_proj",
    "attention.self.key": "self_attn.k_proj",
    "attention.self.value": "self_attn.v_proj",
    "attention.output.dense": "self_attn.out_proj",
    "attention.LayerNorm": "self_attn_layer_norm",
    "intermediate.dense": "fc1",
    "output.dense": "fc2",
    "LayerNorm": "final_layer_norm",
}
_TOP_KEYS = {
    "embeddings.word_embeddings.weight": "embed_tokens.weight",
    "encoder.emb_layer_norm_after.weight": "emb_layer_norm_after.weight",
    "encoder.emb_layer_norm_after.bias": "emb_layer_norm_after.bias",
    "contact_head.regression.weight": "contact_head.regression.weight",
    "contact_head.regression.bias": "contact_head.regression.bias",
    "lm_head.dense.weight": "lm_head.dense.weight",
    "lm_head.dense.bias": "lm_head.dense.bias",
    "lm_head.layer_norm.weight": "lm_head.layer_norm.weight",
    "lm_head.layer_norm.bias": "lm_head.layer_norm.bias",
    "lm_head.bias": "lm_head.bias",
    "lm_head.decoder.weight": "lm_head.weight",
}
_BLOCK = re.compile(r"^encoder\.layer\.(\d+)\.(.+)\.(weight|bias)$")
#: Layer norms saved as ``LayerNorm.gamma`` / ``.beta`` (BERT's names; transformers 5 writes them so).
_LEGACY_NORM = re.compile(r"\.(gamma|beta)$")


def is_hf_model_spec(spec: str | os.PathLike) -> bool:
    """True for a local folder with ``config.json`` or a Hub repo id ``owner/name[@rev]`` that is not a local path."""
    path = Path(str(spec)).expanduser()
    if path.is_dir():
        return (path / CONFIG_FILE).is_file()
    # a missing file such as models/esm2.pt is a typo'd path, not a repo to download
    looks_like_file = path.suffix.lower() in (".pt", ".pth", ".bin", ".safetensors", ".json", ".gz")
    return not path.exists() and not looks_like_file and bool(REPO_ID_PATTERN.match(str(spec)))


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InterPLMError(f"not a readable JSON config ({exc})", file=path) from None
    if not isinstance(data, dict):
        raise InterPLMError("config.json must hold a JSON object", file=path)
    return data


def check_esm2_config(config: dict, file: Path) -> tuple[int, int, int]:
    """``(layers, hidden size, heads)`` of a transformers ESM config that fair-esm's ESM2 can run; else raise."""
    def need(key: str, ok, what: str):
        value = config.get(key)
        if not ok(value):
            raise InterPLMError(f"not an ESM-2 config fair-esm can run: {key} is {value!r}, expected {what}", file=file)
        return value

    if config.get("model_type") not in (None, "esm"):
        raise InterPLMError(f"not an ESM model (model_type {config.get('model_type')!r})", file=file)
    if config.get("is_folding_model"):
        raise InterPLMError("ESMFold checkpoints are not ESM-2 language models", file=file)
    def positive(v) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and v > 0

    layers = need("num_hidden_layers", positive, "a positive integer")
    dim = need("hidden_size", positive, "a positive integer")
    heads = need("num_attention_heads", lambda v: positive(v) and dim % v == 0 and (dim // v) % 2 == 0, "a divisor of hidden_size with an even head size")
    need("intermediate_size", lambda v: v == 4 * dim, f"4 x hidden_size = {4 * dim}")
    need("position_embedding_type", lambda v: v == "rotary", "'rotary' (ESM-2; absolute positions are ESM-1b)")
    need("emb_layer_norm_before", lambda v: not v, "false")
    need("hidden_act", lambda v: v in (None, "gelu"), "'gelu'")
    alphabet = Alphabet.from_architecture("ESM-1b")
    need("vocab_size", lambda v: v == len(alphabet), f"{len(alphabet)} (fair-esm's ESM-2 alphabet)")
    need("pad_token_id", lambda v: v == alphabet.padding_idx, f"{alphabet.padding_idx}")
    need("mask_token_id", lambda v: v == alphabet.mask_idx, f"{alphabet.mask_idx}")
    return layers, dim, heads


def check_vocab(vocab_path: Path | None) -> None:
    """Raise unless ``vocab.txt`` lists fair-esm's ESM-2 tokens in fair-esm's order (token ids are not remapped)."""
    if vocab_path is None:
        return
    try:
        tokens = [line.strip() for line in vocab_path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        raise InterPLMError(f"cannot read the tokenizer vocabulary ({exc})", file=vocab_path) from None
    expected = Alphabet.from_architecture("ESM-1b").all_toks
    if tokens != expected:
        first = next((i for i, (a, b) in enumerate(zip(tokens, expected)) if a != b), min(len(tokens), len(expected)))
        got = tokens[first] if first < len(tokens) else "<end>"
        want = expected[first] if first < len(expected) else "<end>"
        raise InterPLMError(
            f"vocabulary differs from fair-esm's ESM-2 alphabet at token {first} ({got!r}, expected {want!r}; {len(tokens)} tokens, expected {len(expected)})",
            file=vocab_path,
        )


def read_hf_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of ``model.safetensors`` or ``pytorch_model.bin`` (the latter with ``weights_only=True``)."""
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
            raise InterPLMError(f"not a readable safetensors file ({exc})", file=path) from None
    return torch_load_tensor_dict(path, "PyTorch weights", "a transformers state dict")


def convert_hf_state_dict(state: dict[str, torch.Tensor], config: dict, file: Path) -> ESM2:
    """A fair-esm ``ESM2`` (eval mode, float32) holding the weights of a transformers ESM-2 state dict."""
    layers, dim, heads = check_esm2_config(config, file)
    alphabet = Alphabet.from_architecture("ESM-1b")
    model = ESM2(num_layers=layers, embed_dim=dim, attention_heads=heads, alphabet=alphabet, token_dropout=bool(config.get("token_dropout", False)))
    eps = float(config.get("layer_norm_eps", 1e-12))
    for module in model.modules():
        if isinstance(module, torch.nn.LayerNorm):
            module.eps = eps
    mapped: dict[str, torch.Tensor] = {}
    unknown = []
    for key, value in state.items():
        key = _LEGACY_NORM.sub(lambda m: ".weight" if m.group(1) == "gamma" else ".bias", key.removeprefix("esm."))
        block = _BLOCK.match(key)
        if key in _TOP_KEYS:
            mapped[_TOP_KEYS[key]] = value
        elif block and block.group(2) in _BLOCK_KEYS:
            mapped[f"layers.{block.group(1)}.{_BLOCK_KEYS[block.group(2)]}.{block.group(3)}"] = value
        elif not _IGNORED.match(key):
            unknown.append(key)
    if unknown:
        raise InterPLMError(f"weights fair-esm's ESM2 has no place for: {', '.join(sorted(unknown)[:5])}", file=file)
    if "lm_head.weight" not in mapped and "embed_tokens.weight" in mapped:
        mapped["lm_head.weight"] = mapped["embed_tokens.weight"]  # tied, and saved once
    inv_freq = _inv_freq(state, config, dim // heads)
    for index in range(layers):
        mapped[f"layers.{index}.self_attn.rot_emb.inv_freq"] = inv_freq
    expected = model.state_dict()
    missing = sorted(k for k in expected if k not in mapped and not k.startswith(("lm_head.", "contact_head.")))
    if missing:
        raise InterPLMError(f"transformers checkpoint lacks {', '.join(missing[:5])}", file=file)
    for key, ref in expected.items():
        value = mapped.get(key, ref)  # an EsmModel has no LM head: fair-esm's initial one stays
        if tuple(value.shape) != tuple(ref.shape):
            raise InterPLMError(f"weight {key} has shape {tuple(value.shape)}, expected {tuple(ref.shape)}", file=file)
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise InterPLMError(f"weight {key} contains NaN or infinite values", file=file)
        mapped[key] = value.to(torch.float32)
    model.load_state_dict(mapped)
    return model.eval()


def _inv_freq(state: dict[str, torch.Tensor], config: dict, head_dim: int) -> torch.Tensor:
    """The rotary frequencies the checkpoint stores, or those ``rope_theta`` (default 10,000) gives."""
    for key, value in state.items():
        if key.endswith("rotary_embeddings.inv_freq"):
            return value.to(torch.float32)
    theta = float((config.get("rope_parameters") or {}).get("rope_theta") or config.get("rope_theta") or 10000.0)
    return 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))


def weights_fingerprint(model: torch.nn.Module) -> str:
    """Short sha256 of every parameter's name, shape and float32 values at up to 4,096 evenly spaced
    positions: content-based (any file format, any dtype that holds the same values) and cheap for 15B."""
    h = hashlib.sha256()
    for name, value in sorted(model.state_dict().items()):
        flat = value.detach().reshape(-1)
        step = max(1, flat.numel() // 4096)
        h.update(f"{name}{tuple(value.shape)}".encode())
        h.update(flat[::step].to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def hf_model_files(spec: str) -> tuple[Path, Path, Path | None]:
    """``(config.json, weights, vocab.txt or None)`` of a local folder or a Hub repo (downloaded / cached)."""
    folder = Path(spec).expanduser()
    if folder.is_dir():
        weights = next((folder / name for name in WEIGHT_FILES if (folder / name).is_file()), None)
        if weights is None:
            raise InterPLMError(f"no {' or '.join(WEIGHT_FILES)} in the model folder", file=folder)
        vocab = folder / VOCAB_FILE
        return folder / CONFIG_FILE, weights, vocab if vocab.is_file() else None
    config = hub_download_first(spec, (CONFIG_FILE,), whole_repo=True)
    weights = hub_download_first(spec, WEIGHT_FILES, whole_repo=True)
    try:
        vocab = hub_download_first(spec, (VOCAB_FILE,), whole_repo=True)
    except InterPLMError:
        vocab = None  # a repo without tokenizer files: the config's ids are still checked
    return config, weights, vocab


def load_hf_esm(spec: str | os.PathLike, device: str | torch.device = "cpu"):
    """Load an ESM-2 in transformers' layout (local folder or Hub repo id) as a :class:`~interplm_plugins.core.plm.model.PLM`.

    ``name`` is the repo id (or folder name); ``identity`` is ``<model name>:<weights fingerprint>``.
    """
    spec = str(spec)
    config_path, weights_path, vocab_path = hf_model_files(spec)
    config = _read_json(config_path)
    check_esm2_config(config, config_path)
    check_vocab(vocab_path)
    model = convert_hf_state_dict(read_hf_state_dict(weights_path), config, weights_path).to(device)
    name = spec.partition("@")[0] if not Path(spec).expanduser().is_dir() else Path(spec).expanduser().resolve().name
    short = name.rsplit("/", 1)[-1]
    return PLM(model=model, alphabet=Alphabet.from_architecture("ESM-1b"), name=name, source=str(weights_path.parent), identity=f"{short}:{weights_fingerprint(model)}")
