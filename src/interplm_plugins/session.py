"""The plugins' session pipeline: the one pipeline the PyMOL commands and the napari widgets share.

``current_pipeline()`` is the session's pipeline, loaded on first use: the embedded demo unless
``use_pipeline`` chose other parts (PyMOL's ``interplm use``; in napari, from Python). It is state
of an interactive session, so it lives here, beside the plugins, and not in ``core``: core
functions take their pipeline as an argument, and each ``interplm`` command builds its own with
:func:`~interplm_plugins.core.interpret.pipeline.load_pipeline`.
"""

from __future__ import annotations

import threading

from interplm_plugins.core.interpret.pipeline import Pipeline, load_pipeline


_session_lock = threading.Lock()
_session: Pipeline | None = None
_session_spec: dict[str, str | None] = {"model": None, "sae": None, "database": None}


def current_pipeline() -> Pipeline:
    """The session's pipeline (loaded on first use): the embedded demo unless :func:`use_pipeline` changed it."""
    global _session
    with _session_lock:
        if _session is None:
            _session = load_pipeline(**_session_spec)
        return _session


def loaded_pipeline() -> Pipeline | None:
    """The session's pipeline if it is loaded already, else ``None`` (never loads: for completions)."""
    return _session


def use_pipeline(model: str | None = None, sae: str | None = None, database: str | None = None, *, allow_mismatch: bool = False) -> Pipeline:
    """Replace parts of the session's pipeline (``None`` keeps a part); loads and checks at once
    (``allow_mismatch``: see :func:`load_pipeline`; it holds for this choice only)."""
    global _session
    spec = dict(_session_spec)
    for key, value in (("model", model), ("sae", sae), ("database", database)):
        if value is not None:
            spec[key] = None if str(value).lower() in ("demo", "default") else str(value)
    pipeline = load_pipeline(**spec, allow_mismatch=allow_mismatch)
    with _session_lock:
        _session_spec.update(spec)
        _session = pipeline
    return pipeline


def reset_session() -> None:
    """Forget the session's pipeline choice (back to the embedded demo)."""
    global _session
    with _session_lock:
        _session = None
        _session_spec.update({"model": None, "sae": None, "database": None})
