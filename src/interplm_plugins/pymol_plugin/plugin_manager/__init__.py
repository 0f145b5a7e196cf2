"""The single-file plugin PyMOL loads at start (:data:`PLUGIN_FILE`); it imports the pip-installed package.

PyMOL 3.x finds plugins only in its startup folders (``$PYMOL_DATA/startup`` and those the Plugin
Manager adds, such as ``~/.pymol/startup``), not through Python entry points. Install the file
with Plugin > Plugin Manager > Install New Plugin > "Install from local file", or with
``python -m interplm_plugins.pymol_plugin.plugin_manager [FOLDER]`` (:func:`install_plugin_file`).
"""

from __future__ import annotations

import os
from pathlib import Path

from interplm_plugins.core.atomic import write_bytes_atomic

#: The plugin file PyMOL's Plugin Manager installs.
PLUGIN_FILE = Path(__file__).with_name("interplm_plugin.py")


def install_plugin_file(folder: str | os.PathLike | None = None) -> Path:
    """Copy :data:`PLUGIN_FILE` into a PyMOL startup folder (default: ``$PYMOL_DATA/startup``,
    which every PyMOL scans); returns the installed file."""
    if folder is None:
        from pymol import cmd

        folder = cmd.exp_path("$PYMOL_DATA/startup")
    target = Path(folder) / PLUGIN_FILE.name
    write_bytes_atomic(target, PLUGIN_FILE.read_bytes())
    return target
