"""Writing the feature database: the streaming builder and later updates.

:func:`build_feature_database` writes a database (:mod:`~interplm_plugins.core.database.schema`) in
one streaming pass over ``(protein, activations[L, F])`` pairs, to a temporary file renamed at the
end, so readers and a killed build never see a half-written database;
:func:`update_feature_database` adds interpretation results (descriptions, clusters) later, migrating
an older schema first. An SAE's database over a pipeline's PLM and SAE in one pass is
:func:`~interplm_plugins.core.database.from_pipeline.build_database`.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import sqlite3
import zlib
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from interplm_plugins import __version__
from interplm_plugins.core.atomic import atomic_path
from interplm_plugins.core.database.schema import (
    _INDEXES,
    _MATCH_COLUMNS,
    _MIGRATIONS,
    _REQUIRED_MATCH_COLUMNS,
    _SCHEMA,
    APPLICATION_ID,
    DEFAULT_CONCEPT_FLOOR,
    SCHEMA_VERSION,
    FeatureDatabase,
    _to_float16,
)
from interplm_plugins.core.inputs.sequences import protein_split
from interplm_plugins.errors import InterPLMError


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
