"""Loading an ESM-2 by name or path: the embedded demo, fair-esm hub names and checkpoints, Hugging Face models.

``load_plm("demo")`` gives the embedded demonstration model shipped in the package;
``load_plm("esm2_t6_8M_UR50D")`` looks for ``esm2_t6_8M_UR50D.pt`` in ``$INTERPLM_MODELS_DIR``
and in torch hub's checkpoint folder, then tries fair-esm's download URL, and fails with a message
saying where to put the file. Checkpoints are read with ``torch.load(weights_only=True)``
(:mod:`~interplm_plugins.core.plm.weights`); Hugging Face repo ids and folders in transformers' layout
go to :mod:`~interplm_plugins.core.plm.hf_esm`.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path

import torch

from interplm_plugins.core.plm.hf_esm import is_hf_model_spec, load_hf_esm
from interplm_plugins.core.plm.model import DEMO_ALIASES, ESM2_MODELS, PLM, demo_model_path
from interplm_plugins.core.plm.weights import torch_load_failure, torch_load_weights
from interplm_plugins.errors import InterPLMError

_DOWNLOAD_URL = "https://dl.fbaipublicfiles.com/fair-esm/models/{name}.pt"


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
    repo id / local folder in transformers' layout (:mod:`~interplm_plugins.core.plm.hf_esm`)."""
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
    if is_hf_model_spec(spec_str):  # Hugging Face layout: a repo id (owner/name[@rev]) or a local folder
        return load_hf_esm(spec_str, device)
    raise InterPLMError(
        f"'{spec_str}' is neither a checkpoint file nor a known ESM-2 name ({', '.join(ESM2_MODELS)}, or 'demo'), "
        f"nor a Hugging Face model (owner/name, or a folder with config.json)"
    )
