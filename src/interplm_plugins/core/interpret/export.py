"""Per-residue SAE activations for any viewer: a TSV table, a PDB/mmCIF with them in the B-factor column,
and a ChimeraX attribute-assignment file (``.defattr``).

The table has one row per protein residue of each chain (:func:`~interplm_plugins.core.inputs.structure.read_structure`'s
rules) and one column ``interplm_<N>`` per feature; a residue that maps to no embedded position (``--uniprot``
alignment gaps) has an empty value. In the PDB/mmCIF copy every atom of a residue carries the residue's
activation as its B-factor; atoms with no value (ligands, water, unaligned residues) get 0. The ``.defattr``
file defines one residue attribute per feature, ``interplm_<N>``, so in ChimeraX::

    open x.pdb
    open x.interplm.defattr
    color byattribute interplm_812 palette ^RdBu

colours as ``interplm color x.pdb --feature 812`` does, without a plugin. Residues without a value are
left out of the ``.defattr`` file (ChimeraX then leaves them unassigned).
"""

from __future__ import annotations

import io
import math
import os
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from interplm_plugins.core.atomic import atomic_path, write_text_atomic
from interplm_plugins.core.inputs.sequences import ProteinRecord
from interplm_plugins.core.inputs.structure import read_structure
from interplm_plugins.core.interpret.chains import ChainActivations, chains_with_references
from interplm_plugins.core.interpret.pipeline import Pipeline
from interplm_plugins.errors import InterPLMError

ATTRIBUTE_PREFIX = "interplm_"
ID_COLUMNS = ("structure", "chain", "resi", "icode", "resn", "aa", "position")
FORMATS = ("tsv", "pdb", "defattr")


def attribute_name(feature: int) -> str:
    """The column / ChimeraX attribute holding ``feature``'s activation: ``interplm_812``."""
    return f"{ATTRIBUTE_PREFIX}{int(feature)}"


def structure_activations(
    pipeline: Pipeline, path: str | os.PathLike, references: Sequence[ProteinRecord] | None = None, chain: str | None = None
) -> tuple[list[ChainActivations], str | None]:
    """Activations of every protein chain of a structure file (or of ``chain`` only), each chain aligned to
    the reference it matches (:func:`~interplm_plugins.core.interpret.chains.chains_with_references`), and the
    line saying which matched (None without references)."""
    chains = read_structure(path)
    if chain is not None:
        chains = [c for c in chains if c.chain_id == chain]
        if not chains:
            raise InterPLMError(f"no protein chain {chain!r}", file=path)
    return chains_with_references(pipeline, chains, references, path)


def activation_table(named_chains: Iterable[tuple[str, ChainActivations]], features: Sequence[int]) -> pd.DataFrame:
    """One row per residue of each ``(structure name, chain activations)``; columns :data:`ID_COLUMNS` and
    ``interplm_<N>`` per feature (NaN where a residue has no value)."""
    rows: list[dict] = []
    for name, acts in named_chains:
        values = {f: acts.feature_values(f) for f in features}
        for index, residue in enumerate(acts.chain.residues):
            row = {"structure": name, "chain": residue.chain, "resi": residue.resi, "icode": residue.icode, "resn": residue.resn,
                   "aa": residue.one_letter, "position": int(acts.positions[index]) + 1 if acts.positions[index] >= 0 else 0}  # fmt: skip
            row.update({attribute_name(f): float(values[f][index]) for f in features})
            rows.append(row)
    return pd.DataFrame(rows, columns=[*ID_COLUMNS, *(attribute_name(f) for f in features)])


def feature_columns(table: pd.DataFrame) -> list[str]:
    return [c for c in table.columns if c.startswith(ATTRIBUTE_PREFIX)]


def write_tsv(table: pd.DataFrame, path: str | os.PathLike) -> Path:
    """The table as TSV (``position`` is 1-based in the embedded sequence, 0 when unmapped; empty = no value)."""
    with atomic_path(path) as tmp:
        table.to_csv(tmp, sep="\t", index=False, float_format="%.4f", na_rep="")
    return Path(path)


def defattr_text(table: pd.DataFrame, title: str = "") -> str:
    """ChimeraX attribute-assignment text: per feature column, a residue attribute block (``/A:52B`` specs)."""
    lines = [f"# interplm-plugins: SAE feature activations per residue{(' of ' + title) if title else ''}"]
    for column in feature_columns(table):
        lines += [f"attribute: {column}", "match mode: 1-to-1", "recipient: residues"]
        for row in table.itertuples(index=False):
            value = getattr(row, column)
            if not math.isnan(value):
                lines.append(f"\t/{row.chain}:{row.resi}{row.icode}\t{value:.4f}")
    return "\n".join(lines) + "\n"


def write_defattr(table: pd.DataFrame, path: str | os.PathLike, title: str = "") -> Path:
    write_text_atomic(Path(path), defattr_text(table, title))
    return Path(path)


def _structure_text(path: Path) -> tuple[str, bool]:
    """The file's text and whether it is mmCIF (by content, as :func:`read_structure` decides)."""
    from interplm_plugins.core.inputs.structure import _is_mmcif, _read_text

    text = _read_text(path)
    return text, _is_mmcif(text)


def write_bfactor_structure(source: str | os.PathLike, table: pd.DataFrame, column: str, path: str | os.PathLike) -> Path:
    """A copy of structure ``source`` with ``table[column]`` as every atom's B-factor (0 where no value);
    mmCIF in, mmCIF out; PDB otherwise (Biopython's writers)."""
    from Bio.PDB import MMCIFIO, PDBIO, MMCIFParser, PDBParser

    text, mmcif = _structure_text(Path(source))
    structure = (MMCIFParser(QUIET=True) if mmcif else PDBParser(QUIET=True)).get_structure(Path(source).stem, io.StringIO(text))
    values = {(r.chain, int(r.resi), r.icode): getattr(r, column) for r in table.itertuples(index=False)}
    for atom in structure.get_atoms():
        residue = atom.get_parent()
        _, number, icode = residue.id
        value = values.get((residue.get_parent().id.strip(), int(number), icode.strip().upper()), np.nan)
        atom.set_bfactor(0.0 if np.isnan(value) else round(float(value), 4))
    writer = MMCIFIO() if mmcif else PDBIO()
    writer.set_structure(structure)
    with atomic_path(path) as tmp:
        writer.save(str(tmp))
    return Path(path)


def export_structure(pipeline: Pipeline, structure: str | os.PathLike, features: Sequence[int], out_dir: str | os.PathLike,
                     references: Sequence[ProteinRecord] | None = None, chain: str | None = None,
                     formats: Sequence[str] = FORMATS) -> tuple[list[Path], str | None]:
    """Write ``<stem>.interplm.tsv``, ``<stem>.interplm_<N>.pdb`` (``.cif`` for mmCIF input) per feature and
    ``<stem>.interplm.defattr`` into ``out_dir``. With ``references`` (one per protein of a complex) each
    chain is aligned to the one it matches; the others get no values. Returns the paths written and the
    line saying which chain matched which reference (None without references)."""
    unknown = sorted(set(formats) - set(FORMATS))
    if unknown:
        raise InterPLMError(f"unknown export format(s) {', '.join(unknown)} (choose from {', '.join(FORMATS)})")
    features = [pipeline.check_feature(f) for f in features]
    if not features:
        raise InterPLMError("name at least one feature to export")
    structure = Path(structure)
    chains, matched = structure_activations(pipeline, structure, references, chain)
    table = activation_table(((structure.name, acts) for acts in chains), features)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = structure.name.removesuffix(".gz").rsplit(".", 1)[0]
    written = []
    if "tsv" in formats:
        written.append(write_tsv(table, out_dir / f"{stem}.interplm.tsv"))
    if "pdb" in formats:
        suffix = ".cif" if _structure_text(structure)[1] else ".pdb"
        written += [write_bfactor_structure(structure, table, c, out_dir / f"{stem}.{c}{suffix}") for c in feature_columns(table)]
    if "defattr" in formats:
        written.append(write_defattr(table, out_dir / f"{stem}.interplm.defattr", title=structure.name))
    return written, matched
