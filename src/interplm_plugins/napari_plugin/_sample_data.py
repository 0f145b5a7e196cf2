"""Sample data: the demo protein, HIV-1 protease with an inhibitor (PDB 1HPV), as Cα points and backbone."""

from __future__ import annotations

from pathlib import Path

from interplm_plugins.errors import InterPLMError

#: File name of the demo structure, shipped by the package or by PyMOL's wheel.
DEMO_STRUCTURE_NAME = "1hpv.pdb"


def demo_structure_path() -> Path:
    """The demo structure: the package's own copy if shipped, else the one in PyMOL's wheel."""
    shipped = Path(__file__).resolve().parent.parent / "data" / "demo" / DEMO_STRUCTURE_NAME
    if shipped.is_file():
        return shipped
    try:
        import pymol  # only to locate its data folder; PyMOL itself is never started here
    except ImportError:
        raise InterPLMError(
            "the demo structure is not shipped in this installation and PyMOL (which carries a copy) is not "
            "installed; pip install pymol-open-source",
            file=shipped,
        ) from None
    candidate = Path(pymol.__file__).resolve().parent / "pymol_path" / "data" / "tut" / DEMO_STRUCTURE_NAME
    if not candidate.is_file():
        raise InterPLMError("the demo structure is missing from both this package and PyMOL's data", file=candidate)
    return candidate


def make_sample_data():
    """napari sample-data contribution: the demo protein's layers (see :func:`structure_layer_data`)."""
    from interplm_plugins.napari_plugin._reader import structure_layer_data

    return structure_layer_data(demo_structure_path())
