"""Atomic file writes: a reader never sees a half-written file, a killed writer leaves the old one.

A writer works in a temporary file beside the target (``.<name>.<random>.tmp``), holds an
advisory lock (``flock``) on it while it works, and renames it over the target at the end. A
process killed with SIGKILL leaves its temporary file behind, never a damaged target. The next
write of the same target removes such leftovers once they are older than
:data:`STALE_AFTER_S` and no live writer holds their lock (a killed process's lock dies with it),
so repeated interruptions do not fill the disk, and two concurrent writers never delete each
other's work. Without ``fcntl`` (Windows) leftovers are simply left alone.
"""

from __future__ import annotations

import contextlib
import glob
import os
import tempfile
import time
from pathlib import Path
from typing import Iterator

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

_UMASK = os.umask(0)
os.umask(_UMASK)

#: A temporary file this old (seconds since its last change) whose lock is free is a leftover.
STALE_AFTER_S = 60.0


def _try_lock(fd: int) -> bool:
    """Take the exclusive advisory lock on ``fd`` without waiting; False if held elsewhere or unsupported."""
    if fcntl is None:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    return True


def temp_files_for(target: str | os.PathLike) -> list[Path]:
    """The temporary files of writers of ``target`` (live or killed), oldest first."""
    target = Path(target)
    found = [Path(p) for p in glob.glob(os.path.join(glob.escape(str(target.parent)), f".{glob.escape(target.name)}.*.tmp"))]

    def mtime(path: Path) -> float:
        try:
            return path.stat().st_mtime
        except OSError:  # removed meanwhile
            return 0.0

    return sorted(found, key=mtime)


def remove_stale_temp_files(target: str | os.PathLike, older_than: float = STALE_AFTER_S) -> list[Path]:
    """Remove the temporary files that killed writers of ``target`` left; return them.

    A file is removed only if it is older than ``older_than`` seconds and no process holds its
    lock, so a write in progress is never touched.
    """
    if fcntl is None:
        return []
    removed = []
    now = time.time()
    for tmp in temp_files_for(target):
        try:
            if now - tmp.stat().st_mtime < older_than:
                continue
            fd = os.open(tmp, os.O_RDONLY)
        except OSError:
            continue
        try:
            if _try_lock(fd):
                tmp.unlink()
                removed.append(tmp)
        except OSError:
            pass
        finally:
            os.close(fd)
    return removed


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; on success rename it over ``target``.

    On an exception the temporary file is removed and ``target`` is left untouched; if the
    process is killed, the temporary file stays until a later write of ``target`` removes it.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temp_files(target)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    _try_lock(fd)  # held until the rename (closing fd releases it): marks the file as in use
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp_path, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the usual mode
        os.replace(tmp_path, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise
    finally:
        os.close(fd)


def write_text_atomic(target: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``target`` atomically (UTF-8)."""
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_bytes_atomic(target: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``target`` atomically."""
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)


def save_figure_png(figure, target: str | os.PathLike) -> Path:
    """Save a matplotlib ``figure`` as PNG at ``target`` atomically and close it."""
    import matplotlib.pyplot as plt

    target = Path(target)
    with atomic_path(target) as tmp:
        figure.savefig(tmp, format="png")
    plt.close(figure)
    return target
