"""PyMOL atoms to protein chains and back: which residue of which object gets which activation.

The residue rules are core's (:func:`interplm_plugins.core.structure.chain_from_atoms`), applied to
the atom table PyMOL holds, so a structure coloured in PyMOL maps exactly as ``read_structure`` maps
the file. PyMOL-specific points:

- each object is its own set of chains (two loaded copies of a structure are two proteins);
- PyMOL sorts atoms by chain and residue number; an atom's ``rank`` keeps the file's order, which is
  the order core reads residues in, so chains are rebuilt in rank order;
- the states of a multi-state object (NMR models, trajectories) share one atom table, so one value
  per atom holds for every state;
- a chain is embedded whole even when only part of it is selected (activations depend on the
  context), and only the selected residues are written.

Values go into the b-factor (so ``spectrum b`` and ``ramp`` keep working) and, where PyMOL has atom
properties (Incentive PyMOL; open-source PyMOL raises ``IncentiveOnlyException``), into
``p.interplm``. Atoms without a value keep their b-factor and get the neutral colour.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from interplm_plugins.core.activations import ChainActivations, Pipeline, chain_activations
from interplm_plugins.core.structure import StructureChain, chain_from_atoms, parse_resi, residue_letter
from interplm_plugins.errors import InterPLMError

#: Spectrum of the feature activation, 0 (inactive) to 1 (the feature's maximum on the training set).
DEFAULT_PALETTE = "blue_white_red"
#: Colour of atoms that have no activation: unmodelled context, ligands, water, nucleic acids.
NEUTRAL_COLOR = "grey60"
#: Atom property holding the activation where PyMOL supports atom properties.
PROPERTY = "interplm"
_DIRECT_RGB = 0x40000000  # PyMOL's colour index space for literal 0xRRGGBB colours


class ResidueKey(NamedTuple):
    """A residue of a PyMOL object: object name, chain id, residue label (``"52A"``, ``"-3"``)."""

    object: str
    chain: str
    resi: str


def residue_key(object_name: str, chain: str, resi: str) -> ResidueKey:
    """The key of an atom's residue, with the residue label spelled as core spells it."""
    try:
        number, icode = parse_resi(resi)
        label = f"{number}{icode}"
    except InterPLMError:  # pseudoatoms and odd ligands: they match no protein residue anyway
        label = str(resi)
    return ResidueKey(object_name, chain.strip(), label)


@dataclass
class SelectedChain:
    """A protein chain of a PyMOL object, its activations, and which of its residues are selected."""

    object: str
    activations: ChainActivations
    selected: np.ndarray  # indices into chain.residues

    @property
    def chain(self) -> StructureChain:
        return self.activations.chain

    def key(self, index: int) -> ResidueKey:
        residue = self.chain.residues[index]
        return ResidueKey(self.object, residue.chain, residue.label)


def _check_selection(selection: str, _self) -> None:
    from pymol import CmdException

    try:
        count = _self.count_atoms(f"({selection})")
    except CmdException:
        raise InterPLMError(f"invalid selection {selection!r}") from None
    if count == 0:
        raise InterPLMError(f"selection {selection!r} has no atoms")


def object_chains(object_name: str, _self) -> list[StructureChain]:
    """The protein chains of one PyMOL object, residues in the order of the file it came from."""
    rows: list[tuple] = []
    _self.iterate(f"%{object_name}", "rows.append((rank, chain, resi, resn, type == 'HETATM'))", space={"rows": rows})
    rows.sort(key=lambda row: row[0])
    # Non-amino-acid atoms would be dropped by chain_from_atoms anyway; dropping them here also
    # keeps a ligand with an unusual residue number from failing the whole object.
    return chain_from_atoms(row[1:] for row in rows if residue_letter(row[3], row[4]) is not None)


def selected_chains(pipeline: Pipeline, selection: str, reference: str | None = None, *, _self) -> list[SelectedChain]:
    """Activations of every protein chain that has a residue in ``selection``.

    With ``reference`` (a full-length sequence) each chain is aligned to it and the reference is
    embedded, so the structure's residues get the whole protein's context.
    """
    _check_selection(selection, _self)
    atoms: list[tuple[str, str, str]] = []
    _self.iterate(f"({selection})", "atoms.append((model, chain, resi))", space={"atoms": atoms})
    selected_keys = {residue_key(*atom) for atom in atoms}
    objects = dict.fromkeys(model for model, _, _ in atoms)  # in PyMOL's object order, once each
    result = []
    for name in objects:
        for chain in object_chains(name, _self):
            indices = [i for i, r in enumerate(chain.residues) if ResidueKey(name, r.chain, r.label) in selected_keys]
            if indices:
                acts = chain_activations(pipeline, chain, reference=reference, source=name)
                result.append(SelectedChain(name, acts, np.asarray(indices, dtype=int)))
    if not result:
        raise InterPLMError(f"selection {selection!r} has no protein residues (only ligands, water or nucleic acids)")
    return result


def palette_rgb(palette: str, _self) -> np.ndarray:
    """The colours of a PyMOL spectrum palette (``blue_white_red``, ``rainbow``, ...) or of a
    ``_``/space-separated list of colour names, as ``[n, 3]`` floats in 0..1."""
    from pymol.constants_palette import palette_dict

    name = str(palette).strip()
    if name in palette_dict:
        prefix, digits, first, last = palette_dict[name]
        step = 1 if last >= first else -1
        names = [f"{prefix}{i:0{digits}d}" for i in range(first, last + step, step)]
    else:
        names = name.replace("_", " ").split()
    unknown = [n for n in names if _self.get_color_index(n) < 0]
    if len(names) < 2 or unknown:
        raise InterPLMError(
            f"unknown palette {name!r}: use a PyMOL spectrum palette (blue_white_red, blue_red, rainbow, ...: "
            "see `help spectrum`) or two or more colour names joined by _ (e.g. white_red, grey90_orange_red)"
        )
    return np.array([_self.get_color_tuple(n) for n in names], dtype=np.float64)


def value_colors(values: np.ndarray, rgb: np.ndarray) -> np.ndarray:
    """PyMOL colour indices (direct RGB) of ``values`` in 0..1 along the palette, linearly interpolated."""
    position = np.clip(np.asarray(values, dtype=np.float64), 0.0, 1.0) * (len(rgb) - 1)
    low = np.minimum(position.astype(int), len(rgb) - 2)
    frac = (position - low)[:, None]
    colors = rgb[low] * (1.0 - frac) + rgb[low + 1] * frac
    channels = np.clip(np.round(colors * 255), 0, 255).astype(np.int64)
    return _DIRECT_RGB + (channels[:, 0] << 16) + (channels[:, 1] << 8) + channels[:, 2]


def supports_properties(_self) -> bool:
    """Whether this PyMOL has atom properties (``p.NAME``); open-source PyMOL has not."""
    from pymol import IncentiveOnlyException

    try:
        _self.iterate("first all", f"p.{PROPERTY}")
    except IncentiveOnlyException:
        return False
    return True


def paint(selection: str, values: dict[ResidueKey, float], rgb: np.ndarray, _self) -> None:
    """Write ``values`` into the b-factors (and ``p.interplm``) of the selected atoms and colour them.

    Atoms of residues without a value keep their b-factor, lose ``p.interplm`` and get
    :data:`NEUTRAL_COLOR`.
    """
    keys = list(values)
    colors = dict(zip(keys, value_colors(np.array([values[k] for k in keys]), rgb).tolist())) if keys else {}
    neutral = _self.get_color_index(NEUTRAL_COLOR)

    def b_and_color(model: str, chain: str, resi: str, b: float) -> tuple[float, int]:
        key = residue_key(model, chain, resi)
        return (values[key], colors[key]) if key in values else (b, neutral)

    space = {"b_and_color": b_and_color, "value": lambda model, chain, resi: values.get(residue_key(model, chain, resi))}
    _self.alter(f"({selection})", "b, color = b_and_color(model, chain, resi, b)", space=space)
    if supports_properties(_self):
        _self.alter(f"({selection})", f"p.{PROPERTY} = value(model, chain, resi)", space=space)
    _self.recolor(f"({selection})")
