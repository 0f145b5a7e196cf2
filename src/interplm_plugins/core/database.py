"""The SQLite feature database: per-feature statistics, example proteins and concept matches.

A database is built in one streaming pass over ``(protein, activations[L, F])`` pairs by
:func:`build_feature_database` (written to a temporary file and renamed, so readers and a killed
build never see a half-written database) and read by :class:`FeatureDatabase` (read-only).

Schema (``PRAGMA user_version`` = :data:`SCHEMA_VERSION`, ``PRAGMA application_id`` =
:data:`APPLICATION_ID`):

``meta(key, value)``
    provenance, one JSON value per key: ``plm``, ``plm_identity``, ``layer``, ``sae``,
    ``sae_hash``, ``thresholds``, ``data_sources``, ... as given by the builder, plus
    ``schema_version``, ``created`` (UTC ISO time), ``tool_version``, ``num_features``,
    ``num_proteins``, ``num_residues``, ``top_k``, ``quantile_bins``, ``examples_per_bin``,
    ``active_threshold``, ``concept_floor``, ``concept_halves`` (how the validation/test halves
    were made) and ``concept_eligibility``.
``proteins(protein_idx, protein_id, accession, description, sequence, length, split)``
    every protein the database was built from (``split``: :func:`~interplm_plugins.core.inputs.sequences.protein_split`, the
    train/valid/test split of the demo's PLM and SAE training; the concept-evaluation halves are
    recorded in the concepts folder, ``splits.tsv``).
``features(feature, n_active_residues, n_active_proteins, freq_residue, freq_protein,
max_activation, mean_active)``
    a residue counts as active when its activation exceeds ``active_threshold`` (default 0);
    ``mean_active`` is the mean activation over active residues.
``examples(feature, kind, rank, quantile_bin, protein_idx, max_activation, argmax_position,
activations)``
    ``kind='top'``: the ``top_k`` proteins with the highest maximum activation (rank 0 = highest);
    ``kind='quantile'``: proteins spread over the distribution of per-protein maximum activation
    among proteins where the feature is active (``quantile_bin`` 0 = weakest of ``quantile_bins``
    equal-count bins, drawn from a per-feature reservoir sample). ``activations`` is the protein's
    per-residue activation of that feature: zlib-compressed little-endian float16, length L.
``concepts(concept, family, level, n_instances, n_residues, n_proteins)``
    the concept vocabulary (Swiss-Prot annotation types and their subcategories).
``concepts(concept, family, level, n_instances, n_residues, n_proteins, valid_proteins, test_proteins,
evaluated)``
    the concept vocabulary (Swiss-Prot annotation types and their subcategories), with how many
    proteins carry each in the validation and test halves and whether it met the eligibility rule
    (meta ``concept_eligibility``) and so was evaluated.
``concept_matches(feature, concept, family, level, threshold, valid_f1, valid_precision,
valid_recall, test_f1, test_precision, test_recall)``
    for each evaluated concept, its best features on the validation half, each at the threshold
    chosen on validation, with the validation metrics and the test metrics at that same
    threshold. F1 and recall are at the concept's ``level``: per residue for residue-level
    concepts, per domain (instance) for domain-level ones. Every query ranks by ``valid_f1`` and
    reports ``test_f1``; matches below the floor (meta ``concept_floor``, default
    :data:`DEFAULT_CONCEPT_FLOOR` validation F1) are "no concept match".
``descriptions(feature, model, description, score, created)`` and ``clusters(feature, cluster,
x, y)``
    interpretation results, filled later with :func:`update_feature_database`.

Migration path: a newer schema bumps :data:`SCHEMA_VERSION` and adds a step to ``_MIGRATIONS``
(``{old_version: sql}``), which :func:`update_feature_database` applies before it writes; the
read-only :class:`FeatureDatabase` refuses other versions and says to rebuild.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import sqlite3
import threading
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from interplm_plugins import __version__
from interplm_plugins.core.atomic import atomic_path
from interplm_plugins.core.inputs.sequences import protein_split
from interplm_plugins.errors import InterPLMError

SCHEMA_VERSION = 2
#: Validation F1 below which a feature has "no concept match" (a database records its own in meta).
DEFAULT_CONCEPT_FLOOR = 0.2
#: ``PRAGMA application_id`` of feature databases ("IPLM"), to tell them from other SQLite files.
APPLICATION_ID = 0x49504C4D
_REBUILD = "rebuild it with `interplm build-db`"
_FLOAT16_MAX = float(np.finfo(np.float16).max)

_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE proteins (
    protein_idx INTEGER PRIMARY KEY,
    protein_id TEXT NOT NULL UNIQUE,
    accession TEXT,
    description TEXT NOT NULL,
    sequence TEXT NOT NULL,
    length INTEGER NOT NULL,
    split TEXT NOT NULL
);
CREATE TABLE features (
    feature INTEGER PRIMARY KEY,
    n_active_residues INTEGER NOT NULL,
    n_active_proteins INTEGER NOT NULL,
    freq_residue REAL NOT NULL,
    freq_protein REAL NOT NULL,
    max_activation REAL NOT NULL,
    mean_active REAL NOT NULL
);
CREATE TABLE examples (
    feature INTEGER NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('top', 'quantile')),
    rank INTEGER NOT NULL,
    quantile_bin INTEGER,
    protein_idx INTEGER NOT NULL REFERENCES proteins (protein_idx),
    max_activation REAL NOT NULL,
    argmax_position INTEGER NOT NULL,
    activations BLOB NOT NULL,
    PRIMARY KEY (feature, kind, rank)
) WITHOUT ROWID;
CREATE TABLE concepts (
    concept TEXT PRIMARY KEY,
    family TEXT,
    level TEXT,
    n_instances INTEGER,
    n_residues INTEGER,
    n_proteins INTEGER,
    valid_proteins INTEGER,
    test_proteins INTEGER,
    evaluated INTEGER
);
CREATE TABLE concept_matches (
    feature INTEGER NOT NULL,
    concept TEXT NOT NULL,
    family TEXT,
    level TEXT CHECK (level IN ('residue', 'domain')),
    threshold REAL NOT NULL,
    valid_f1 REAL NOT NULL,
    valid_precision REAL NOT NULL,
    valid_recall REAL NOT NULL,
    test_f1 REAL NOT NULL,
    test_precision REAL NOT NULL,
    test_recall REAL NOT NULL,
    PRIMARY KEY (feature, concept)
);
CREATE TABLE descriptions (
    feature INTEGER NOT NULL,
    model TEXT NOT NULL,
    description TEXT NOT NULL,
    score REAL,
    created TEXT,
    PRIMARY KEY (feature, model)
);
CREATE TABLE clusters (feature INTEGER PRIMARY KEY, cluster INTEGER NOT NULL, x REAL, y REAL);
"""

#: The tables of :data:`_SCHEMA`, checked when a database is opened.
_TABLES = ("meta", "proteins", "features", "examples", "concepts", "concept_matches", "descriptions", "clusters")

_INDEXES = """
CREATE INDEX concept_matches_by_feature ON concept_matches (feature, valid_f1 DESC);
CREATE INDEX concept_matches_by_concept ON concept_matches (concept, valid_f1 DESC);
"""

#: ``{version: sql}`` upgrading a database from ``version`` to ``version + 1``. None from 1: a
#: version-1 database kept only test metrics, so its matches cannot be re-ranked on validation.
_MIGRATIONS: dict[int, str] = {}

_MATCH_COLUMNS = (
    "feature", "concept", "family", "level", "threshold",
    "valid_f1", "valid_precision", "valid_recall", "test_f1", "test_precision", "test_recall",
)  # fmt: skip
#: The match columns in :class:`ConceptMatch`'s order (a literal: SQL is never built from variables).
_MATCH_SELECT = (
    "SELECT feature, concept, family, level, threshold, valid_f1, valid_precision, valid_recall, test_f1, test_precision,"
    " test_recall FROM concept_matches"
)
_REQUIRED_MATCH_COLUMNS = ("feature", "concept", "threshold", "valid_f1", "valid_precision", "valid_recall", "test_f1", "test_precision", "test_recall")


# ----------------------------------------------------------------------------------------------
# Result types


@dataclass
class Example:
    """One example protein of a feature, with that feature's activation on every residue."""

    protein_id: str
    description: str
    sequence: str
    activations: np.ndarray  # [L] float32
    max_activation: float
    argmax_position: int  # 0-based
    kind: str = "top"
    rank: int = 0
    quantile_bin: int | None = None


@dataclass
class ConceptMatch:
    """How well ``feature`` detects ``concept``: chosen on the validation half, scored on the test half.

    ``threshold`` was chosen on validation; ``valid_*`` are the validation metrics there, ``test_*``
    the test metrics at the same threshold. F1 and recall are at the concept's ``level``
    (``"residue"``, or ``"domain"``: per instance). ``f1``, ``precision`` and ``recall`` are the
    test metrics: the score to report.
    """

    feature: int
    concept: str
    family: str | None
    level: str | None
    threshold: float
    valid_f1: float
    valid_precision: float
    valid_recall: float
    test_f1: float
    test_precision: float
    test_recall: float

    @property
    def f1(self) -> float:
        return self.test_f1

    @property
    def precision(self) -> float:
        return self.test_precision

    @property
    def recall(self) -> float:
        return self.test_recall

    @property
    def f1_label(self) -> str:
        return "F1 per domain" if self.level == "domain" else "F1"

    @property
    def recall_label(self) -> str:
        return "recall per domain" if self.level == "domain" else "recall"

    def label(self) -> str:
        """``"Coiled coil (test F1 per domain 0.59)"``: the concept and its score, for legends and lists."""
        return f"{self.concept} (test {self.f1_label} {self.f1:.2f})"

    def metrics_text(self) -> str:
        """F1, precision and recall at one level, on test, and what chose them."""
        return (
            f"test {self.f1_label} {self.f1:.2f}, precision {self.precision:.2f}, {self.recall_label} {self.recall:.2f}"
            f" (threshold {self.threshold:g} and feature chosen on validation, {self.f1_label} {self.valid_f1:.2f})"
        )


def concept_label(match: ConceptMatch | None) -> str:
    """:meth:`ConceptMatch.label`, or ``"no concept match"``: the one wording every surface shows."""
    return match.label() if match is not None else NO_CONCEPT_MATCH


NO_CONCEPT_MATCH = "no concept match"


def concept_match_lines(matches: Sequence[ConceptMatch]) -> list[str]:
    """A table of matches with headers: validation F1 (what ranked them), then test F1, precision and recall at the concept's level."""
    lines = [
        f"{'feature':>8}  {'valid F1':>8}  {'test F1':>7}  {'precision':>9}  {'recall':>6}  {'level':<7}  {'threshold':>9}  concept",
    ]
    for m in matches:
        lines.append(
            f"{m.feature:>8}  {m.valid_f1:8.2f}  {m.f1:7.2f}  {m.precision:9.2f}  {m.recall:6.2f}  {m.level or '-':<7}  {m.threshold:9g}  {m.concept}"
        )
    lines.append("(ranked by validation F1; F1, precision and recall on the test half; level 'domain': F1 and recall per domain)")
    return lines


@dataclass
class FeatureHit:
    """A feature ranked for some residues or a search, with its best concept and description."""

    feature: int
    score: float
    best_concept: ConceptMatch | None = None
    description: str | None = None
    matched: str | None = None  # the concept or description text a search matched


# ----------------------------------------------------------------------------------------------
# Activation blobs


def _to_float16(values: np.ndarray) -> np.ndarray:
    # clip first: values beyond float16's range would become inf
    return np.clip(np.asarray(values, dtype=np.float32), -_FLOAT16_MAX, _FLOAT16_MAX).astype("<f2")


def encode_activations(values: np.ndarray) -> bytes:
    """Per-residue activations as stored: zlib-compressed little-endian float16."""
    return zlib.compress(_to_float16(values).tobytes(), 1)


def decode_activations(blob: bytes) -> np.ndarray:
    """Inverse of :func:`encode_activations` (float32)."""
    return np.frombuffer(zlib.decompress(blob), dtype="<f2").astype(np.float32)


# ----------------------------------------------------------------------------------------------
# Building


def _as_record(item: Any) -> tuple[str, str, str, str | None]:
    """``(id, sequence, description, accession)`` of a ProteinRecord-like object or tuple."""
    if isinstance(item, (tuple, list)):
        if len(item) not in (2, 3):
            raise InterPLMError(f"a protein must be (id, sequence[, description]), got {len(item)} items")
        pid, seq = str(item[0]), str(item[1])
        return pid, seq, str(item[2]) if len(item) == 3 else "", None
    try:
        return str(item.id), str(item.sequence), str(getattr(item, "description", "") or ""), getattr(item, "accession", None)
    except AttributeError:
        raise InterPLMError(f"a protein must have .id and .sequence, got {type(item).__name__}") from None


def _json_meta(provenance: dict) -> list[tuple[str, str]]:
    rows = []
    for key, value in provenance.items():
        try:
            rows.append((str(key), json.dumps(value, default=_json_default)))
        except (TypeError, ValueError) as exc:
            raise InterPLMError(f"provenance value of {key!r} cannot be stored as JSON ({exc})") from None
    return rows


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise TypeError(f"{type(value).__name__} is not JSON-serialisable")


class _FeatureAccumulator:
    """Running per-feature statistics, top-k examples and reservoir samples over a protein stream.

    Work per protein is vectorised over residues and features; the Python loop only visits
    features whose top-k list or reservoir the protein enters.
    """

    def __init__(self, num_features: int, top_k: int, reservoir_size: int, active_threshold: float, seed: int):
        f = num_features
        self.num_features = f
        self.active_threshold = active_threshold
        self.rng = np.random.default_rng(seed)
        self.n_active_residues = np.zeros(f, np.int64)
        self.n_active_proteins = np.zeros(f, np.int64)
        self.sum_active = np.zeros(f, np.float64)
        self.max_activation = np.zeros(f, np.float64)
        self.num_residues = 0
        self.num_proteins = 0
        # top-k slots, unordered; empty slots hold -inf so any active protein beats them
        self.top_val = np.full((f, top_k), -np.inf, np.float32)
        self.top_protein = np.full((f, top_k), -1, np.int64)
        self.top_argmax = np.zeros((f, top_k), np.int64)
        self.top_blob = np.empty((f, top_k), object)
        # reservoir samples of active proteins (Algorithm R), slots filled in arrival order
        self.res_val = np.zeros((f, reservoir_size), np.float32)
        self.res_protein = np.full((f, reservoir_size), -1, np.int64)
        self.res_argmax = np.zeros((f, reservoir_size), np.int64)
        self.res_blob = np.empty((f, reservoir_size), object)

    def add(self, protein_idx: int, acts: np.ndarray) -> None:
        active = acts > self.active_threshold
        counts = active.sum(axis=0)
        self.n_active_residues += counts
        self.sum_active += np.where(active, acts, 0.0).sum(axis=0, dtype=np.float64)
        maxes = acts.max(axis=0)
        argmaxes = acts.argmax(axis=0)
        np.maximum(self.max_activation, maxes, out=self.max_activation)
        self.num_residues += acts.shape[0]
        self.num_proteins += 1

        act_features = np.flatnonzero(counts)
        if act_features.size == 0:
            return
        self.n_active_proteins[act_features] += 1
        blobs: dict[int, bytes] = {}
        columns: list[np.ndarray] = []  # [F, L] float16, made once for this protein when first needed

        def blob(f: int) -> bytes:
            if f not in blobs:
                if not columns:
                    columns.append(np.ascontiguousarray(_to_float16(acts).T))
                blobs[f] = zlib.compress(columns[0][f].tobytes(), 1)
            return blobs[f]

        # top-k: replace the weakest slot where this protein beats it (ties keep the earlier protein)
        weakest = self.top_val[act_features].argmin(axis=1)
        entering = maxes[act_features] > self.top_val[act_features, weakest]
        for f, slot in zip(act_features[entering].tolist(), weakest[entering].tolist()):
            self.top_val[f, slot] = maxes[f]
            self.top_protein[f, slot] = protein_idx
            self.top_argmax[f, slot] = argmaxes[f]
            self.top_blob[f, slot] = blob(f)

        # reservoir: the n-th active protein takes slot n-1 while there is room, else a random
        # slot with probability R/n, which keeps a uniform sample of all active proteins
        seen = self.n_active_proteins[act_features]
        size = self.res_val.shape[1]
        slots = np.where(seen <= size, seen - 1, self.rng.integers(0, seen))
        keep = slots < size
        for f, slot in zip(act_features[keep].tolist(), slots[keep].tolist()):
            self.res_val[f, slot] = maxes[f]
            self.res_protein[f, slot] = protein_idx
            self.res_argmax[f, slot] = argmaxes[f]
            self.res_blob[f, slot] = blob(f)

    def feature_rows(self) -> Iterator[tuple]:
        n_res, n_prot = max(self.num_residues, 1), max(self.num_proteins, 1)
        mean_active = self.sum_active / np.maximum(self.n_active_residues, 1)
        for f in range(self.num_features):
            yield (
                f,
                int(self.n_active_residues[f]),
                int(self.n_active_proteins[f]),
                float(self.n_active_residues[f] / n_res),
                float(self.n_active_proteins[f] / n_prot),
                float(self.max_activation[f]),
                float(mean_active[f]),
            )

    def example_rows(self, quantile_bins: int, examples_per_bin: int) -> Iterator[tuple]:
        for f in range(self.num_features):
            order = np.argsort(-self.top_val[f], kind="stable")
            rank = 0
            for slot in order.tolist():
                if self.top_protein[f, slot] < 0:
                    continue
                yield (f, "top", rank, None, int(self.top_protein[f, slot]), float(self.top_val[f, slot]),
                       int(self.top_argmax[f, slot]), self.top_blob[f, slot])  # fmt: skip
                rank += 1
            yield from self._quantile_rows(f, quantile_bins, examples_per_bin)

    def _quantile_rows(self, f: int, quantile_bins: int, examples_per_bin: int) -> Iterator[tuple]:
        n = int(min(self.n_active_proteins[f], self.res_val.shape[1]))
        if n == 0 or quantile_bins == 0 or examples_per_bin == 0:
            return
        order = np.argsort(self.res_val[f, :n], kind="stable")  # weakest first
        bins = (np.arange(n) * quantile_bins) // n  # bin of each rank: equal-count bins
        rank = 0
        for b in range(quantile_bins):
            members = order[bins == b]
            if members.size == 0:
                continue
            # evenly spaced within the bin, so each bin shows its spread, not only its edges
            picks = np.unique(np.linspace(0, members.size - 1, min(examples_per_bin, members.size)).round().astype(int))
            for slot in members[picks].tolist():
                yield (f, "quantile", rank, b, int(self.res_protein[f, slot]), float(self.res_val[f, slot]),
                       int(self.res_argmax[f, slot]), self.res_blob[f, slot])  # fmt: skip
                rank += 1


def _check_activations(acts: Any, pid: str, length: int, num_features: int | None) -> np.ndarray:
    try:
        array = np.asarray(acts.detach().cpu().numpy() if hasattr(acts, "detach") else acts, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise InterPLMError(f"activations are not a numeric array ({exc})", record=pid) from None
    if array.ndim != 2:
        raise InterPLMError(f"activations must be [residues, features], got shape {array.shape}", record=pid)
    if array.shape[0] != length:
        raise InterPLMError(f"activations have {array.shape[0]} rows but the sequence has {length} residues", record=pid)
    if num_features is not None and array.shape[1] != num_features:
        raise InterPLMError(f"activations have {array.shape[1]} features, earlier proteins had {num_features}", record=pid)
    if not np.isfinite(array).all():
        raise InterPLMError("activations contain NaN or infinite values", record=pid)
    return array


def _frame_rows(frame: pd.DataFrame, required: Sequence[str], optional: Sequence[str], name: str) -> pd.DataFrame:
    """``frame`` restricted to the given columns (missing optional ones as None), or an error."""
    if not isinstance(frame, pd.DataFrame):
        raise InterPLMError(f"{name} must be a pandas DataFrame, got {type(frame).__name__}")
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise InterPLMError(f"{name} lacks column(s) {', '.join(missing)} (has {', '.join(map(str, frame.columns))})")
    out = frame.loc[:, [c for c in (*required, *optional) if c in frame.columns]].copy()
    for column in optional:
        if column not in out.columns:
            out[column] = None
    out = out.astype(object).where(out.notna(), None)
    return out[list(required) + list(optional)]


def _concept_rows(concept_table: pd.DataFrame, num_features: int) -> list[tuple]:
    optional = [c for c in _MATCH_COLUMNS if c not in _REQUIRED_MATCH_COLUMNS]
    frame = _frame_rows(concept_table, _REQUIRED_MATCH_COLUMNS, optional, "concept_table")[list(_MATCH_COLUMNS)]
    features = pd.to_numeric(frame["feature"], errors="coerce")
    bad = features.isna() | (features < 0) | (features >= num_features) | (features % 1 != 0)
    if bad.any():
        raise InterPLMError(
            f"concept_table row {int(np.flatnonzero(bad.to_numpy())[0])}: feature {frame['feature'][bad].iloc[0]!r} "
            f"is not an index in 0..{num_features - 1}"
        )
    for column in _REQUIRED_MATCH_COLUMNS[2:]:
        if frame[column].isna().any():
            raise InterPLMError(f"concept_table row {int(np.flatnonzero(frame[column].isna().to_numpy())[0])}: {column} is missing")
    frame["feature"] = features.astype(int)
    dupes = frame.duplicated(["feature", "concept"])
    if dupes.any():
        row = frame[dupes].iloc[0]
        raise InterPLMError(f"concept_table has more than one row for feature {row['feature']}, concept {row['concept']!r}")
    return [tuple(_plain(v) for v in row) for row in frame.itertuples(index=False)]


def _plain(value: Any) -> Any:
    """numpy scalars as Python ones (sqlite3 binds only Python types)."""
    return value.item() if isinstance(value, np.generic) else value


def _summary_rows(concept_summary: pd.DataFrame | None, match_rows: list[tuple]) -> list[tuple]:
    columns = ("family", "level", "n_instances", "n_residues", "n_proteins", "valid_proteins", "test_proteins", "evaluated")
    rows: dict[str, tuple] = {}
    if concept_summary is not None:
        frame = _frame_rows(concept_summary, ("concept",), columns, "concept_summary")
        for row in frame.itertuples(index=False):
            rows[str(row[0])] = tuple(_plain(v) for v in row)
    for row in match_rows:  # every matched concept is in the vocabulary, summary or not
        rows.setdefault(str(row[1]), (row[1], row[2], row[3], None, None, None, None, None, 1))
    return list(rows.values())


def build_feature_database(
    path: str | os.PathLike,
    activation_iter: Iterable[tuple[Any, Any]],
    *,
    provenance: dict,
    concept_table: pd.DataFrame | Callable[[], pd.DataFrame | None] | None = None,
    concept_summary: pd.DataFrame | Callable[[], pd.DataFrame | None] | None = None,
    top_k: int = 10,
    concept_floor: float = DEFAULT_CONCEPT_FLOOR,
    quantile_bins: int = 5,
    examples_per_bin: int = 2,
    reservoir_size: int | None = None,
    active_threshold: float = 0.0,
    seed: int = 0,
    progress: bool = True,
    total: int | None = None,
) -> Path:
    """Build a feature database at ``path`` in one streaming pass, atomically; return ``path``.

    ``activation_iter`` yields ``(protein, activations)``: ``protein`` a
    :class:`~interplm_plugins.core.inputs.sequences.ProteinRecord` (or ``(id, sequence[, description])``) and
    ``activations`` its SAE features, ``[L, F]``. Only per-feature summaries and the
    ``top_k + reservoir_size`` candidate examples per feature are held in memory.
    ``concept_table`` holds concept matches (columns ``feature, concept, threshold, valid_f1,
    valid_precision, valid_recall, test_f1, test_precision, test_recall`` and optionally ``family,
    level``: :func:`~interplm_plugins.core.concepts.selection.feature_concept_table`); ``concept_summary`` the vocabulary
    (``concept`` and optionally ``family, level, n_instances, n_residues, n_proteins,
    valid_proteins, test_proteins, evaluated``); either may be a function, called after the pass so
    that concept metrics can be counted from the same stream. ``concept_floor``: the validation F1
    below which queries say "no concept match" (stored in meta). Quantile examples are drawn
    from a uniform reservoir sample of ``reservoir_size`` (default ``4 * quantile_bins *
    examples_per_bin``, at least 20) active proteins per feature.
    """
    path = Path(path)
    for name, value in (("top_k", top_k), ("quantile_bins", quantile_bins), ("examples_per_bin", examples_per_bin)):
        if int(value) < 0:
            raise InterPLMError(f"{name} must be >= 0, got {value}")
    if reservoir_size is None:
        reservoir_size = max(4 * quantile_bins * examples_per_bin, 20)
    if not isinstance(provenance, dict):
        raise InterPLMError(f"provenance must be a dict, got {type(provenance).__name__}")
    if not 0.0 <= float(concept_floor) <= 1.0:
        raise InterPLMError(f"concept_floor must be a validation F1 in [0, 1], got {concept_floor}")
    meta_rows = _json_meta(provenance)  # fail on unstorable provenance before the long pass

    with atomic_path(path) as tmp:
        con = sqlite3.connect(tmp)
        try:
            # a crash loses only the temporary file, so the build needs no journal or syncs
            con.execute("PRAGMA journal_mode = OFF")
            con.execute("PRAGMA synchronous = OFF")
            con.executescript(_SCHEMA)
            acc: _FeatureAccumulator | None = None
            seen: set[str] = set()
            for protein_idx, (protein, acts) in enumerate(
                tqdm(activation_iter, desc="feature database", unit="protein", disable=not progress, total=total)
            ):
                pid, sequence, description, accession = _as_record(protein)
                if pid in seen:
                    raise InterPLMError("duplicate protein id", record=pid)
                seen.add(pid)
                array = _check_activations(acts, pid, len(sequence), acc.num_features if acc else None)
                if acc is None:
                    acc = _FeatureAccumulator(array.shape[1], int(top_k), int(reservoir_size), float(active_threshold), seed)
                acc.add(protein_idx, array)
                con.execute(
                    "INSERT INTO proteins VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (protein_idx, pid, accession or pid, description, sequence, len(sequence), protein_split(pid)),
                )
            if acc is None:
                raise InterPLMError("no proteins to build the feature database from", file=path)

            if callable(concept_table):
                concept_table = concept_table()
            if callable(concept_summary):
                concept_summary = concept_summary()
            match_rows = _concept_rows(concept_table, acc.num_features) if concept_table is not None else []
            con.executemany("INSERT INTO features VALUES (?, ?, ?, ?, ?, ?, ?)", acc.feature_rows())
            con.executemany("INSERT INTO examples VALUES (?, ?, ?, ?, ?, ?, ?, ?)", acc.example_rows(quantile_bins, examples_per_bin))
            con.executemany(f"INSERT INTO concept_matches VALUES ({', '.join('?' * len(_MATCH_COLUMNS))})", match_rows)
            con.executemany("INSERT INTO concepts VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", _summary_rows(concept_summary, match_rows))
            con.executescript(_INDEXES)
            built = {
                "schema_version": SCHEMA_VERSION,
                "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                "tool_version": __version__,
                "num_features": acc.num_features,
                "num_proteins": acc.num_proteins,
                "num_residues": acc.num_residues,
                "top_k": int(top_k),
                "quantile_bins": int(quantile_bins),
                "examples_per_bin": int(examples_per_bin),
                "active_threshold": float(active_threshold),
                "concept_floor": float(concept_floor),
            }
            con.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", meta_rows + _json_meta(built))
            con.execute(f"PRAGMA application_id = {APPLICATION_ID}")
            con.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            con.commit()
            con.execute("ANALYZE")
        finally:
            con.close()
    return path


def update_feature_database(
    path: str | os.PathLike, *, descriptions: pd.DataFrame | None = None, clusters: pd.DataFrame | None = None
) -> Path:
    """Add interpretation results to an existing database, atomically (copy, write, rename).

    ``descriptions``: columns ``feature, model, description`` and optionally ``score, created``
    (a row replaces the same feature and model). ``clusters``: columns ``feature, cluster`` and
    optionally ``x, y`` (replacing all previous clusters). Open readers keep their snapshot.
    """
    path = Path(path)
    with FeatureDatabase(path, _allow_versions=set(_MIGRATIONS) | {SCHEMA_VERSION}) as db:
        num_features = db.num_features
        version = db._version
        with atomic_path(path) as tmp:
            out = sqlite3.connect(tmp)
            try:
                db._con.backup(out)
                for old in range(version, SCHEMA_VERSION):
                    out.executescript(_MIGRATIONS[old])
                    out.execute(f"PRAGMA user_version = {int(old) + 1}")  # an int: PRAGMA takes no bound parameters
                if descriptions is not None:
                    frame = _frame_rows(descriptions, ("feature", "model", "description"), ("score", "created"), "descriptions")
                    _check_feature_column(frame, num_features, "descriptions")
                    now = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
                    frame["created"] = frame["created"].where(frame["created"].notna(), now)
                    out.executemany(
                        "INSERT OR REPLACE INTO descriptions VALUES (?, ?, ?, ?, ?)",
                        [tuple(_plain(v) for v in row) for row in frame.itertuples(index=False)],
                    )
                if clusters is not None:
                    frame = _frame_rows(clusters, ("feature", "cluster"), ("x", "y"), "clusters")
                    _check_feature_column(frame, num_features, "clusters")
                    out.execute("DELETE FROM clusters")
                    out.executemany(
                        "INSERT INTO clusters VALUES (?, ?, ?, ?)",
                        [tuple(_plain(v) for v in row) for row in frame.itertuples(index=False)],
                    )
                out.commit()
            finally:
                out.close()
    return path


def _check_feature_column(frame: pd.DataFrame, num_features: int, name: str) -> None:
    features = pd.to_numeric(frame["feature"], errors="coerce")
    bad = features.isna() | (features < 0) | (features >= num_features) | (features % 1 != 0)
    if bad.any():
        raise InterPLMError(f"{name}: feature {frame['feature'][bad].iloc[0]!r} is not an index in 0..{num_features - 1}")
    frame["feature"] = features.astype(int)


# ----------------------------------------------------------------------------------------------
# Reading


class FeatureDatabase:
    """A feature database opened read-only; use as a context manager or call :meth:`close`.

    Safe to share between threads (queries are serialised). The file may be replaced by a rebuild
    while it is open: this object keeps answering from the version it opened.
    """

    def __init__(self, path: str | os.PathLike, *, concept_floor: float | None = None, _allow_versions: set[int] | None = None):
        self.path = Path(path)
        if not self.path.is_file():
            raise InterPLMError(f"no such feature database; {_REBUILD}", file=self.path)
        if self.path.stat().st_size == 0:  # SQLite would open it as a new, empty database
            raise InterPLMError(f"empty file, not a feature database; {_REBUILD}", file=self.path)
        uri = self.path.resolve().as_uri() + "?mode=ro"
        try:
            self._con = sqlite3.connect(uri, uri=True, check_same_thread=False)
        except sqlite3.Error as exc:
            raise InterPLMError(f"cannot open the feature database ({exc})", file=self.path) from None
        self._lock = threading.Lock()
        try:
            app_id = self._con.execute("PRAGMA application_id").fetchone()[0]
            self._version = self._con.execute("PRAGMA user_version").fetchone()[0]
        except sqlite3.DatabaseError as exc:
            self._con.close()
            raise InterPLMError(f"not a feature database ({exc}); {_REBUILD}", file=self.path) from None
        allowed = _allow_versions or {SCHEMA_VERSION}
        if app_id != APPLICATION_ID:
            self._con.close()
            raise InterPLMError(f"an SQLite file but not an interplm feature database; {_REBUILD}", file=self.path)
        if self._version not in allowed:
            self._con.close()
            age = "an older" if self._version < SCHEMA_VERSION else "a newer"
            hint = _REBUILD if self._version < SCHEMA_VERSION else "upgrade interplm-plugins or " + _REBUILD
            raise InterPLMError(
                f"feature database has {age} schema (version {self._version}, this interplm-plugins reads {SCHEMA_VERSION}); {hint}",
                file=self.path,
            )
        if self._version == SCHEMA_VERSION:
            tables = {row[0] for row in self._query("SELECT name FROM sqlite_master WHERE type = 'table'")}
            missing = [t for t in _TABLES if t not in tables]
            if missing:
                self._con.close()
                raise InterPLMError(f"feature database is damaged (missing tables: {', '.join(missing)}); {_REBUILD}", file=self.path)
        try:
            self.provenance: dict[str, Any] = {key: json.loads(value) for key, value in self._query("SELECT key, value FROM meta")}
        except (TypeError, ValueError) as exc:
            self._con.close()
            raise InterPLMError(f"feature database is damaged (provenance is not JSON: {exc}); {_REBUILD}", file=self.path) from None
        self.num_features: int = int(self._query("SELECT count(*) FROM features")[0][0])
        #: Validation F1 below which a feature has no concept match (the build's, unless given).
        self.concept_floor: float = float(self.provenance.get("concept_floor", DEFAULT_CONCEPT_FLOOR) if concept_floor is None else concept_floor)
        self._concepts: list[str] = [row[0] for row in self._query("SELECT concept FROM concepts ORDER BY concept")]

    # -- plumbing

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        with self._lock:
            try:
                return self._con.execute(sql, tuple(params)).fetchall()
            except sqlite3.DatabaseError as exc:
                raise InterPLMError(f"feature database is damaged ({exc}); {_REBUILD}", file=self.path) from None

    def close(self) -> None:
        self._con.close()

    def __enter__(self) -> FeatureDatabase:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"FeatureDatabase({str(self.path)!r}, num_features={self.num_features})"

    def _check_feature(self, feature: int) -> int:
        if isinstance(feature, bool) or not isinstance(feature, (int, np.integer)) or not 0 <= feature < self.num_features:
            raise InterPLMError(f"feature {feature!r} does not exist (features are 0..{self.num_features - 1})", file=self.path)
        return int(feature)

    def _floor(self, min_valid_f1: float | None) -> float:
        return self.concept_floor if min_valid_f1 is None else float(min_valid_f1)

    # -- features

    def feature_info(self, feature: int) -> dict[str, Any]:
        """Statistics of ``feature`` with its best concept match, description and cluster."""
        feature = self._check_feature(feature)
        names = ("feature", "n_active_residues", "n_active_proteins", "freq_residue", "freq_protein", "max_activation", "mean_active")
        info: dict[str, Any] = dict(zip(names, self._query(f"SELECT {', '.join(names)} FROM features WHERE feature = ?", (feature,))[0]))
        best = self.concepts_for_feature(feature, k=1)
        info["best_concept"] = best[0] if best else None
        info["description"] = self.description(feature)
        cluster = self._query("SELECT cluster, x, y FROM clusters WHERE feature = ?", (feature,))
        info["cluster"], info["x"], info["y"] = cluster[0] if cluster else (None, None, None)
        return info

    def description(self, feature: int) -> str | None:
        """The best-scored (then newest) description of ``feature``, or None."""
        rows = self._query(
            "SELECT description FROM descriptions WHERE feature = ? ORDER BY score IS NULL, score DESC, created DESC LIMIT 1",
            (self._check_feature(feature),),
        )
        return rows[0][0] if rows else None

    def cluster_neighbours(self, feature: int, k: int = 10) -> list[int]:
        """Up to ``k`` other features of ``feature``'s cluster, nearest in the 2-D map first.

        ``[]`` when the database has no clusters, ``feature`` is unclustered, or it is HDBSCAN
        noise (cluster < 0): noise points share no cluster. Features without map coordinates
        come last, by index.
        """
        feature = self._check_feature(feature)
        own = self._query("SELECT cluster, x, y FROM clusters WHERE feature = ?", (feature,))
        if not own or own[0][0] is None or own[0][0] < 0 or int(k) <= 0:
            return []
        cluster, x, y = own[0]
        if x is None or y is None:
            x = y = None  # no map position: neighbours by index only
        rows = self._query(
            "SELECT feature FROM clusters WHERE cluster = ? AND feature != ?"
            " ORDER BY (x IS NULL OR ? IS NULL), (x - ?) * (x - ?) + (y - ?) * (y - ?), feature LIMIT ?",
            (cluster, feature, x, x, x, y, y, int(k)),
        )
        return [int(row[0]) for row in rows]

    def _examples(self, feature: int, kind: str, limit: int) -> list[Example]:
        rows = self._query(
            "SELECT p.protein_id, p.description, p.sequence, e.activations, e.max_activation, e.argmax_position,"
            " e.rank, e.quantile_bin FROM examples e JOIN proteins p ON p.protein_idx = e.protein_idx"
            " WHERE e.feature = ? AND e.kind = ? ORDER BY e.rank LIMIT ?",
            (self._check_feature(feature), kind, int(limit)),
        )
        examples = []
        for pid, desc, seq, blob, mx, arg, rank, qbin in rows:
            try:
                track = decode_activations(blob)
            except (zlib.error, ValueError, TypeError) as exc:
                raise InterPLMError(f"feature database is damaged (activations of an example: {exc}); {_REBUILD}", file=self.path, record=pid) from None
            if len(track) != len(seq):
                raise InterPLMError(
                    f"feature database is damaged (an example has {len(track)} activations for {len(seq)} residues); {_REBUILD}",
                    file=self.path,
                    record=pid,
                )
            examples.append(Example(pid, desc, seq, track, float(mx), int(arg), kind, int(rank), qbin))
        return examples

    def top_examples(self, feature: int, k: int = 10) -> list[Example]:
        """The (up to) ``k`` proteins where ``feature`` peaks highest, highest first."""
        return self._examples(feature, "top", k)

    def quantile_examples(self, feature: int) -> list[Example]:
        """Proteins across the range of ``feature``'s activation, weakest quantile bin first."""
        return self._examples(feature, "quantile", -1)

    # -- concepts

    def concept_names(self) -> list[str]:
        """Every concept in the database, sorted."""
        return list(self._concepts)

    def _matches(self, where: str, params: Sequence[Any], min_valid_f1: float | None, limit: int) -> list[ConceptMatch]:
        # Ranked by validation F1 only: the test metrics are what is reported, never what chooses.
        rows = self._query(
            f"{_MATCH_SELECT} WHERE {where} AND valid_f1 >= ? ORDER BY valid_f1 DESC, feature, concept LIMIT ?",
            (*params, self._floor(min_valid_f1), int(limit)),
        )
        return [ConceptMatch(*row) for row in rows]

    def concepts_for_feature(self, feature: int, k: int = 5, min_valid_f1: float | None = None) -> list[ConceptMatch]:
        """The ``k`` concepts ``feature`` matches best on validation, above the floor (default: :attr:`concept_floor`)."""
        return self._matches("feature = ?", (self._check_feature(feature),), min_valid_f1, k)

    def matching_concepts(self, text: str) -> list[str]:
        """Concepts named ``text`` (case-insensitive), or else all whose name contains it."""
        needle = str(text).casefold().strip()
        if not needle:
            return []
        exact = [c for c in self._concepts if c.casefold() == needle]
        return exact or [c for c in self._concepts if needle in c.casefold()]

    def features_for_concept(self, name_or_substring: str, k: int = 10, min_valid_f1: float | None = None) -> list[ConceptMatch]:
        """The ``k`` best (feature, concept) matches for a concept name or name fragment, ranked by validation F1."""
        concepts = self.matching_concepts(name_or_substring)
        if not concepts:
            return []
        # a temporary table would need a writable connection; bind the names instead
        hits: list[ConceptMatch] = []
        for start in range(0, len(concepts), 500):
            chunk = concepts[start : start + 500]
            hits += self._matches(f"concept IN ({', '.join('?' * len(chunk))})", chunk, min_valid_f1, k)
        return sorted(hits, key=lambda m: (-m.valid_f1, m.feature, m.concept))[:k]

    def best_concepts(self, features: Sequence[int], min_valid_f1: float | None = None) -> dict[int, ConceptMatch]:
        """The best concept match (by validation F1, above the floor) of each of ``features`` that has one."""
        features = [self._check_feature(f) for f in features]
        best: dict[int, ConceptMatch] = {}
        for start in range(0, len(features), 500):
            chunk = features[start : start + 500]
            rows = self._query(
                f"{_MATCH_SELECT} WHERE feature IN ({', '.join('?' * len(chunk))}) AND valid_f1 >= ?"
                " ORDER BY feature, valid_f1 DESC, concept",
                (*chunk, self._floor(min_valid_f1)),
            )
            for row in rows:
                best.setdefault(row[0], ConceptMatch(*row))
        return best

    def concept_summary(self, name: str) -> dict[str, Any] | None:
        """The vocabulary row of concept ``name``: family, level, counts per half, whether it was evaluated."""
        columns = ("concept", "family", "level", "n_instances", "n_residues", "n_proteins", "valid_proteins", "test_proteins", "evaluated")
        rows = self._query(f"SELECT {', '.join(columns)} FROM concepts WHERE concept = ?", (str(name),))
        return dict(zip(columns, rows[0])) if rows else None

    def _descriptions(self, features: Sequence[int]) -> dict[int, str]:
        if not features:
            return {}
        rows = self._query(
            f"SELECT feature, description FROM descriptions WHERE feature IN ({', '.join('?' * len(features))})"
            " ORDER BY feature, score IS NULL, score DESC, created DESC",
            list(features),
        )
        out: dict[int, str] = {}
        for feature, text in rows:
            out.setdefault(feature, text)
        return out

    def _hits(self, scored: Sequence[tuple[int, float, str | None]]) -> list[FeatureHit]:
        features = [f for f, _, _ in scored]
        best = self.best_concepts(features)
        descriptions = self._descriptions(features)
        return [FeatureHit(f, s, best.get(f), descriptions.get(f), m) for f, s, m in scored]

    def features_active_at(self, activations: np.ndarray, positions: Sequence[int], k: int = 10) -> list[FeatureHit]:
        """Features ranked by mean activation over 0-based ``positions`` of ``activations[L, F]``.

        Only features active there (mean > 0) are returned, each with its best concept match.
        """
        acts = np.asarray(activations, dtype=np.float32)
        if acts.ndim != 2 or acts.shape[1] != self.num_features:
            raise InterPLMError(
                f"activations must be [residues, {self.num_features}] for this database, got shape {acts.shape}", file=self.path
            )
        pos = np.asarray(list(positions), dtype=np.int64)
        if pos.size == 0:
            raise InterPLMError("no residue positions selected")
        if pos.min() < 0 or pos.max() >= acts.shape[0]:
            bad = int(pos[(pos < 0) | (pos >= acts.shape[0])][0])
            raise InterPLMError(f"position {bad} is outside the sequence (0..{acts.shape[0] - 1})")
        means = acts[pos].mean(axis=0)
        k = min(int(k), int((means > 0).sum()))
        if k <= 0:
            return []
        top = np.argpartition(-means, k - 1)[:k]
        top = top[np.lexsort((top, -means[top]))]  # highest mean first, ties by feature index
        return self._hits([(int(f), float(means[f]), None) for f in top])

    def search_features(self, text: str, k: int = 20) -> list[FeatureHit]:
        """Features whose concepts or descriptions contain ``text`` (case-insensitive), best first.

        Concept hits score their validation F1 (the ranking never sees test); description hits
        their description score (0 when unscored).
        """
        needle = str(text).casefold().strip()
        if not needle:
            return []
        scored: dict[int, tuple[float, str]] = {}
        for match in self.features_for_concept(text, k=k):
            scored.setdefault(match.feature, (match.valid_f1, match.concept))
        rows = self._query(
            "SELECT feature, description, coalesce(score, 0) FROM descriptions WHERE instr(lower(description), ?) > 0"
            " ORDER BY coalesce(score, 0) DESC, feature LIMIT ?",
            (needle, int(k)),
        )
        for feature, description, score in rows:
            if feature not in scored or scored[feature][0] < score:
                scored[feature] = (float(score), description)
        ranked = sorted(scored.items(), key=lambda item: (-item[1][0], item[0]))[:k]
        return self._hits([(f, s, m) for f, (s, m) in ranked])

