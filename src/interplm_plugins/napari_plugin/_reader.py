"""napari reader for protein structures (PDB/mmCIF): Cα atoms as a Points layer, the backbone as Shapes paths.

Coordinates are in ångström and in napari's axis order ``(z, y, x)``, so napari's x axis is the
file's x. The Points layer's ``features`` table has one row per modelled residue of every protein
chain (:func:`interplm_plugins.core.inputs.structure.read_structure` decides which residues count), with
columns ``chain``, ``resi``, ``icode``, ``resn``, ``one_letter`` and ``seq_index`` (0-based index
into the chain's sequence, i.e. the row of the chain's activation matrix). A residue without a Cα
atom has no point, but still counts in the sequence (the indices of the others do not shift).
``metadata["interplm"]`` holds the ``source`` path, the chains' ``sequences`` and the
:class:`~interplm_plugins.core.inputs.structure.StructureChain` objects (``chains``, by chain id).

A structure is three-dimensional: view it with napari's 3D toggle (the widgets switch to 3D when
they colour it); in 2D napari shows one slice of ångström-spaced coordinates.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from interplm_plugins.errors import InterPLMError

#: File name endings the reader accepts (optionally gzipped), lower case.
STRUCTURE_SUFFIXES = (".pdb", ".ent", ".cif", ".mmcif")
#: Longest Cα-Cα distance (Å) still drawn as one backbone path; longer means unmodelled residues.
MAX_CA_CA_DISTANCE = 4.2
#: Key of the plugin's entry in a layer's ``metadata``.
METADATA_KEY = "interplm"
#: Colours of the chains, cycled (Okabe-Ito, distinguishable with colour blindness).
CHAIN_COLORS = ["#E69F00", "#56B4E9", "#009E73", "#F0E442", "#0072B2", "#D55E00", "#CC79A7", "#BBBBBB"]

LayerData = tuple[Any, dict[str, Any], str]


def is_structure_path(path: str | os.PathLike) -> bool:
    """Whether ``path`` is named like a structure file the reader handles."""
    name = Path(path).name.lower().removesuffix(".gz")
    return name.endswith(STRUCTURE_SUFFIXES)


def napari_get_reader(path: str | os.PathLike | list) -> Callable[[Any], list[LayerData]] | None:
    """npe2 reader hook: the reader function if every path is a structure file, else ``None``."""
    paths = path if isinstance(path, (list, tuple)) else [path]
    if not paths or not all(isinstance(p, (str, os.PathLike)) and is_structure_path(p) for p in paths):
        return None
    return read_structures


def read_structures(path: str | os.PathLike | list) -> list[LayerData]:
    """Layer data for one or several structure files (see :func:`structure_layer_data`)."""
    paths = path if isinstance(path, (list, tuple)) else [path]
    return [layer for p in paths for layer in structure_layer_data(p)]


def _backbone_paths(coords: np.ndarray) -> list[np.ndarray]:
    """Split a chain's Cα trace where consecutive Cα atoms are too far apart to be bonded."""
    if len(coords) < 2:
        return []
    gaps = np.flatnonzero(np.linalg.norm(np.diff(coords, axis=0), axis=1) > MAX_CA_CA_DISTANCE) + 1
    return [segment for segment in np.split(coords, gaps) if len(segment) >= 2]


def structure_layer_data(path: str | os.PathLike) -> list[LayerData]:
    """One backbone Shapes layer per chain, then a Points layer of the Cα atoms of all protein chains.

    Raises :class:`InterPLMError` naming the file for unreadable files or files without Cα atoms.
    """
    from interplm_plugins.core.inputs.structure import read_structure_ca

    path = Path(path)
    chains, chain_coords = read_structure_ca(path)
    rows: list[dict[str, Any]] = []
    coords: list[np.ndarray] = []
    for chain, xyz in zip(chains, chain_coords):
        placed = np.flatnonzero(~np.isnan(xyz).any(axis=1))  # a residue without its Cα has nothing to place
        rows += [
            {
                "chain": chain.chain_id,
                "resi": chain.residues[i].resi,
                "icode": chain.residues[i].icode,
                "resn": chain.residues[i].resn,
                "one_letter": chain.residues[i].one_letter,
                "seq_index": int(i),
            }
            for i in placed
        ]
        coords.append(xyz[placed])
    if not rows:
        raise InterPLMError("no Cα atoms in any protein chain", file=path)
    zyx = np.concatenate(coords)[:, ::-1]
    features = pd.DataFrame(rows)
    features["chain"] = features["chain"].astype(str)
    chain_ids = [c.chain_id for c in chains]
    colors = {cid: CHAIN_COLORS[i % len(CHAIN_COLORS)] for i, cid in enumerate(chain_ids)}
    metadata = {
        METADATA_KEY: {
            "source": str(path),
            "sequences": {c.chain_id: c.sequence for c in chains},
            # the widgets embed these chains; seq_index rows point into their residues
            "chains": {c.chain_id: c for c in chains},
        }
    }
    stem = path.name.removesuffix(".gz").rsplit(".", 1)[0]
    points: LayerData = (
        zyx,
        {
            "name": f"{stem} Cα",
            "features": features,
            "face_color": [colors[c] for c in features["chain"]],
            "border_width": 0,
            "size": 2.0,
            "metadata": metadata,
        },
        "points",
    )
    backbones: list[LayerData] = []
    for cid in chain_ids:
        segments = _backbone_paths(zyx[features["chain"].to_numpy() == cid])
        if segments:
            backbones.append(
                (
                    segments,
                    {
                        "name": f"{stem} backbone {cid}",
                        "shape_type": "path",
                        "edge_color": colors[cid],
                        "edge_width": 0.3,
                        "opacity": 0.6,
                        "metadata": {METADATA_KEY: {"source": str(path), "chain": cid}},
                    },
                    "shapes",
                )
            )
    # the points last: napari puts them on top and selects them, ready for the widgets
    return [*backbones, points]
