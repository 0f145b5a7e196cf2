"""The ``interplm`` PyMOL command and its subcommands (also the plugin's Python API).

Each subcommand is a plain function taking PyMOL-style arguments (strings are converted), the
session pipeline by default (``core.activations.current_pipeline()``) and ``_self`` (the PyMOL
``cmd`` to act on: the global one, or a ``pymol2.PyMOL().cmd`` for headless rendering).
:func:`interplm` dispatches ``interplm SUBCOMMAND ...`` typed at the prompt or in a ``.pml`` script
and turns the project's :class:`InterPLMError` into one line and a ``pymol.CmdException``.
"""

from __future__ import annotations

import inspect
import re
from typing import Any, Callable

import numpy as np
from pymol import CmdException, cmd
from pymol.shortcut import Shortcut

from interplm_plugins.core.activations import Pipeline, current_pipeline, use_pipeline
from interplm_plugins.core.database import ConceptMatch, FeatureDatabase, FeatureHit
from interplm_plugins.errors import InterPLMError
from interplm_plugins.core.sequences import read_reference_sequence
from interplm_plugins.pymol_plugin.mapping import DEFAULT_PALETTE, paint, palette_rgb, selected_chains


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
    return f"{match.concept} (F1 {match.f1:.2f})" if match else "-"


def best_concept(pipeline: Pipeline, feature: int) -> ConceptMatch | None:
    """The concept ``feature`` detects best in the pipeline's database, or None."""
    db = pipeline.database
    return db.best_concepts([feature]).get(feature) if db is not None else None


def color(selection: str = "all", feature: Any = None, palette: str = DEFAULT_PALETTE, uniprot: str | None = None,
          *, pipeline: Pipeline | None = None, _self=cmd) -> dict[str, Any]:
    """Colour the protein residues of ``selection`` by one SAE feature's activation.

    Every protein chain in the selection is embedded (the cached activations are reused on a
    recolour); the activation goes into each atom's b-factor, colours follow ``palette`` from 0 to
    1, residues without a value get the neutral colour. ``uniprot`` (FASTA file or sequence) embeds
    the full-length protein and aligns the chains to it. Returns per-residue values and a summary.
    """
    pipeline = pipeline or current_pipeline()
    if feature is None or str(feature).strip() == "":
        raise InterPLMError("which feature? use `interplm color SELECTION, feature=N`")
    feature = pipeline.check_feature(_as_int(feature, "feature"))
    rgb = palette_rgb(palette, _self)  # checked before the model runs
    reference = read_reference_sequence(uniprot, "uniprot") if uniprot else None
    chains = selected_chains(pipeline, selection, reference, _self=_self)

    residues = []
    for sc in chains:
        values = sc.activations.feature_values(feature)
        for index in sc.selected.tolist():
            residue = sc.chain.residues[index]
            value = None if np.isnan(values[index]) else float(values[index])
            residues.append({"object": sc.object, "chain": residue.chain, "resi": residue.label, "resn": residue.resn,
                             "position": int(sc.activations.positions[index]), "value": value})  # fmt: skip
    valued = {(r["object"], r["chain"], r["resi"]): r["value"] for r in residues if r["value"] is not None}
    paint(selection, valued, rgb, _self)

    peak = max(valued, key=valued.get) if valued else None
    concept = best_concept(pipeline, feature)
    summary = {
        "feature": feature,
        "best_concept": concept.concept if concept else None,
        "palette": palette,
        "residues": residues,
        "mapped": len(valued),
        "unmapped": len(residues) - len(valued),
        "max": valued[peak] if valued else None,
        "mean": float(np.mean(list(valued.values()))) if valued else None,
        "peak": "/{}//{}/{}".format(*peak) if valued else None,  # PyMOL's /object//chain/resi
    }
    where = f", max {summary['max']:.3f} at {summary['peak']}, mean {summary['mean']:.3f}" if valued else ""
    print(f" interplm: feature {feature} [{_concept_text(concept)}] on {len(valued)} residues of {len(chains)} chain(s){where}")
    return summary


def top(selection: str | None = None, k: Any = 10, uniprot: str | None = None, *, pipeline: Pipeline | None = None,
        _self=cmd) -> list[FeatureHit]:
    """The ``k`` features most active (highest mean) on the selected residues, with their best concept.

    ``selection`` defaults to ``sele`` (PyMOL's clicked residues) when it exists, else ``all``.
    Prints a table and returns :class:`~interplm_plugins.core.database.FeatureHit` objects.
    """
    pipeline = pipeline or current_pipeline()
    k = _as_int(k, "k")
    if selection is None:
        selection = "sele" if "sele" in _self.get_names("selections") else "all"
    reference = read_reference_sequence(uniprot, "uniprot") if uniprot else None
    chains = selected_chains(pipeline, selection, reference, _self=_self)
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
    part of one); colours ``selection`` by the best. Returns the matches, best F1 first."""
    pipeline = pipeline or current_pipeline()
    name = str(name).strip()
    if not name:
        raise InterPLMError("which concept? use `interplm concept NAME [, selection]`")
    db = _database_or_error(pipeline)
    matches = db.features_for_concept(name, k=_as_int(k, "k"))
    if not matches:
        known = db.matching_concepts(name)
        hint = f"concepts named like it have no matching feature ({', '.join(known[:5])})" if known else "no concept is named like it"
        raise InterPLMError(f"no feature matches concept {name!r}: {hint}")
    print(f" interplm: features for concept {name!r}")
    print(f" {'feature':>8}  {'F1':>5}  {'prec':>5}  {'recall':>6}  concept")
    for m in matches:
        precision = "-" if m.precision is None else f"{m.precision:.2f}"
        recall = "-" if m.recall is None else f"{m.recall:.2f}"
        print(f" {m.feature:>8}  {m.f1:5.2f}  {precision:>5}  {recall:>6}  {m.concept}")
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


def info(*, pipeline: Pipeline | None = None, _self=cmd) -> dict[str, str]:
    """Print and return this session's model, layer, SAE and database."""
    pipeline = pipeline or current_pipeline()
    described = pipeline.describe()
    described["cache"] = f"{pipeline.cache.hits} hits, {pipeline.cache.misses} misses"
    for key, value in described.items():
        print(f" interplm {key:>9}: {value}")
    return described


SUBCOMMANDS: dict[str, Callable[..., Any]] = {"color": color, "top": top, "concept": concept, "use": use, "info": info}
USAGE = {
    "color": "interplm color [selection], feature=N [, palette=blue_white_red] [, uniprot=FASTA-or-sequence]",
    "top": "interplm top [selection] [, k=10] [, uniprot=FASTA-or-sequence]",
    "concept": "interplm concept NAME [, selection] [, k=5] [, palette=...] [, uniprot=...]",
    "use": "interplm use model|sae|db PATH  (or: interplm use model=PATH, sae=PATH, db=PATH [, allow_mismatch=1]; interplm use demo)",
    "info": "interplm info",
}


_KEYWORD = re.compile(r"^([A-Za-z_]\w*)\s*=(.*)$")


def _public_parameters(function: Callable) -> list[str]:
    return [n for n, p in inspect.signature(function).parameters.items() if p.kind is p.POSITIONAL_OR_KEYWORD]


def interplm(action: str = "info", *args: Any, _self=cmd, **kwargs: Any) -> Any:
    """
DESCRIPTION

    Sparse-autoencoder features of the session's protein language model (InterPLM) on structures.

USAGE

    interplm color [selection], feature=N [, palette=blue_white_red] [, uniprot=FASTA-or-sequence]
    interplm top [selection] [, k=10]
    interplm concept NAME [, selection]
    interplm use model|sae|db PATH
    interplm use model=PATH, sae=PATH, db=PATH [, allow_mismatch=1]
    interplm use demo
    interplm info

ARGUMENTS

    selection = the residues to colour or rank; their whole protein chains are embedded
    feature = SAE feature index
    palette = PyMOL spectrum palette (see "help spectrum") or colours joined by _, from 0 to 1
    uniprot = full-length sequence (FASTA file with one record, or the sequence): the chains
              are aligned to it and it is embedded, so partial structures get full context

NOTES

    Activations go into the b-factors (and p.interplm where PyMOL has atom properties), so
    "spectrum b" works afterwards; residues without a value are grey. Activations are cached per
    sequence, so colouring by another feature does not run the model again.

EXAMPLES

    interplm color 1hpv and chain A, feature=12
    interplm top sele, k=5
    interplm concept Binding site: ATP, 1hpv
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


def register(_self=cmd) -> None:
    """Register ``interplm`` as a PyMOL command with argument completion."""
    _self.extend("interplm", interplm)
    # first argument: the subcommand, then a selection (completed from the names loaded now)
    words = lambda: Shortcut(list(SUBCOMMANDS) + _self.get_names("all"))  # noqa: E731
    _self.auto_arg[0]["interplm"] = [words, "subcommand or selection", " "]
    _self.auto_arg[1]["interplm"] = [Shortcut(["feature=", "palette=", "uniprot=", "k="]), "argument", ""]
