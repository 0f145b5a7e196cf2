"""PyMOL atoms to protein chains and back: which residue of which object gets which activation.

The residue rules are core's (:func:`interplm_plugins.core.inputs.structure.chain_from_atoms`), applied to
the atom table PyMOL holds, so a structure coloured in PyMOL maps exactly as ``read_structure`` maps
the file. PyMOL-specific points:

- each object is its own set of chains (two loaded copies of a structure are two proteins);
- PyMOL sorts atoms by chain and residue number; an atom's ``rank`` keeps the file's order, which is
  the order core reads residues in, so chains are rebuilt in rank order;
- the states of a multi-state object (NMR models, trajectories) share one atom table, so one value
  per atom holds for every state;
- a chain is embedded whole even when only part of it is selected (activations depend on the
  context), and only the selected residues are written.

Atoms are matched to chain residues on object, chain, residue number with insertion code and
residue name, and only atoms core's rules count as protein (:func:`residue_key`): a water or a free
amino acid numbered like a residue keeps its own values. Values go into the b-factor (so
``spectrum b`` and ``ramp`` keep working) and, where PyMOL has atom properties (Incentive PyMOL;
open-source PyMOL raises ``IncentiveOnlyException``), into ``p.interplm``. The first paint of an
atom remembers its b-factor and colour (pLDDT), which :func:`restore` puts back; atoms without a
value get that original b-factor and the neutral colour.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, NamedTuple, Sequence

import numpy as np

from interplm_plugins.core.inputs.references import ReferenceMatch, check_matches, match_chain
from interplm_plugins.core.inputs.sequences import ProteinRecord
from interplm_plugins.core.inputs.structure import StructureChain, chain_from_atoms, parse_resi, residue_letter
from interplm_plugins.core.interpret.chains import ChainActivations, chain_activations, matched_activations
from interplm_plugins.core.interpret.pipeline import Pipeline
from interplm_plugins.errors import InterPLMError

#: Spectrum of the feature activation, 0 (inactive: white, as most residues are for a sparse feature) to 1
#: (red: the feature's maximum on the training set).
DEFAULT_PALETTE = "white_red"
#: Colour of atoms that have no activation: unmodelled context, ligands, water, nucleic acids.
NEUTRAL_COLOR = "grey60"
#: Atom property holding the activation where PyMOL supports atom properties.
PROPERTY = "interplm"
_DIRECT_RGB = 0x40000000  # PyMOL's colour index space for literal 0xRRGGBB colours


class ResidueKey(NamedTuple):
    """A protein residue of a PyMOL object: object name, chain id, residue label (``"52A"``, ``"-3"``)
    and residue name, so a water or ligand numbered like a residue of the chain is not that residue."""

    object: str
    chain: str
    resi: str
    resn: str


#: The atom fields :func:`residue_key` reads, as a PyMOL ``iterate`` expression.
ATOM_FIELDS = "model, chain, resi, resn, type == 'HETATM'"


def residue_key(object_name: str, chain: str, resi: str, resn: str, hetero: bool) -> ResidueKey | None:
    """The key of an atom's residue (label spelled as core spells it), or ``None`` for atoms of no
    protein chain (water, ligands, a free amino acid as HETATM): core's residue rules decide."""
    if residue_letter(resn, hetero) is None:
        return None
    try:
        number, icode = parse_resi(resi)
    except InterPLMError:  # odd numbering: it matches no protein residue anyway
        return None
    return ResidueKey(object_name, chain.strip(), f"{number}{icode}", resn.strip().upper())


@dataclass
class SelectedChain:
    """A protein chain of a PyMOL object, its activations, and which of its residues are selected."""

    object: str
    activations: ChainActivations
    selected: np.ndarray  # indices into chain.residues
    match: ReferenceMatch | None = None  # the reference the chain was aligned to, with references

    @property
    def chain(self) -> StructureChain:
        return self.activations.chain

    def key(self, index: int) -> ResidueKey:
        residue = self.chain.residues[index]
        return ResidueKey(self.object, residue.chain, residue.label, residue.resn)


def check_selection(selection: str, _self) -> None:
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


def selected_chains(
    pipeline: Pipeline,
    selection: str,
    references: Sequence[ProteinRecord] | None = None,
    *,
    sources: Mapping[str, str] | None = None,
    _self,
) -> list[SelectedChain]:
    """Activations of every protein chain that has a residue in ``selection``.

    With ``references`` (full-length sequences) each chain is aligned to the one it matches best
    (:mod:`interplm_plugins.core.inputs.references`, counting its selected residues) and that is embedded,
    so the structure's residues get the whole protein's context; a chain matching none gets no
    values. ``sources`` names the file each object came from, for errors (default: the object).
    """
    check_selection(selection, _self)
    atoms: list[tuple] = []
    _self.iterate(f"({selection})", f"atoms.append(({ATOM_FIELDS}))", space={"atoms": atoms})
    selected_keys = {residue_key(*atom) for atom in atoms}
    objects = dict.fromkeys(atom[0] for atom in atoms)  # in PyMOL's object order, once each
    result = []
    for name in objects:
        source = (sources or {}).get(name, name)
        for chain in object_chains(name, _self):
            indices = [i for i, r in enumerate(chain.residues) if ResidueKey(name, r.chain, r.label, r.resn) in selected_keys]
            if not indices:
                continue
            if references:
                match = match_chain(chain, references, indices)
                result.append(SelectedChain(name, matched_activations(pipeline, chain, match), np.asarray(indices), match))
            else:
                result.append(SelectedChain(name, chain_activations(pipeline, chain, source=source), np.asarray(indices)))
    if not result:
        raise InterPLMError(f"selection {selection!r} has no protein residues (only ligands, water or nucleic acids)")
    if references:
        check_matches([sc.match for sc in result], source=", ".join(dict.fromkeys((sources or {}).get(n, n) for n in objects)))
    return result


def reference_note(chains: Sequence[SelectedChain]) -> str | None:
    """Which chain matched which reference (one line), or ``None`` without references."""
    matches = [sc.match for sc in chains if sc.match is not None]
    return check_matches(matches) if matches else None


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


#: Per PyMOL instance and atom, (original b-factor, original colour, b-factor written): what
#: ``interplm restore`` puts back. An atom whose b-factor is no longer the one written (the object
#: was reloaded or altered since) is taken as it is now.
_ORIGINALS: dict[int, dict[tuple, tuple[float, int, float]]] = {}
_ATOM_ID_FIELDS = "segi, name, alt, " + ATOM_FIELDS


def _atom_id(segi: str, name: str, alt: str, model: str, chain: str, resi: str, resn: str, hetero: bool) -> tuple:
    return (model, segi, chain, resi, resn, name, alt, hetero)


def _kept(originals: dict, atom_id: tuple, b: float) -> tuple[float, int] | None:
    """The atom's remembered original (b-factor, colour), if ``b`` is still the value written."""
    known = originals.get(atom_id)
    return (known[0], known[1]) if known is not None and abs(known[2] - b) <= 1e-4 * max(1.0, abs(b)) else None


def paint(selection: str, values: dict[ResidueKey, float], rgb: np.ndarray, _self, shown: dict[ResidueKey, float] | None = None) -> None:
    """Write ``values`` into the b-factors (and ``p.interplm``) of the selected atoms and colour
    them by ``shown`` (default ``values``: already scaled to 0..1) along ``rgb``.

    The first paint of an atom remembers its b-factor and colour (AlphaFold's pLDDT, say) for
    :func:`restore`; atoms of residues without a value get that original b-factor back, lose
    ``p.interplm`` and get :data:`NEUTRAL_COLOR`.
    """
    shown = values if shown is None else shown
    keys = list(shown)
    colors = dict(zip(keys, value_colors(np.array([shown[k] for k in keys]), rgb).tolist())) if keys else {}
    neutral = _self.get_color_index(NEUTRAL_COLOR)
    originals = _ORIGINALS.setdefault(id(_self), {})

    def b_and_color(b: float, color: int, *fields) -> tuple[float, int]:
        atom_id, key = _atom_id(*fields), residue_key(*fields[3:])
        old_b, old_color = _kept(originals, atom_id, b) or (b, color)
        new = (values[key], colors[key]) if key in values else (old_b, neutral)
        originals[atom_id] = (old_b, old_color, float(np.float32(new[0])))
        return new

    space = {"b_and_color": b_and_color, "value": lambda *atom: values.get(residue_key(*atom))}
    _self.alter(f"({selection})", f"b, color = b_and_color(b, color, {_ATOM_ID_FIELDS})", space=space)
    if supports_properties(_self):
        _self.alter(f"({selection})", f"p.{PROPERTY} = value({ATOM_FIELDS})", space=space)
    _self.recolor(f"({selection})")


def restore(selection: str, _self) -> int:
    """Put back the b-factors and colours the selected atoms had before ``interplm`` painted them;
    returns how many atoms were restored (atoms never painted, or changed since, are left alone)."""
    originals = _ORIGINALS.get(id(_self), {})
    restored = [0]

    def original(b: float, color: int, *fields) -> tuple[float, int]:
        atom_id = _atom_id(*fields)
        old = _kept(originals, atom_id, b)
        originals.pop(atom_id, None)
        restored[0] += old is not None
        return old or (b, color)

    _self.alter(f"({selection})", f"b, color = original(b, color, {_ATOM_ID_FIELDS})", space={"original": original})
    if supports_properties(_self):
        _self.alter(f"({selection})", f"p.{PROPERTY} = None")
    _self.recolor(f"({selection})")
    return restored[0]
