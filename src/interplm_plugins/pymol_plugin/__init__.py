"""InterPLM in PyMOL: the ``interplm`` command and a panel in the Plugin menu (a thin layer over core).

Importing this package registers the ``interplm`` command with PyMOL's global ``cmd`` (what a
``pymolrc`` line ``import interplm_plugins.pymol_plugin`` does); PyMOL's plugin loader then calls
:func:`__init_plugin__`, which adds the panel to the Plugin menu. See docs/PYMOL.md.

Python API: :mod:`.commands` (``color``, ``top``, ``concept``, ``use``, ``info``, each taking
``_self=`` a PyMOL ``cmd``), :func:`.render.render_feature_png` (headless PNG),
:mod:`.panel` (the Qt panel and the data it shows).
"""

from __future__ import annotations

from interplm_plugins.pymol_plugin.commands import color, concept, info, interplm, register, top, use

__all__ = ["__init_plugin__", "color", "concept", "info", "interplm", "top", "use"]

register()


def __init_plugin__(app=None) -> None:
    """PyMOL's plugin hook: add "InterPLM features" to the Plugin menu (the command is registered on import)."""
    from pymol.plugins import addmenuitemqt

    def open_panel() -> None:
        from interplm_plugins.pymol_plugin.panel import open_panel as show

        show()

    addmenuitemqt("InterPLM features", open_panel)
