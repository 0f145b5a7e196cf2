"""SAEs by name: ``hf://`` specs and the published releases (InterPLM, InterProt), checked against the PLM.

SAE specs (:func:`resolve_sae_spec`):

* ``hf://owner/repo[@revision]/path`` -- huggingface_hub's own URI convention; ``path`` is a file, or a
  folder holding ``ae_normalized.pt`` (InterPLM's layout);
* short names of the published releases in :data:`SAE_RELEASES`, e.g. ``interplm-esm2-8m/layer_4``,
  ``interplm-esm2-650m/layer_24/ae_unnormalized.pt``, ``interprot-esm2-650m/l24_sae4096``.

Files come from :func:`~interplm_plugins.core.plm.hub.hub_download` (the Hub cache, offline mode,
mirrors). A resolved spec carries the PLM the SAE was trained on and its layer (from the name), so
:func:`check_plm_for_sae` can refuse a mismatch before any embedding is computed;
:func:`load_sae_spec` is what loading a pipeline calls for any SAE, a path or a spec.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from interplm_plugins.core.plm.hub import hub_download_first
from interplm_plugins.core.plm.model import ESM2_MODELS
from interplm_plugins.core.sae.files import load_sae
from interplm_plugins.core.sae.interprot import load_interprot_sae, plm_without_token_dropout
from interplm_plugins.core.sae.provenance import plm_name_key
from interplm_plugins.errors import InterPLMError

HF_PREFIX = "hf://"


@dataclass(frozen=True)
class SAERelease:
    """A published family of SAEs: where it lives and what it reads."""

    repo: str
    plm: str  # fair-esm name of the ESM-2 it was trained on
    layers: tuple[int, ...]
    fmt: str  # "interplm" (dictionary_learning ae.pt) or "interprot" (TopK safetensors)
    paper: str


#: The releases known by short name (``NAME/layer_N`` or ``NAME/lN_saeD``).
SAE_RELEASES: dict[str, SAERelease] = {
    "interplm-esm2-8m": SAERelease("Elana/InterPLM-esm2-8m", "esm2_t6_8M_UR50D", (1, 2, 3, 4, 5, 6), "interplm", "InterPLM (Simon & Zou 2025)"),
    "interplm-esm2-650m": SAERelease("Elana/InterPLM-esm2-650m", "esm2_t33_650M_UR50D", (1, 9, 18, 24, 30, 33), "interplm", "InterPLM (Simon & Zou 2025)"),
    "interprot-esm2-650m": SAERelease("liambai/InterProt-ESM2-SAEs", "esm2_t33_650M_UR50D", (4, 8, 12, 16, 20, 24, 28, 32), "interprot", "InterProt (Adams et al. 2025)"),
}


INTERPLM_FILES = ("ae_normalized.pt", "ae_unnormalized.pt")


_LAYER_DIR = re.compile(r"^layer_(\d+)$")


_INTERPROT_FILE = re.compile(r"^esm2_plm(\d+)_l(\d+)_sae(\d+)(?:_k(\d+))?.*\.safetensors$")


@dataclass(frozen=True)
class HubSAE:
    """A resolved SAE spec: the local file, the PLM and layer it reads, its file format, and the spec itself."""

    path: Path
    plm: str | None
    layer: int | None
    fmt: str  # "interplm" (ae.pt), "interprot" (InterProt safetensors) or "toolkit" (safetensors + .json)
    spec: str


def is_hub_sae_spec(spec: str | os.PathLike) -> bool:
    """True for ``hf://...`` and for short names of :data:`SAE_RELEASES` (not for local paths)."""
    text = str(spec)
    if text.startswith(HF_PREFIX):
        return True
    return text.split("/", 1)[0].split("@", 1)[0] in SAE_RELEASES and not Path(text).expanduser().exists()


def _release_for_repo(repo_id: str) -> SAERelease | None:
    return next((r for r in SAE_RELEASES.values() if r.repo.lower() == repo_id.lower()), None)


def _parse_spec(spec: str) -> tuple[str, str | None, str, SAERelease | None]:
    """``(repo_id, revision, path_in_repo, release)`` of an ``hf://`` URI or a short name."""
    if spec.startswith(HF_PREFIX):
        from huggingface_hub import parse_hf_uri
        from huggingface_hub.errors import HfUriError

        try:
            uri = parse_hf_uri(spec)
        except HfUriError as exc:
            raise InterPLMError(f"not a valid hf:// SAE spec ({exc.msg})", record=spec) from None
        if uri.type != "model":
            raise InterPLMError(f"SAEs live in model repositories, not a {uri.type}", record=spec)
        return uri.id, uri.revision, uri.path_in_repo, _release_for_repo(uri.id)
    name, _, path = spec.partition("/")
    name, _, revision = name.partition("@")
    release = SAE_RELEASES[name]
    return release.repo, revision or None, path, release


def _interprot_filename(path: str, release: SAERelease) -> str:
    """``l24_sae4096`` (short form) -> ``esm2_plm1280_l24_sae4096.safetensors``; a full file name is kept."""
    if path.endswith(".safetensors"):
        return path
    short = re.fullmatch(r"l(\d+)_sae(\d+)", path)
    if not short:
        raise InterPLMError("an InterProt SAE is named lLAYER_saeWIDTH (e.g. l24_sae4096) or by its .safetensors file", record=path)
    return f"esm2_plm{ESM2_MODELS[release.plm][1]}_l{short.group(1)}_sae{short.group(2)}.safetensors"


def _layer_from_path(path: str) -> int | None:
    """The layer a path names: InterPLM's ``layer_N/...`` or InterProt's ``esm2_plmD_lN_saeW...``."""
    for part in path.split("/"):
        for pattern in (_LAYER_DIR, _INTERPROT_FILE):
            found = pattern.match(part)
            if found:
                return int(found.group(1) if pattern is _LAYER_DIR else found.group(2))
    return None


def resolve_sae_spec(spec: str, plm=None) -> HubSAE:
    """Download (or find in the cache) the SAE a Hub spec names; see the module docstring for the forms.

    With ``plm``, the PLM the name implies is checked (:func:`check_plm_for_sae`) before anything is downloaded.
    """
    repo_id, revision, path, release = _parse_spec(spec)
    if not path:
        raise InterPLMError("name the SAE inside the repository, e.g. hf://Elana/InterPLM-esm2-8m/layer_4", record=spec)
    if release is not None and release.fmt == "interprot":
        path = _interprot_filename(path, release)
    name = path.rsplit("/", 1)[-1]
    fmt = "interprot" if _INTERPROT_FILE.match(name) else ("toolkit" if name.endswith(".safetensors") else "interplm")
    layer = _layer_from_path(path)
    if release is not None and layer is not None and layer not in release.layers:
        raise InterPLMError(f"{release.repo} has SAEs for layers {', '.join(map(str, release.layers))}, not layer {layer}", record=spec)
    if plm is not None:
        check_plm_for_sae(spec, release.plm if release else None, plm)
    repo = f"{repo_id}@{revision}" if revision else repo_id
    if fmt == "toolkit":  # this toolkit's own format keeps its config beside the weights
        hub_download_first(repo, (str(Path(path).with_suffix(".json")),))
    if name.endswith((".pt", ".pth", ".safetensors")):
        local = hub_download_first(repo, (path,))
    else:  # a folder: InterPLM keeps layer_N/ae_normalized.pt (and ae_unnormalized.pt)
        local = hub_download_first(repo, tuple(f"{path.rstrip('/')}/{file}" for file in INTERPLM_FILES))
    return HubSAE(path=local, plm=release.plm if release else None, layer=layer, fmt=fmt, spec=spec)


def check_plm_for_sae(spec: str, trained_on: str | None, plm) -> None:
    """Raise unless ``plm`` (a :class:`~interplm_plugins.core.plm.model.PLM`) is ``trained_on``, the fair-esm name
    of the ESM-2 the SAE ``spec`` was trained on (``None``: unknown, nothing to check).

    Compared by architecture (layers and width) and, when the PLM's own name is a known ESM-2 name
    (``esm2_t6_8M_UR50D`` or ``facebook/esm2_t6_8M_UR50D``), by that name.
    """
    if trained_on is None:
        return
    layers, dim, _ = ESM2_MODELS[trained_on]
    own = plm_name_key(plm.name)  # provenance's reading of a name, so both checks agree on what is the same PLM
    if (plm.num_layers, plm.embed_dim) != (layers, dim) or (own in ESM2_MODELS and own != trained_on):
        raise InterPLMError(
            f"SAE {spec} was trained on {trained_on} ({layers} layers, dim {dim}), but the loaded PLM is "
            f"{plm.name} ({plm.num_layers} layers, dim {plm.embed_dim}); pass --model facebook/{trained_on}",
            file=plm.source,
        )


def load_sae_spec(spec: str | os.PathLike, plm, layer: int | None = None, kind: str | None = None):
    """The SAE ``spec`` names, checked against ``plm``: ``(sae, plm, layer or None, source text)``.

    A local path goes to :func:`~interplm_plugins.core.sae.files.load_sae` as before. A Hub spec is resolved,
    its PLM checked, its layer taken from the name unless ``layer`` is given (then they must agree);
    InterProt files are converted, and the PLM returned is then the view they read
    (:mod:`~interplm_plugins.core.sae.interprot`); otherwise it is ``plm`` itself. ``kind`` is
    :func:`~interplm_plugins.core.sae.files.load_sae`'s (how an ``ae.pt`` encodes).
    """
    if not is_hub_sae_spec(spec):
        return load_sae(spec, plm_name=plm.name, layer=layer, kind=kind), plm, layer, str(spec)
    hub_sae = resolve_sae_spec(str(spec), plm)
    if layer is not None and hub_sae.layer is not None and int(layer) != hub_sae.layer:
        raise InterPLMError(f"SAE {hub_sae.spec} reads layer {hub_sae.layer}, not layer {layer}", record=str(spec))
    layer = hub_sae.layer if layer is None else int(layer)
    plm_name = hub_sae.plm or plm.name
    if hub_sae.fmt == "interprot":
        return load_interprot_sae(hub_sae.path, plm_name=plm_name, layer=layer), plm_without_token_dropout(plm), layer, hub_sae.spec
    return load_sae(hub_sae.path, plm_name=plm_name, layer=layer, kind=kind), plm, layer, hub_sae.spec
