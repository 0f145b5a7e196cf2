"""Provenance checks: an SAE only with the PLM it was trained on, a database only with its SAE.

Every part records what it was made from: an SAE's config its PLM (``plm`` name, ``plm_identity``
= ``name:fingerprint``, ``plm_layer``) and width; an embedding store the PLM it ran; a feature
database the SAE's hash (:func:`~interplm_plugins.core.sae.files.sae_hash`) and the PLM. These functions
compare what is recorded with what is loaded (a database's own checks,
:mod:`~interplm_plugins.core.database.provenance`, follow the same rules with :func:`_mismatch`). A width or feature-count mismatch cannot run and is
always an error; a different PLM or SAE of the same shape runs but gives confident wrong answers,
so it is an error too unless ``allow_mismatch`` (the CLI's ``--allow-mismatch``), which turns it
into a logged warning. Only what is recorded is compared: InterPLM's published ``ae.pt`` files
carry no PLM identity, so for them only the width (and the layer, where known) is checked.

The PLM fingerprint is the content hash in :attr:`~interplm_plugins.core.plm.model.PLM.identity` (size
plus the first and last MiB of the checkpoint file): the same weights under another file name or
hub name match; other weights of the same shape do not.
"""

from __future__ import annotations

import logging
import os

from interplm_plugins.core.sae.model import check_fits, check_fits_store
from interplm_plugins.core.sae.normalize import feature_max_activations, normalize_sae
from interplm_plugins.errors import InterPLMError

log = logging.getLogger(__name__)

OVERRIDE_HINT = "pass --allow-mismatch (PyMOL: allow_mismatch=1; Python: allow_mismatch=True) to use them together anyway"


def plm_fingerprint(identity: str | None) -> str | None:
    """The weights fingerprint of a PLM identity ``name:fingerprint`` (``None`` when there is none)."""
    if not identity:
        return None
    return str(identity).rsplit(":", 1)[-1]


def _describe_plm(name: str | None, identity: str | None) -> str:
    if identity:
        return f"{name or '?'} (weights {plm_fingerprint(identity)})"
    return name or "an unrecorded PLM"


def _mismatch(reason: str, allow_mismatch: bool, file: str | os.PathLike | None) -> None:
    """Raise ``reason`` as an :class:`InterPLMError`, or only log it when the user allowed mismatches."""
    if allow_mismatch:
        log.warning("interplm: warning: %s (allowed by --allow-mismatch)", reason)
        return
    raise InterPLMError(f"{reason}; {OVERRIDE_HINT}", file=file)


def plms_differ(recorded_name: str | None, recorded_identity: str | None, name: str | None, identity: str | None) -> bool:
    """Whether a recorded PLM and another one are different models, judged on what both record:
    the weights fingerprint when both have one (names may differ for the same weights), else the names."""
    if recorded_identity and identity:
        return plm_fingerprint(recorded_identity) != plm_fingerprint(identity)
    if recorded_name and name:
        return plm_name_key(recorded_name) != plm_name_key(name)
    return False


def plm_name_key(name: str) -> str:
    """A PLM name without its Hub owner and revision: ``facebook/esm2_t6_8M_UR50D@abc`` is ``esm2_t6_8M_UR50D``,
    the fair-esm name InterPLM's files record."""
    return str(name).split("@", 1)[0].rsplit("/", 1)[-1]


def check_sae_matches_plm(sae, plm, layer: int | None = None, *, allow_mismatch: bool = False, source: str | os.PathLike | None = None) -> None:
    """Raise unless ``sae`` was trained on ``plm`` (and on ``layer`` when given).

    Width and layer always; the PLM's name and weights fingerprint where the SAE records them.
    """
    if layer is not None:
        check_fits(sae, plm, layer)
    elif sae.d_in != plm.embed_dim:
        raise InterPLMError(f"SAE of width {sae.d_in} does not fit {plm.name} (dim {plm.embed_dim})", file=source or plm.source)
    config = sae.config
    if plms_differ(config.plm, config.plm_identity, plm.name, plm.identity):
        _mismatch(
            f"the SAE was trained on {_describe_plm(config.plm, config.plm_identity)}, "
            f"but the loaded PLM is {_describe_plm(plm.name, plm.identity)} ({plm.source})",
            allow_mismatch, source,
        )  # fmt: skip


def check_store_matches_sae(sae, store, *, allow_mismatch: bool = False, source: str | os.PathLike | None = None) -> None:
    """Raise unless ``sae`` reads ``store``'s embeddings: width and layer always, the PLM where both record it."""
    check_fits_store(sae, store)
    meta = getattr(store, "metadata", {}) or {}
    config = sae.config
    if plms_differ(config.plm, config.plm_identity, meta.get("plm"), meta.get("plm_identity")):
        _mismatch(
            f"the SAE was trained on {_describe_plm(config.plm, config.plm_identity)}, but the embedding store "
            f"{getattr(store, 'path', '')} holds {_describe_plm(meta.get('plm'), meta.get('plm_identity'))}",
            allow_mismatch, source,
        )  # fmt: skip


NORMALIZE_HINT = "normalise it first: interplm normalize SAE --store EMBEDDINGS --out SAE_normalized.safetensors"


def require_normalized(
    sae, *, store=None, source: str | os.PathLike | None = None, max_residues: int | None = 200_000, allow_mismatch: bool = False, progress: bool = False
):
    """``sae`` if it is normalised (activations in [0, 1]); else normalised on the fly over ``store``'s
    residues when one is given (which must hold the SAE's PLM and layer; ``allow_mismatch`` as in
    :func:`check_store_matches_sae`); else an error saying how to normalise.

    Concept thresholds (0.15 ... 0.8) and colour scales are in normalised units: on a raw SAE they
    lose their meaning, so commands that use them call this.
    """
    if sae.config.normalized:
        return sae
    if store is None:
        raise InterPLMError(
            f"the SAE is not normalised, so its activations are not in [0, 1] and concept thresholds and colours would be meaningless; {NORMALIZE_HINT}",
            file=source,
        )
    check_store_matches_sae(sae, store, allow_mismatch=allow_mismatch, source=source)
    log.warning("interplm: normalising the SAE on the fly over %s (save it once with `interplm normalize`)", getattr(store, "path", "the store"))
    return normalize_sae(sae, feature_max_activations(sae, store, max_residues=max_residues, progress=progress))
