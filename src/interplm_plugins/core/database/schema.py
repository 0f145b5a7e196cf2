"""The SQLite feature database: its schema, what a query returns, and the read-only reader.

A database holds per-feature statistics, example proteins and concept matches. It is built in one
streaming pass over ``(protein, activations[L, F])`` pairs by
:func:`~interplm_plugins.core.database.build.build_feature_database` (written to a temporary file
and renamed, so readers and a killed build never see a half-written database) and read by
:class:`FeatureDatabase` (read-only).

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
    interpretation results, filled later with :func:`~interplm_plugins.core.database.build.update_feature_database`.

Migration path: a newer schema bumps :data:`SCHEMA_VERSION` and adds a step to ``_MIGRATIONS``
(``{old_version: sql}``), which ``update_feature_database`` applies before it writes; the
read-only :class:`FeatureDatabase` refuses other versions and says to rebuild.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

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

