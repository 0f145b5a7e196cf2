"""Files from the Hugging Face Hub, through ``huggingface_hub`` (its cache, offline mode, mirrors).

Files come from :func:`hub_download`, a thin wrapper of ``huggingface_hub.hf_hub_download`` that reads
``HF_ENDPOINT``, ``HF_HOME`` / ``HF_HUB_CACHE`` and ``HF_HUB_OFFLINE`` (or ``INTERPLM_OFFLINE``) when it is
*called*, not when Python started, so a PyMOL session or a test can change them; a cached file loads with
no network at all. ESM-2 models in Hugging Face's format (:mod:`~interplm_plugins.core.plm.hf_esm`) and SAEs
by name (:mod:`~interplm_plugins.core.sae.releases`) are downloaded through it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from pathlib import Path

from interplm_plugins.errors import InterPLMError

#: ``owner/name`` with an optional ``@revision``: what a Hub repo id looks like on the command line.
REPO_ID_PATTERN = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(@[\w./-]+)?$")


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def hub_offline() -> bool:
    """True when ``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``, or this toolkit's ``INTERPLM_OFFLINE``) is set."""
    return any(_truthy(os.environ.get(name)) for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "INTERPLM_OFFLINE"))


def hub_cache_dir() -> Path:
    """The Hub cache folder huggingface_hub uses: ``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, else ``~/.cache/huggingface/hub``."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "huggingface"
    return Path(home).expanduser() / "hub"


def split_revision(repo: str) -> tuple[str, str | None]:
    """``"owner/name@rev"`` -> ``("owner/name", "rev")``; without ``@``, the revision is ``None`` (``main``)."""
    repo_id, _, revision = repo.partition("@")
    return repo_id, (revision or None)


@contextlib.contextmanager
def _quiet_hub_logger():
    """huggingface_hub logs each failed attempt (it retries with back-off before giving up, ~20 s without
    network); a failure is reported once, as this toolkit's one-line error, so its warnings are held back."""
    logger = logging.getLogger("huggingface_hub")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def hub_download(repo_id: str, filename: str, revision: str | None = None, whole_repo: bool = False) -> Path:
    """Local path of ``filename`` in Hub repo ``repo_id`` at ``revision``, from the cache or downloaded into it.

    ``whole_repo``: the file is one of several the caller needs (a model), so the error suggests
    downloading the repository rather than this one file.

    Raises :class:`InterPLMError` with one line saying what to download and where when the file is neither
    cached nor reachable, and :class:`FileNotFoundError` when the repo (reachable) has no such file.
    """
    try:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, LocalEntryNotFoundError
    except ImportError:
        raise InterPLMError("huggingface_hub is not installed: pip install huggingface_hub") from None
    cache = hub_cache_dir()
    offline = hub_offline()
    try:
        with _quiet_hub_logger():
            path = hf_hub_download(
                repo_id, filename, revision=revision, cache_dir=str(cache), local_files_only=offline,
                endpoint=os.environ.get("HF_ENDPOINT") or None,
            )  # fmt: skip
    except LocalEntryNotFoundError:
        why = "offline mode is on (HF_HUB_OFFLINE / INTERPLM_OFFLINE)" if offline else "the Hub could not be reached"
        at = f"@{revision}" if revision else ""
        command = f"hf download {repo_id}{'' if whole_repo else ' ' + filename}{' --revision ' + revision if revision else ''}"
        raise InterPLMError(
            f"{repo_id}{at}/{filename} is not in the Hugging Face cache and {why}; on a machine with network run "
            f"`{command}` and copy its cache to {cache} (or point HF_HOME / HF_HUB_CACHE at it)",
            file=cache,
        ) from None
    except EntryNotFoundError:
        raise FileNotFoundError(f"{repo_id}/{filename}") from None
    except HfHubHTTPError as exc:  # repository or revision not found, gated, server error
        reason = " ".join(str(exc).split())[:200]
        raise InterPLMError(f"the Hub refused {repo_id}/{filename} ({reason})", record=repo_id) from None
    except ValueError as exc:  # huggingface_hub's validation of repo ids and revisions
        raise InterPLMError(f"not a Hugging Face repo id or file name ({exc})", record=repo_id) from None
    return Path(path)


def hub_download_first(repo: str, filenames: tuple[str, ...], whole_repo: bool = False) -> Path:
    """The first of ``filenames`` that ``repo`` (``owner/name[@rev]``) has; one-line error if none."""
    repo_id, revision = split_revision(repo)
    for filename in filenames:
        try:
            return hub_download(repo_id, filename, revision, whole_repo)
        except FileNotFoundError:
            continue
    raise InterPLMError(f"the Hub repository has none of {', '.join(filenames)}", record=repo)
