"""The single-file plugin PyMOL's Plugin Manager installs (:data:`PLUGIN_FILE`); it loads the pip-installed package."""

from pathlib import Path

#: Give this file to Plugin > Plugin Manager > Install New Plugin > Install from local file.
PLUGIN_FILE = Path(__file__).with_name("interplm_plugin.py")
