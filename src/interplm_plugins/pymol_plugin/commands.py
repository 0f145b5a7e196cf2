"""The ``interplm`` PyMOL command and its subcommands (also the plugin's Python API).

Each subcommand is a plain function taking PyMOL-style arguments (strings are converted), the
session pipeline by default (``interplm_plugins.session.current_pipeline()``) and ``_self`` (the PyMOL
``cmd`` to act on: the global one, or a ``pymol2.PyMOL().cmd`` for headless rendering).
:func:`interplm` dispatches ``interplm SUBCOMMAND ...`` typed at the prompt or in a ``.pml`` script
and turns the project's :class:`InterPLMError` into one line and a ``pymol.CmdException``.
"""

from __future__ import annotations

import inspect
import os
import re
from typing import Any, Callable, Mapping

import numpy as np
import pandas as pd
from pymol import CmdException, cmd
from pymol.shortcut import Shortcut

from interplm_plugins.core.database.schema import ConceptMatch, FeatureDatabase, FeatureHit, concept_label, concept_match_lines
from interplm_plugins.core.inputs.references import read_references
from interplm_plugins.core.inputs.sequences import ProteinRecord
from interplm_plugins.core.inputs.structure import STANDARD_AMINO_ACIDS
from interplm_plugins.core.interpret.colorscale import DEFAULT_SCALE, SCALES, check_scale, scale_legend, unit_values
from interplm_plugins.core.interpret.mutate import largest_drops, mutant_letters, scan_chain, write_scan_table
from interplm_plugins.core.interpret.pipeline import Pipeline
from interplm_plugins.errors import InterPLMError
from interplm_plugins.pymol_plugin.mapping import DEFAULT_PALETTE, check_selection, paint, palette_rgb, reference_note, restore as restore_atoms, selected_chains
from interplm_plugins.session import current_pipeline, loaded_pipeline, use_pipeline


def _as_int(value: Any, name: str) -> int:
    try:
        return int(str(value).strip()) if not isinstance(value, (int, np.integer)) else int(value)
    except ValueError:
        raise InterPLMError(f"{name} must be an integer, got {value!r}") from None


def _database_or_error(pipeline: Pipeline):
    if pipeline.database is None:
        raise InterPLMError("this pipeline has no feature database: set one with `interplm use db PATH`")
    return pipeline.database


def _concept_text(match: ConceptMatch | None) -> str:
    return concept_label(match)


def best_concept(pipeline: Pipeline, feature: int) -> ConceptMatch | None:
    """The concept ``feature`` detects best in the pipeline's database, or None."""
    db = pipeline.database
    return db.best_concepts([feature]).get(feature) if db is not None else None


def _positive_int(value: Any, name: str) -> int:
    number = _as_int(value, name)
    if number < 1:
        raise InterPLMError(f"{name} must be 1 or more, got {number}")
    return number


def _references(uniprot: str | None) -> list[ProteinRecord] | None:
    return read_references(uniprot, "uniprot") if uniprot else None


def color(selection: str = "all", feature: Any = None, palette: str = DEFAULT_PALETTE, uniprot: str | None = None,
          scale: str = DEFAULT_SCALE, *, pipeline: Pipeline | None = None, sources: Mapping[str, str] | None = None,
          _self=cmd) -> dict[str, Any]:
    """Colour the protein residues of ``selection`` by one SAE feature's activation.

    Every protein chain in the selection is embedded (the cached activations are reused on a
    recolour); the activation goes into each atom's b-factor (the original is kept for
    ``interplm restore``), colours follow ``palette`` from 0 to 1 of the feature (``scale=chain``:
    to each chain's maximum), residues without a value get the neutral colour. ``uniprot`` (a
    FASTA file with one record per protein, or a sequence) is embedded instead, each chain aligned
    to the record it matches. ``sources`` names each object's file in errors. Returns per-residue
    values and a summary.
    """
    pipeline = pipeline or current_pipeline()
    if feature is None or str(feature).strip() == "":
        raise InterPLMError("which feature? use `interplm color SELECTION, feature=N`")
    feature = pipeline.check_feature(_as_int(feature, "feature"))
    rgb = palette_rgb(palette, _self)  # checked before the model runs
    scale = check_scale(scale)
    chains = selected_chains(pipeline, selection, _references(uniprot), sources=sources, _self=_self)

    residues, valued, shown, tops = [], {}, {}, []
    for sc in chains:
        values = sc.activations.feature_values(feature)
        unit, top = unit_values(values, scale)
        tops.append(top)
        for index in sc.selected.tolist():
            residue = sc.chain.residues[index]
            value = None if np.isnan(values[index]) else float(values[index])
            if value is not None:
                valued[sc.key(index)], shown[sc.key(index)] = value, float(unit[index])
            residues.append({"object": sc.object, "chain": residue.chain, "resi": residue.label, "resn": residue.resn,
                             "position": int(sc.activations.positions[index]), "value": value})  # fmt: skip
    paint(selection, valued, rgb, _self, shown=shown)

    peak = max(valued, key=valued.get) if valued else None
    concept = best_concept(pipeline, feature)
    summary = {
        "feature": feature,
        "best_concept": concept.concept if concept else None,
        "best_concept_label": concept_label(concept),
        "palette": palette,
        "scale": scale,
        "scale_max": tops,
        "residues": residues,
        "mapped": len(valued),
        "unmapped": len(residues) - len(valued),
        "max": valued[peak] if valued else None,
        "mean": float(np.mean(list(valued.values()))) if valued else None,
        "peak": "/{}//{}/{}".format(*peak[:3]) if valued else None,  # PyMOL's /object//chain/resi
        "references": reference_note(chains),
    }
    where = f", max {summary['max']:.3f} at {summary['peak']}, mean {summary['mean']:.3f}" if valued else ""
    print(f" interplm: feature {feature} [{_concept_text(concept)}] on {len(valued)} residues of {len(chains)} chain(s){where}")
    print(f" interplm: colours {scale_legend(scale, tops)}, {palette}; grey: no value")
    if summary["references"]:
        print(f" interplm: {summary['references']}")
    return summary


def top(selection: str | None = None, k: Any = 10, uniprot: str | None = None, *, pipeline: Pipeline | None = None,
        _self=cmd) -> list[FeatureHit]:
    """The ``k`` features most active (highest mean) on the selected residues, with their best concept.

    ``selection`` defaults to ``sele`` (PyMOL's clicked residues) when it exists, else ``all``.
    Prints a table and returns :class:`~interplm_plugins.core.database.schema.FeatureHit` objects.
    """
    pipeline = pipeline or current_pipeline()
    k = _positive_int(k, "k")
    if selection is None:
        selection = "sele" if "sele" in _self.get_names("selections") else "all"
    chains = selected_chains(pipeline, selection, _references(uniprot), _self=_self)
    vectors = np.concatenate([sc.activations.residue_vectors(sc.selected) for sc in chains])
    if len(vectors) == 0:
        raise InterPLMError(f"no residue of {selection!r} aligns to the reference sequence")
    db = pipeline.database
    if db is not None:
        hits = db.features_active_at(vectors, range(len(vectors)), k=k)
    else:  # no database: rank alone, without concepts
        means = vectors.mean(axis=0)
        order = [int(f) for f in np.argsort(-means, kind="stable")[:k] if means[f] > 0]
        hits = [FeatureHit(f, float(means[f])) for f in order]
    print(f" interplm: top features on {len(vectors)} residues of {selection!r}")
    print(f" {'feature':>8}  {'mean':>6}  best concept")
    for hit in hits:
        print(f" {hit.feature:>8}  {hit.score:6.3f}  {_concept_text(hit.best_concept)}")
    if not hits:
        print(" (no feature is active on these residues)")
    return hits


def concept(name: str = "", selection: str = "all", k: Any = 5, palette: str = DEFAULT_PALETTE, uniprot: str | None = None,
            *, pipeline: Pipeline | None = None, _self=cmd) -> list[ConceptMatch]:
    """Features that detect a Swiss-Prot concept (``Zinc finger``, ``Binding site: ATP``; a name or
    part of one); colours ``selection`` by the best. Returns the matches, best validation F1 first."""
    pipeline = pipeline or current_pipeline()
    name = str(name).strip()
    if not name:
        raise InterPLMError("which concept? use `interplm concept NAME [, selection]`")
    db = _database_or_error(pipeline)
    matches = db.features_for_concept(name, k=_positive_int(k, "k"))
    if not matches:
        known = db.matching_concepts(name)
        hint = (
            f"concepts named like it have no feature with validation F1 >= {db.concept_floor:g} ({', '.join(known[:5])})"
            if known else "no concept is named like it"
        )  # fmt: skip
        raise InterPLMError(f"no feature matches concept {name!r}: {hint}")
    print(f" interplm: features for concept {name!r} (validation F1 >= {db.concept_floor:g})")
    for line in concept_match_lines(matches):
        print(f" {line}")
    color(selection, matches[0].feature, palette, uniprot, pipeline=pipeline, _self=_self)
    return matches


_USE_PARTS = {"model": "model", "plm": "model", "sae": "sae", "db": "database", "database": "database"}


def use(what: str = "", path: str | None = None, model: str | None = None, sae: str | None = None, db: str | None = None,
        allow_mismatch: str | bool = False, *, _self=cmd) -> dict[str, str]:
    """Set this session's model, SAE or feature database (``use sae PATH``; several at once with
    ``use model=PATH, sae=PATH, db=PATH``), or all back to the embedded demo (``use demo``).
    Loads and checks at once (an SAE made for another model, or a database built with another SAE,
    is refused unless ``allow_mismatch=1``), prints what is in use."""
    what = str(what).strip()
    if " " in what and path is None:  # "use sae /some/path" typed as one argument
        what, path = what.split(None, 1)
    what = what.lower()
    parts = {"model": model, "sae": sae, "database": db}
    if what in ("demo", "default"):
        parts = dict.fromkeys(parts, "demo")
    elif what in _USE_PARTS and path:
        parts[_USE_PARTS[what]] = str(path).strip()
    elif what or not any(parts.values()):
        raise InterPLMError("usage: interplm use model|sae|db PATH, interplm use model=PATH, sae=PATH, db=PATH, or interplm use demo")
    if parts["database"] and parts["database"].lower() not in ("demo", "default"):
        FeatureDatabase(parts["database"]).close()  # the pipeline opens it lazily: fail now, before the switch
    allowed = allow_mismatch if isinstance(allow_mismatch, bool) else str(allow_mismatch).strip().lower() in ("1", "true", "yes", "on")
    pipeline = use_pipeline(**parts, allow_mismatch=allowed)
    return info(pipeline=pipeline, _self=_self)


def mutate(selection: str = "all", feature: Any = None, to: str = "all", uniprot: str | None = None, out: str | None = None,
           palette: str = DEFAULT_PALETTE, *, pipeline: Pipeline | None = None, _self=cmd) -> pd.DataFrame:
    """In-silico mutation scan: every single-residue mutant of the selected residues (to all 19
    other amino acids, or ``to=ALA``, ``to=AG``) embedded with its whole chain, and the change of
    ``feature`` at the mutated residue and summed over the chain. Colours the selection by each
    residue's largest drop (b-factor = the drop; grey: not scanned), prints the strongest drops
    and writes the table to ``out`` (default ``interplm_mutate_feature<N>.csv``). Returns it."""
    pipeline = pipeline or current_pipeline()
    if feature is None or str(feature).strip() == "":
        raise InterPLMError("which feature? use `interplm mutate SELECTION, feature=N [, to=all|ALA]`")
    feature = pipeline.check_feature(_as_int(feature, "feature"))
    rgb = palette_rgb(palette, _self)
    mutant_letters(to)  # checked before the model runs
    chains = selected_chains(pipeline, selection, _references(uniprot), _self=_self)
    tables, drops = [], {}
    for sc in chains:
        table = scan_chain(pipeline, sc.activations, feature, sc.selected, to)
        keys = {(r.chain, r.label): sc.key(i) for i, r in ((i, sc.chain.residues[i]) for i in sc.selected.tolist())}
        for (chain_id, resi), drop in largest_drops(table, by=("chain", "resi")).items():
            drops[keys[(chain_id, resi)]] = drop
        tables.append(table.assign(object=sc.object))
    table = pd.concat(tables, ignore_index=True)
    paint(selection, drops, rgb, _self, shown={k: min(v, 1.0) for k, v in drops.items()})
    path = write_scan_table(table, out or f"interplm_mutate_feature{feature}.csv")
    print(f" interplm: feature {feature}: {len(table)} mutants of {len(drops)} residues; coloured by the largest drop (b-factor); table {path}")
    print(f" {'residue':>14}  {'mutant':>6}  {'before':>6}  {'after':>6}  {'chain sum change':>16}")
    for row in table.nsmallest(10, "site_change").itertuples():
        print(f" {row.object + '/' + row.chain + '/' + row.resi:>14}  {row.wild_type}->{row.mutant:<3}  {row.site_before:6.3f}  {row.site_after:6.3f}  {row.chain_change:16.3f}")
    return table


def restore(selection: str = "all", *, _self=cmd) -> int:
    """Give the atoms of ``selection`` back the b-factors (AlphaFold's pLDDT, crystallographic B)
    and colours they had before ``interplm`` coloured them; returns how many atoms got them back."""
    check_selection(selection, _self)
    count = restore_atoms(selection, _self)
    print(f" interplm: restored the original b-factors and colours of {count} atoms" + ("" if count else " (none was coloured by interplm)"))
    return count


def info(*, pipeline: Pipeline | None = None, _self=cmd) -> dict[str, str]:
    """Print and return this session's model, layer, SAE and database."""
    pipeline = pipeline or current_pipeline()
    described = pipeline.describe()
    described["cache"] = f"{pipeline.cache.hits} hits, {pipeline.cache.misses} misses"
    for key, value in described.items():
        print(f" interplm {key:>9}: {value}")
    return described


def export(selection: str = "all", feature: Any = None, out: str = "interplm_export", uniprot: str | None = None,
           *, pipeline: Pipeline | None = None, _self=cmd) -> list[str]:
    """Write the per-residue activations of the selection's protein chains for other viewers (as
    ``interplm export`` on the command line; core/interpret/export.py): ``OUT.interplm.tsv``, ``OUT.interplm.defattr``
    (ChimeraX) and, per object and feature, ``OUT.OBJECT.interplm_N.pdb`` with the activation as B-factor.
    ``feature`` is one index or several separated by spaces or ``+``. Returns the paths written."""
    from interplm_plugins.core.atomic import atomic_path
    from interplm_plugins.core.interpret.export import activation_table, attribute_name, write_defattr, write_tsv
    from interplm_plugins.pymol_plugin.mapping import ATOM_FIELDS, ResidueKey

    pipeline = pipeline or current_pipeline()
    words = str(feature or "").replace("+", " ").split()
    if not words:
        raise InterPLMError("which feature(s)? use `interplm export SELECTION, feature=N [M ...], out=PREFIX`")
    features = [pipeline.check_feature(_as_int(word, "feature")) for word in words]
    chains = selected_chains(pipeline, selection, _references(uniprot), _self=_self)
    table = activation_table(((sc.object, sc.activations) for sc in chains), features)
    written = [write_tsv(table, f"{out}.interplm.tsv"), write_defattr(table, f"{out}.interplm.defattr", title=selection)]
    for name in dict.fromkeys(sc.object for sc in chains):
        rows = table[table["structure"] == name]
        for f in features:
            values = {ResidueKey(name, r.chain, f"{r.resi}{r.icode}", r.resn): getattr(r, attribute_name(f)) for r in rows.itertuples(index=False)}
            copy = _self.get_unused_name("_interplm_export")
            _self.create(copy, f"%{name}")
            # the copy's atoms still name the original object in `values`
            _self.alter(f"%{copy}", f"b = lookup({ATOM_FIELDS.split(', ', 1)[1]})",
                        space={"lookup": lambda *atom: _b_value(values, name, *atom)})  # fmt: skip
            path = f"{out}.{name}.{attribute_name(f)}.pdb"
            with atomic_path(path) as tmp:
                _self.save(str(tmp), copy, format="pdb")
            _self.delete(copy)
            written.append(path)
    paths = [str(p) for p in written]
    print(" interplm: wrote " + ", ".join(paths))
    return paths


def _b_value(values: dict, name: str, chain: str, resi: str, resn: str, hetero: bool) -> float:
    """The B-factor an exported atom gets: its residue's activation, 0 where it has none (water, ligands)."""
    from interplm_plugins.pymol_plugin.mapping import residue_key

    value = values.get(residue_key(name, chain, resi, resn, hetero))
    return 0.0 if value is None or np.isnan(value) else round(float(value), 4)


SUBCOMMANDS: dict[str, Callable[..., Any]] = {
    "color": color, "top": top, "concept": concept, "mutate": mutate, "restore": restore, "export": export, "use": use, "info": info,
}  # fmt: skip
USAGE = {
    "color": "interplm color [selection], feature=N [, palette=white_red] [, uniprot=FASTA-or-sequence] [, scale=feature|chain]",
    "top": "interplm top [selection] [, k=10] [, uniprot=FASTA-or-sequence]",
    "concept": "interplm concept NAME [, selection] [, k=5] [, palette=...] [, uniprot=...]",
    "mutate": "interplm mutate [selection], feature=N [, to=all|ALA|AG] [, uniprot=...] [, out=table.csv] [, palette=...]",
    "restore": "interplm restore [selection]",
    "use": "interplm use model|sae|db PATH  (or: interplm use model=PATH, sae=PATH, db=PATH [, allow_mismatch=1]; interplm use demo)",
    "info": "interplm info",
    "export": "interplm export [selection], feature=N [M ...] [, out=PREFIX] [, uniprot=FASTA-or-sequence]",
}


_KEYWORD = re.compile(r"^([A-Za-z_]\w*)\s*=(.*)$")


def _public_parameters(function: Callable) -> list[str]:
    return [n for n, p in inspect.signature(function).parameters.items() if p.kind is p.POSITIONAL_OR_KEYWORD]


def interplm(action: str = "info", *args: Any, _self=cmd, **kwargs: Any) -> Any:
    """
DESCRIPTION

    Sparse-autoencoder features of the session's protein language model (InterPLM) on structures.

USAGE

    interplm color [selection], feature=N [, palette=white_red] [, uniprot=FASTA] [, scale=feature|chain]
    interplm top [selection] [, k=10] [, uniprot=FASTA]
    interplm concept NAME [, selection] [, k=5] [, palette=...] [, uniprot=FASTA]
    interplm mutate [selection], feature=N [, to=all|ALA|AG] [, uniprot=FASTA] [, out=table.csv] [, palette=...]
    interplm restore [selection]
    interplm use model|sae|db PATH
    interplm use model=PATH, sae=PATH, db=PATH [, allow_mismatch=1]
    interplm use demo
    interplm info
    interplm export [selection], feature=N [M ...] [, out=PREFIX]

ARGUMENTS

    selection = the residues to colour, rank or mutate; their whole protein chains are embedded
                (default all; top: PyMOL's sele when it exists)
    feature = SAE feature index (0 to the number of features - 1)
    palette = PyMOL spectrum palette (see "help spectrum") or colours joined by _, from 0 to 1
              (default white_red: white where a sparse feature is off, red at its maximum)
    uniprot = full-length sequence(s): a FASTA file (one record per protein of a complex) or one
              sequence; each chain is aligned to the record it matches (identity >= 90 % over >= 50 %
              of its selected residues) and that is embedded; chains matching none stay grey
    scale = feature: colours over 0..1 of the feature's normalised activation (default, comparable
            across chains and structures); chain: 0..each chain's own maximum
    k = how many features to list (1 or more; top 10, concept 5)
    NAME = a Swiss-Prot concept or part of one (Zinc finger, Binding site: ATP)
    to = amino acids to mutate to: all (the 19 others), one-letter codes (A, AG) or ALA,GLY
    out = mutate: the scan's table (.csv, or .tsv; default interplm_mutate_feature<N>.csv);
          export: the prefix of the files written (TSV, ChimeraX .defattr, a PDB per object and feature)
    model, sae, db = a model (hub name, .pt path, demo), an SAE (.safetensors, ae.pt), a feature
                     database (.sqlite) for the session; PATH after model|sae|db likewise
    allow_mismatch = 1: use an SAE recorded for another PLM, or a database of another SAE, with a
                     warning instead of the error (docs/SAE.md); for this choice only

NOTES

    Activations go into the b-factors (and p.interplm where PyMOL has atom properties), so
    "spectrum b" works afterwards; residues without a value are grey. The original b-factors and
    colours (AlphaFold's pLDDT) are kept: "interplm restore" puts them back. Activations are cached
    per sequence, so colouring by another feature does not run the model again. "mutate" writes
    the largest drop of the feature over a residue's mutants into its b-factor.

EXAMPLES

    interplm color 1hpv and chain A, feature=12
    interplm color 3sn6 and chain R and resi 1002-1161, feature=12, uniprot=P00720.fasta
    interplm top sele, k=5
    interplm concept Binding site: ATP, 1hpv
    interplm mutate 1hpv and chain A and resi 25-30, feature=12, to=all
    interplm restore af_model
    interplm use sae /data/sae.safetensors
    """
    word, _, rest = str(action).strip().partition(" ")
    word = word.lower()
    if word not in SUBCOMMANDS:
        raise CmdException(f"interplm: unknown subcommand {word!r}; one of {', '.join(SUBCOMMANDS)}")
    function = SUBCOMMANDS[word]
    # "interplm color 1hpv and chain A, feature=3" arrives as action="color 1hpv and chain A", and
    # "interplm use model=PATH, sae=PATH" as action="use model=PATH": split the first word off
    rest = rest.strip()
    names = _public_parameters(function)
    keyword = _KEYWORD.match(rest)
    if keyword and keyword.group(1) in names:  # not a selection such as "b = 0"
        kwargs = {keyword.group(1): keyword.group(2).strip(), **kwargs}
        rest = ""
    positional = ((rest,) if rest else ()) + args
    unknown = [key for key in kwargs if key not in names]
    if unknown or len(positional) > len(names):
        what = f"unknown argument {unknown[0]!r}" if unknown else "too many arguments"
        raise CmdException(f"interplm {word}: {what}; usage: {USAGE[word]}")
    try:
        return function(*positional, **kwargs, _self=_self)
    except InterPLMError as err:
        raise CmdException(f"interplm {word}: {err}") from None


_KEYWORDS = sorted({f"{name}=" for f in SUBCOMMANDS.values() for name in _public_parameters(f)} - {"selection=", "what=", "path=", "name="})
_FASTA_SUFFIXES = (".fasta", ".fa", ".faa", ".fas")
_PIPELINE_SUFFIXES = (".safetensors", ".pt", ".sqlite", ".db")


def _files(suffixes: tuple[str, ...], folder: str = ".") -> list[str]:
    try:
        return sorted(e.name for e in os.scandir(folder) if e.is_file() and e.name.lower().endswith(suffixes))
    except OSError:
        return []


def first_argument_words(_self=cmd) -> list[str]:
    """What the first argument may be: a subcommand, a loaded object or selection, a concept of the
    session's database (``interplm concept NAME``) or a model/SAE/database file (``interplm use``)."""
    words = list(SUBCOMMANDS) + list(_self.get_names("all")) + ["demo", "model=", "sae=", "db="]
    pipeline = loaded_pipeline()  # never load the model for a completion
    if pipeline is not None and pipeline.database is not None:
        words += pipeline.database.concept_names()
    return words + _files(_PIPELINE_SUFFIXES)


def keyword_words(_self=cmd) -> list[str]:
    """Completions after a comma: every keyword, with the values each takes (palettes, scales,
    amino acids, feature numbers of the loaded SAE, FASTA files here for ``uniprot=``)."""
    from pymol.constants_palette import palette_dict

    words = list(_KEYWORDS) + list(_self.get_names("all"))
    words += [f"palette={name}" for name in ["white_red", "white_blue", "grey90_orange_red", *palette_dict]]
    words += [f"scale={name}" for name in SCALES] + ["to=all"] + [f"to={name}" for name in STANDARD_AMINO_ACIDS]
    words += [f"uniprot={name}" for name in _files(_FASTA_SUFFIXES)]
    pipeline = loaded_pipeline()
    if pipeline is not None:
        words += [f"feature={f}" for f in range(pipeline.num_features)]
    return words


def register(_self=cmd) -> None:
    """Register ``interplm`` as a PyMOL command with completion of every argument."""
    _self.extend("interplm", interplm)
    _self.auto_arg[0]["interplm"] = [lambda: Shortcut(first_argument_words(_self)), "subcommand, selection, concept or file", " "]
    for position in range(1, min(len(_self.auto_arg), 6)):
        _self.auto_arg[position]["interplm"] = [lambda: Shortcut(keyword_words(_self)), "argument", ""]
