"""``python -m interplm_plugins.pymol_plugin.plugin_manager [FOLDER]``: install the PyMOL plugin file."""

import sys

from interplm_plugins.pymol_plugin.plugin_manager import install_plugin_file

if __name__ == "__main__":
    if len(sys.argv) > 2 or sys.argv[1:2] in (["-h"], ["--help"]):
        print(__doc__.strip())
        sys.exit(0 if len(sys.argv) == 2 else 1)
    try:
        installed = install_plugin_file(sys.argv[1] if len(sys.argv) == 2 else None)
    except OSError as exc:
        print(f"interplm: error: cannot install the PyMOL plugin file ({exc}); give a writable startup folder, e.g. ~/.pymol/startup", file=sys.stderr)
        sys.exit(2)
    print(f"{installed}: PyMOL loads the InterPLM plugin at its next start")
