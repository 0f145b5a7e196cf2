"""Sample data: the demo protein, HIV-1 protease with an inhibitor (PDB 1HPV), as Cα points and backbone."""

from __future__ import annotations

# The structure is located by core (the package's copy, else PyMOL's), as for `interplm demo`.
from interplm_plugins.core.interpret.pipeline import demo_structure_path

__all__ = ["demo_structure_path", "make_sample_data"]


def make_sample_data():
    """napari sample-data contribution: the demo protein's layers (see :func:`structure_layer_data`)."""
    from interplm_plugins.napari_plugin._reader import structure_layer_data

    return structure_layer_data(demo_structure_path())
