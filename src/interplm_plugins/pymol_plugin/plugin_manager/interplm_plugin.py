# Title: InterPLM features
# Author: interplm-plugins
# Citation-Required: No
"""InterPLM: sparse-autoencoder features of protein language models on structures.

Adds the "interplm" command and "InterPLM features" to the Plugin menu. This file only loads the
interplm-plugins package, which must be installed into the Python that runs PyMOL:

    python -m pip install "interplm-plugins[pymol]"
"""

try:
    import interplm_plugins.pymol_plugin as _plugin
    from interplm_plugins import __version__  # noqa: F401  (the Plugin Manager shows it)
except ImportError as exc:  # PyMOL prints this one line and goes on without the plugin
    raise ImportError(
        f"interplm-plugins is not installed in the Python that runs PyMOL ({exc}); "
        'install it with: python -m pip install "interplm-plugins[pymol]"'
    ) from None


def __init_plugin__(app=None):
    _plugin.__init_plugin__(app)
