"""scripts/install.sh's choice of environment, with real interpreters: one marked externally managed
(PEP 668, as Debian 12's and Ubuntu 24.04's system python3 are) gets a .venv in the checkout; a
virtual environment, a conda environment and an unmarked user interpreter are used as they are."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "install.sh"


@pytest.fixture(scope="module")
def system_python(tmp_path_factory) -> Path:
    """A real interpreter with its own prefix, like a distribution's /usr: this Python's binary,
    its standard library linked in (without site-packages), and PEP 668's EXTERNALLY-MANAGED marker."""
    root = tmp_path_factory.mktemp("usr")
    stdlib = Path(sysconfig.get_path("stdlib"))
    (root / "bin").mkdir()
    lib = root / "lib" / stdlib.name
    lib.mkdir(parents=True)
    for entry in stdlib.iterdir():
        if entry.name != "site-packages":
            (lib / entry.name).symlink_to(entry)
    (lib / "site-packages").mkdir()
    libdir = Path(sysconfig.get_config_var("LIBDIR") or "")
    for shared in libdir.glob("libpython*.so*"):  # a binary linked to its libpython by a relative path
        (root / "lib" / shared.name).symlink_to(shared)
    python = root / "bin" / "python3"
    python.write_bytes(Path(os.path.realpath(sys.executable)).read_bytes())
    python.chmod(0o755)
    (lib / "EXTERNALLY-MANAGED").write_text("[externally-managed]\nError=use a virtual environment\n")
    prefix = subprocess.run([str(python), "-c", "import sys; print(sys.prefix)"], capture_output=True, text=True, check=True).stdout.strip()
    assert prefix == str(root)
    return python


def choice(python: Path | str, **env: str) -> str:
    result = subprocess.run(["bash", str(SCRIPT), "--print-env"], env={**os.environ, "PYTHON": str(python), **env},
                            capture_output=True, text=True, timeout=60)  # fmt: skip
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_externally_managed_interpreter_gets_a_venv_in_the_checkout(system_python):
    had_venv = (REPO / ".venv").exists()
    assert choice(system_python) == f"install: environment venv {REPO / '.venv' / 'bin' / 'python'} (an externally managed interpreter (PEP 668))"
    assert (REPO / ".venv").exists() == had_venv  # --print-env makes and installs nothing


def test_virtual_and_conda_environments_and_user_interpreters_are_used_as_they_are(system_python, tmp_path):
    venv = tmp_path / "env"
    subprocess.run([str(system_python), "-m", "venv", "--without-pip", str(venv)], check=True, timeout=60)
    assert choice(venv / "bin" / "python") == f"install: environment as-is {venv / 'bin' / 'python'} (an active virtual environment)"
    (system_python.parent.parent / "conda-meta").mkdir()
    try:
        assert choice(system_python).endswith("(a conda environment)")
    finally:
        (system_python.parent.parent / "conda-meta").rmdir()
    marker = next(system_python.parent.parent.glob("lib/python3*/EXTERNALLY-MANAGED"))
    marker.rename(marker.with_suffix(".off"))  # the same interpreter unmarked: a pyenv or hand-built one
    try:
        assert choice(system_python) == f"install: environment as-is {system_python} (a user-installed interpreter without a PEP 668 marker)"
    finally:
        marker.with_suffix(".off").rename(marker)


def test_bad_options_and_missing_interpreters_fail_clearly(tmp_path):
    bad = subprocess.run(["bash", str(SCRIPT), "--tests"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "unknown option --tests" in bad.stderr
    missing = subprocess.run(["bash", str(SCRIPT), "--print-env"], env={**os.environ, "PYTHON": str(tmp_path / "nopython")},
                             capture_output=True, text=True, timeout=60)  # fmt: skip
    assert missing.returncode == 2 and "no Python interpreter" in missing.stderr
