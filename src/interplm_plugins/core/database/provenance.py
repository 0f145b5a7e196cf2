"""Provenance checks of a feature database: it is used only with the SAE (and PLM, layer) it was built with.

A database records the hash of the SAE it was built with
(:func:`~interplm_plugins.core.sae.files.sae_hash`), its PLM and its layer; these functions
compare them with what is loaded, by the rules of :mod:`~interplm_plugins.core.sae.provenance`
(a feature-count mismatch is always an error; another SAE, PLM or layer is one unless
``allow_mismatch``, which turns it into a logged warning).
"""

from __future__ import annotations

import os
from typing import Any

from interplm_plugins.core.database.schema import FeatureDatabase
from interplm_plugins.core.sae.files import sae_hash
from interplm_plugins.core.sae.provenance import _describe_plm, _mismatch, plms_differ
from interplm_plugins.errors import InterPLMError


def check_database_matches_sae(
    db, sae, *, plm=None, layer: int | None = None, allow_mismatch: bool = False, source: str | os.PathLike | None = None
) -> None:
    """Raise unless the feature database ``db`` (a :class:`~interplm_plugins.core.database.schema.FeatureDatabase`)
    was built with ``sae`` (and ``plm`` / ``layer`` when given): feature count always; the SAE hash,
    PLM and layer where its provenance records them."""
    provenance, source = db.provenance, source or getattr(db, "path", None)
    if db.num_features != sae.d_hidden:
        raise InterPLMError(f"the database has {db.num_features} features but the SAE has {sae.d_hidden}", file=source)
    built_with = provenance.get("sae_hash")
    if built_with and built_with != sae_hash(sae):
        _mismatch(
            f"the database was built with SAE {built_with} ({provenance.get('sae', '?')}), not with this SAE {sae_hash(sae)}: "
            "its concepts and examples describe other features",
            allow_mismatch, source,
        )  # fmt: skip
    if plm is not None and plms_differ(provenance.get("plm"), provenance.get("plm_identity"), plm.name, plm.identity):
        _mismatch(
            f"the database was built with {_describe_plm(provenance.get('plm'), provenance.get('plm_identity'))}, "
            f"but the loaded PLM is {_describe_plm(plm.name, plm.identity)}",
            allow_mismatch, source,
        )  # fmt: skip
    recorded_layer = provenance.get("layer")
    if layer is not None and recorded_layer is not None and int(recorded_layer) != int(layer):
        _mismatch(f"the database was built on layer {recorded_layer}, not layer {layer}", allow_mismatch, source)


def check_database_file_matches_sae(path: str | os.PathLike, sae, **kwargs: Any) -> None:
    """:func:`check_database_matches_sae` on the database file at ``path`` (opened and closed here)."""
    with FeatureDatabase(path) as db:
        check_database_matches_sae(db, sae, source=path, **kwargs)
