"""ESM-2 protein language models through fair-esm: loading by hub name or local checkpoint path.

Checkpoints are read with ``torch.load(weights_only=True)``; fair-esm's checkpoints hold an
``argparse.Namespace`` (``cfg.model``), which is allowlisted, and nothing else is unpickled.

``load_plm("demo")`` gives the embedded demonstration model shipped in the package;
``load_plm("esm2_t6_8M_UR50D")`` looks for ``esm2_t6_8M_UR50D.pt`` in ``$INTERPLM_MODELS_DIR``
and in torch hub's checkpoint folder, then tries fair-esm's download URL, and fails with a message
saying where to put the file.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from esm.data import Alphabet
from esm.model.esm2 import ESM2

from interplm_plugins.errors import InterPLMError

#: fair-esm's ESM-2 hub names -> (layers, embedding dim, attention heads).
ESM2_MODELS: dict[str, tuple[int, int, int]] = {
    "esm2_t6_8M_UR50D": (6, 320, 20),
    "esm2_t12_35M_UR50D": (12, 480, 20),
    "esm2_t30_150M_UR50D": (30, 640, 20),
    "esm2_t33_650M_UR50D": (33, 1280, 20),
    "esm2_t36_3B_UR50D": (36, 2560, 40),
    "esm2_t48_15B_UR50D": (48, 5120, 40),
}
DEMO_MODEL_NAME = "esm2_t4_3M_interplm_demo"
DEMO_ALIASES = ("demo", "interplm-demo", DEMO_MODEL_NAME)
_DOWNLOAD_URL = "https://dl.fbaipublicfiles.com/fair-esm/models/{name}.pt"

torch.serialization.add_safe_globals([argparse.Namespace])


@dataclass
class PLM:
    """A loaded ESM-2 model with its alphabet; ``identity`` names the exact weights (for caches)."""

    model: ESM2
    alphabet: Alphabet
    name: str
    source: str
    identity: str

    @property
    def num_layers(self) -> int:
        return self.model.num_layers

    @property
    def embed_dim(self) -> int:
        return self.model.embed_dim

    def check_layer(self, layer: int) -> int:
        """Return ``layer`` if the model has it (0 = embeddings, 1..num_layers), else raise."""
        if not 0 <= int(layer) <= self.num_layers:
            raise InterPLMError(
                f"layer {layer} does not exist: {self.name} has layers 1..{self.num_layers} (0 = token embeddings)",
                file=self.source,
            )
        return int(layer)


def demo_model_path() -> Path:
    """Path of the embedded demo checkpoint inside the installed package."""
    return Path(__file__).resolve().parent.parent / "data" / "demo" / f"{DEMO_MODEL_NAME}.pt"


def hub_checkpoint_dirs() -> list[Path]:
    """Folders searched for ``<hub name>.pt``, in order."""
    dirs = []
    if os.environ.get("INTERPLM_MODELS_DIR"):
        dirs.append(Path(os.environ["INTERPLM_MODELS_DIR"]))
    dirs.append(Path(torch.hub.get_dir()) / "checkpoints")
    return dirs


def _file_identity(path: Path) -> str:
    """Cheap, content-based identity: size plus a hash of the first and last MiB."""
    size = path.stat().st_size
    h = hashlib.sha256(str(size).encode())
    with open(path, "rb") as fh:
        h.update(fh.read(1 << 20))
        if size > 2 << 20:
            fh.seek(-(1 << 20), os.SEEK_END)
            h.update(fh.read())
    return h.hexdigest()[:16]


def torch_load_failure(exc: BaseException) -> str:
    """One line saying why ``torch.load(weights_only=True)`` refused or failed to read a file.

    A file that needs more than tensors and allowlisted types is refused without unpickling the
    rest (it could run code); torch's own message for that suggests ``weights_only=False``, which
    this toolkit never does, so it is replaced.
    """
    import pickle
    import re

    text = str(exc).strip()
    if isinstance(exc, pickle.UnpicklingError) and "Weights only load failed" in text:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", text)
        what = f" ({found.group(1)})" if found else ""
        return f"refused: the file holds pickled Python objects other than tensors{what}, and loading them could run code"
    reason = text.splitlines()[0][:200] if text else "no data"
    if isinstance(exc, (EOFError, OSError, RuntimeError)):  # zip reader or unpickler ran out of data
        return f"truncated or damaged file ({type(exc).__name__}: {reason})"
    return f"{type(exc).__name__}: {reason}"


def torch_load_weights(path: str | os.PathLike):
    """``torch.load(path, weights_only=True)`` on the CPU, without torch's warnings on stderr
    (the command line prints one line per failure). Raises what ``torch.load`` raises."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.load(str(path), map_location="cpu", weights_only=True)


def torch_load_tensor_dict(path: str | os.PathLike, readable: str, state_dict: str) -> dict:
    """A file that must hold a dict of tensors (a state dict), read with ``weights_only=True``; otherwise one
    line: ``not a readable <readable> file (why)`` or ``not <state_dict> (expected a dict of tensors)``."""
    try:
        state = torch_load_weights(path)
    except Exception as exc:  # truncated, foreign or unsafe pickles raise many types
        raise InterPLMError(f"not a readable {readable} file ({torch_load_failure(exc)})", file=path) from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InterPLMError(f"not {state_dict} (expected a dict of tensors)", file=path)
    return dict(state)


def _torch_load_checkpoint(path: Path) -> dict:
    try:
        data = torch_load_weights(path)
    except FileNotFoundError:
        raise InterPLMError("no such file", file=path) from None
    except Exception as exc:  # torch raises many types for truncated / foreign / unsafe files
        raise InterPLMError(f"not a readable fair-esm checkpoint ({torch_load_failure(exc)})", file=path) from None
    if not isinstance(data, dict):
        raise InterPLMError(f"not a fair-esm checkpoint (top level is {type(data).__name__}, not dict)", file=path)
    return data


def load_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu") -> PLM:
    """Load an ESM-2 checkpoint in fair-esm's format (``{"cfg": {"model": Namespace}, "model": state}``).

    A ``<stem>-contact-regression.pt`` beside it is used when present (it only matters for contacts).
    """
    path = Path(path)
    data = _torch_load_checkpoint(path)
    if "cfg" not in data or "model" not in data:
        kind = "an ESM-1/ESM-1b checkpoint" if "args" in data else f"keys {sorted(data)[:5]}"
        raise InterPLMError(f"not an ESM-2 checkpoint in fair-esm's format ({kind})", file=path)
    regression_path = path.with_name(path.stem + "-contact-regression.pt")
    regression = _torch_load_checkpoint(regression_path) if regression_path.exists() else None
    # fair-esm picks its ESM-2 loader by the name's "esm2" prefix.
    core_name = path.stem if path.stem.startswith("esm2") else f"esm2_{path.stem}"
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Regression weights not found")
            import esm.pretrained

            model, alphabet = esm.pretrained.load_model_and_alphabet_core(core_name, data, regression)
    except (RuntimeError, AttributeError, KeyError, TypeError) as exc:
        reason = " ".join(str(exc).split())  # torch lists the mismatched keys on the following lines
        reason = reason if len(reason) <= 300 else reason[:297] + "..."
        raise InterPLMError(f"checkpoint does not fit fair-esm's ESM2 ({reason})", file=path) from None
    for name, tensor in model.state_dict().items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise InterPLMError(f"checkpoint weight {name} contains NaN or infinite values", file=path)
    model.eval().to(device)
    return PLM(model=model, alphabet=alphabet, name=path.stem, source=str(path), identity=f"{path.stem}:{_file_identity(path)}")


def _download(name: str, dest: Path) -> None:
    if os.environ.get("INTERPLM_OFFLINE"):
        raise OSError("INTERPLM_OFFLINE is set")
    dest.parent.mkdir(parents=True, exist_ok=True)
    torch.hub.download_url_to_file(_DOWNLOAD_URL.format(name=name), str(dest), progress=True)


def load_plm(spec: str | os.PathLike | None = "demo", device: str | torch.device = "cpu") -> PLM:
    """Load an ESM-2 model: ``"demo"`` (embedded), a fair-esm hub name, a local ``.pt`` path, or a Hugging Face
    repo id / local folder in transformers' layout (:mod:`~interplm_plugins.core.hf_esm`)."""
    if spec is None or str(spec) in DEMO_ALIASES:
        path = demo_model_path()
        if not path.exists():
            raise InterPLMError("the embedded demo model is missing from the installation", file=path)
        return load_checkpoint(path, device)
    spec_str = str(spec)
    if Path(spec_str).expanduser().is_file():
        return load_checkpoint(Path(spec_str).expanduser(), device)
    if spec_str in ESM2_MODELS:
        for folder in hub_checkpoint_dirs():
            candidate = folder / f"{spec_str}.pt"
            if candidate.is_file():
                plm = load_checkpoint(candidate, device)
                plm.name = spec_str
                return plm
        dest = hub_checkpoint_dirs()[-1] / f"{spec_str}.pt"
        try:
            _download(spec_str, dest)
        except Exception as exc:  # no network, HTTP error, disk full...
            reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
            raise InterPLMError(
                f"ESM-2 weights '{spec_str}' are not cached and could not be downloaded ({reason}); "
                f"download {_DOWNLOAD_URL.format(name=spec_str)} and put it at {dest} "
                f"(or in $INTERPLM_MODELS_DIR), or pass a local checkpoint path",
                file=dest,
            ) from None
        return load_checkpoint(dest, device)
    from interplm_plugins.core.hf_esm import is_hf_model_spec, load_hf_esm

    if is_hf_model_spec(spec_str):  # Hugging Face layout: a repo id (owner/name[@rev]) or a local folder
        return load_hf_esm(spec_str, device)
    raise InterPLMError(
        f"'{spec_str}' is neither a checkpoint file nor a known ESM-2 name ({', '.join(ESM2_MODELS)}, or 'demo'), "
        f"nor a Hugging Face model (owner/name, or a folder with config.json)"
    )


def new_esm2(num_layers: int, embed_dim: int, attention_heads: int, seed: int = 0) -> ESM2:
    """A freshly initialised fair-esm ``ESM2`` (ESM-1b alphabet), e.g. to train or to test with."""
    torch.manual_seed(seed)
    alphabet = Alphabet.from_architecture("ESM-1b")
    model = ESM2(num_layers=num_layers, embed_dim=embed_dim, attention_heads=attention_heads, alphabet=alphabet, token_dropout=True)
    # BERT-style small init: with the LM head tied to the embedding, PyTorch's N(0, 1) embedding
    # init gives initial logits of std ~sqrt(dim) and a masked-LM loss of ~28 instead of ~3.
    torch.nn.init.normal_(model.embed_tokens.weight, std=0.02)
    with torch.no_grad():
        model.embed_tokens.weight[alphabet.padding_idx].zero_()
    return model.eval()


def save_esm2_checkpoint(model: ESM2, path: str | os.PathLike, dtype: torch.dtype = torch.float16) -> Path:
    """Save ``model`` in fair-esm's ESM-2 checkpoint format, with ``<stem>-contact-regression.pt`` beside it.

    ``esm.pretrained.load_model_and_alphabet_local`` loads the result (once ``argparse.Namespace``
    is allowlisted for ``weights_only`` loading, as this module does on import). The stem should
    start with ``esm2`` because fair-esm chooses its loader by that prefix.
    """
    from interplm_plugins.core.atomic import atomic_path

    path = Path(path)
    heads = model.attention_heads
    state = model.state_dict()
    body = {f"encoder.{k}": v.detach().to(dtype).clone() for k, v in state.items() if not k.startswith("contact_head.regression")}
    cfg = argparse.Namespace(
        encoder_layers=model.num_layers, encoder_embed_dim=model.embed_dim, encoder_attention_heads=heads, token_dropout=model.token_dropout
    )
    with atomic_path(path) as tmp:
        torch.save({"cfg": {"model": cfg}, "model": body}, tmp)
    regression = {k: v.detach().to(dtype).clone() for k, v in state.items() if k.startswith("contact_head.regression")}
    with atomic_path(path.with_name(path.stem + "-contact-regression.pt")) as tmp:
        torch.save({"model": regression}, tmp)
    return path
