"""Feature clusters: UMAP maps and HDBSCAN clusters of SAE features by their decoder directions.

Each feature is the unit-normalised column of the SAE's decoder (the direction it writes into the
residual stream), optionally joined with its activation profile over sample residues (which
features fire together). Two UMAP embeddings are made with cosine distance, as the UMAP
documentation recommends for clustering: a ``cluster_dims``-dimensional one with ``min_dist=0``
that HDBSCAN clusters (low enough for density estimates to work, high enough to keep structure),
and a 2-D one (``min_dist=0.1``) that is the map shown and stored. HDBSCAN labels sparse features
``-1`` (noise, no cluster).

Features whose vectors are near-duplicates (cosine >= :data:`DUPLICATE_COSINE`, a known SAE
failure: several features learning one direction) are embedded as one point and share its map
position; HDBSCAN then sees each member at that point. UMAP does not keep coinciding points
together (umap-learn's ``unique`` option exists for exact duplicates): on a 64-feature SAE, planted
twins at cosine 0.9999 landed as far apart in the 10-D space as unrelated features, and in
different clusters.

Very small SAEs (fewer than :data:`MIN_UMAP_FEATURES` features) are embedded by PCA instead,
since UMAP's spectral initialisation and neighbour graph need more points; ``n_neighbors`` is
capped at ``F - 1`` for the same reason.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np
import pandas as pd
import torch

from interplm_plugins.core.atomic import atomic_path
from interplm_plugins.core.database.build import update_feature_database
from interplm_plugins.core.database.schema import FeatureDatabase
from interplm_plugins.core.sae.model import SparseAutoencoder
from interplm_plugins.errors import InterPLMError

log = logging.getLogger(__name__)

#: Below this many features the maps come from PCA, not UMAP.
MIN_UMAP_FEATURES = 10
#: Features whose vectors have at least this cosine are one point of the maps (see the module docstring).
DUPLICATE_COSINE = 0.99
#: Concepts given their own colour in the plot; the rest share "other concepts".
PLOT_CONCEPTS = 9


@dataclass
class FeatureClusters:
    """Cluster label (``-1`` = noise) and 2-D map position of every feature, and how they were made."""

    cluster: np.ndarray  # [F] int
    x: np.ndarray  # [F] float
    y: np.ndarray  # [F] float
    params: dict

    @property
    def num_clusters(self) -> int:
        return int(self.cluster.max()) + 1 if self.cluster.size else 0

    @property
    def num_noise(self) -> int:
        return int((self.cluster < 0).sum())

    def to_frame(self) -> pd.DataFrame:
        """Columns ``feature, cluster, x, y``, as :func:`update_feature_database` stores them."""
        return pd.DataFrame({"feature": np.arange(self.cluster.size), "cluster": self.cluster, "x": self.x, "y": self.y})


def _unit_rows(matrix: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return np.divide(matrix, norms, out=np.zeros_like(matrix), where=norms > 0)  # all-zero rows stay zero


def decoder_directions(sae: SparseAutoencoder) -> np.ndarray:
    """``[F, D]``: each feature's decoder column scaled to unit length (zero columns stay zero)."""
    with torch.no_grad():
        columns = sae.decoder.weight.detach().to("cpu", torch.float64).numpy().T
    return _unit_rows(np.ascontiguousarray(columns))


def activation_profiles(activations: np.ndarray, max_residues: int = 4096, seed: int = 0) -> np.ndarray:
    """``[F, R]``: each feature's unit-normalised activations over (up to ``max_residues``, sampled) rows
    of ``activations[N, F]``; features never active there get a zero profile."""
    acts = np.asarray(activations, dtype=np.float64)
    if acts.ndim != 2:
        raise InterPLMError(f"activations must be [residues, features], got shape {acts.shape}")
    if acts.shape[0] > max_residues:
        rows = np.sort(np.random.default_rng(seed).choice(acts.shape[0], max_residues, replace=False))
        acts = acts[rows]
    return _unit_rows(np.ascontiguousarray(acts.T))


def feature_vectors(sae: SparseAutoencoder, profiles: np.ndarray | None = None, profile_weight: float = 0.5) -> np.ndarray:
    """The vectors features are clustered by: decoder directions, optionally joined with ``profiles``.

    Joined as ``[sqrt(1 - w) * direction, sqrt(w) * profile]``, so the cosine between two features
    is ``(1 - w) * cos(directions) + w * cos(profiles)``.
    """
    directions = decoder_directions(sae)
    if profiles is None:
        return directions
    profiles = np.asarray(profiles, dtype=np.float64)
    if profiles.ndim != 2 or profiles.shape[0] != directions.shape[0]:
        raise InterPLMError(f"profiles must be [{directions.shape[0]} features, residues], got shape {profiles.shape}")
    if not 0.0 <= profile_weight <= 1.0:
        raise InterPLMError(f"profile weight must be in [0, 1], got {profile_weight}")
    return np.hstack([np.sqrt(1.0 - profile_weight) * directions, np.sqrt(profile_weight) * _unit_rows(profiles)])


def duplicate_groups(vectors: np.ndarray, min_cosine: float = DUPLICATE_COSINE, block: int = 2048) -> np.ndarray:
    """For each row, the first row of its group of near-duplicates (linked by cosine >= ``min_cosine``).

    Groups are connected components, so a chain of near-duplicates is one group; all-zero rows are
    nobody's duplicate. Works in row blocks, so memory is ``block x F``, not ``F x F``.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    unit = _unit_rows(np.asarray(vectors, dtype=np.float32))
    n = unit.shape[0]
    rows, cols = [], []
    for start in range(0, n, block):
        sims = unit[start : start + block] @ unit.T
        i, j = np.nonzero(sims >= min_cosine)
        keep = start + i < j  # each pair once, no self-pairs
        rows.append(start + i[keep])
        cols.append(j[keep])
    i, j = np.concatenate(rows), np.concatenate(cols)
    _, component = connected_components(coo_matrix((np.ones(i.size), (i, j)), shape=(n, n)), directed=False)
    first = np.full(component.max() + 1, n)
    np.minimum.at(first, component, np.arange(n))
    return first[component]


def _embed(vectors: np.ndarray, dims: int, n_neighbors: int, min_dist: float, seed: int) -> np.ndarray:
    if vectors.shape[0] < MIN_UMAP_FEATURES:
        centred = vectors - vectors.mean(axis=0)
        u, s, _ = np.linalg.svd(centred, full_matrices=False)
        out = np.zeros((vectors.shape[0], dims))
        k = min(dims, s.size)
        out[:, :k] = u[:, :k] * s[:k]
        return out
    import umap

    with warnings.catch_warnings():
        # "n_jobs overridden by random_state": seeded UMAP runs single-threaded, which is the point
        warnings.filterwarnings("ignore", message=".*n_jobs.*", category=UserWarning)
        reducer = umap.UMAP(n_components=dims, n_neighbors=n_neighbors, min_dist=min_dist, metric="cosine", random_state=seed)
        return np.asarray(reducer.fit_transform(vectors), dtype=np.float64)


def cluster_features(
    vectors: np.ndarray,
    *,
    min_cluster_size: int = 5,
    min_samples: int | None = None,
    n_neighbors: int = 15,
    cluster_dims: int = 10,
    seed: int = 0,
) -> FeatureClusters:
    """Cluster features (rows of ``vectors``) with HDBSCAN on a UMAP embedding; map them in 2-D."""
    vectors = np.asarray(vectors, dtype=np.float64)
    n = vectors.shape[0] if vectors.ndim == 2 else 0
    if n < 2:
        raise InterPLMError(f"need at least 2 features to cluster, got {n}")
    if not np.isfinite(vectors).all():
        raise InterPLMError("feature vectors contain NaN or infinity (a damaged SAE?)")
    if int(min_cluster_size) < 2:
        raise InterPLMError(f"min cluster size must be >= 2, got {min_cluster_size}")
    if min_samples is not None and int(min_samples) < 1:
        raise InterPLMError(f"min samples must be >= 1, got {min_samples}")
    # near-duplicates are embedded once (UMAP pulls coinciding points apart) and share the position
    firsts, point = np.unique(duplicate_groups(vectors), return_inverse=True)
    m = firsts.size
    # UMAP's neighbour graph cannot have more neighbours than other points
    neighbours = max(2, min(int(n_neighbors), m - 1))
    # a spectral layout needs fewer dimensions than points; few features need few dimensions
    dims = max(2, min(int(cluster_dims), m // 4))
    min_cluster_size = min(int(min_cluster_size), n)
    min_samples = None if min_samples is None else min(int(min_samples), n)

    import hdbscan

    cluster_space = _embed(vectors[firsts], dims, neighbours, 0.0, seed)[point]
    labels = hdbscan.HDBSCAN(min_cluster_size=min_cluster_size, min_samples=min_samples).fit_predict(cluster_space)
    xy = _embed(vectors[firsts], 2, neighbours, 0.1, seed)[point]
    params = {
        "method": "umap+hdbscan" if m >= MIN_UMAP_FEATURES else "pca+hdbscan",
        "duplicates_merged": int(n - m),
        "n_neighbors": neighbours,
        "cluster_dims": dims,
        "min_cluster_size": min_cluster_size,
        "min_samples": min_samples,
        "seed": int(seed),
    }
    return FeatureClusters(np.asarray(labels, dtype=np.int64), xy[:, 0].copy(), xy[:, 1].copy(), params)


def plot_clusters(
    clusters: FeatureClusters, best_concepts: Mapping[int, str], path: str | os.PathLike, title: str = "SAE features"
) -> Path:
    """A PNG scatter of the 2-D map, coloured by each feature's best concept, written atomically.

    The :data:`PLOT_CONCEPTS` most common concepts get their own colour; clustered features are
    drawn solid, one member of each cluster labelled with its number, noise features faint.
    """
    import matplotlib

    matplotlib.use("Agg")  # headless: never needs a display
    import matplotlib.pyplot as plt

    common = [name for name, _ in Counter(best_concepts.values()).most_common(PLOT_CONCEPTS)]
    palette = plt.get_cmap("tab10").colors
    groups: dict[str, tuple] = {name: palette[i] for i, name in enumerate(common)}
    groups["other concepts"] = (0.45, 0.45, 0.45)
    groups["no concept"] = (0.8, 0.8, 0.8)
    group_of = np.array(
        [best_concepts[f] if best_concepts.get(f) in common else ("other concepts" if f in best_concepts else "no concept")
         for f in range(clusters.cluster.size)]
    )  # fmt: skip
    noise = clusters.cluster < 0

    fig, ax = plt.subplots(figsize=(8, 6.5), dpi=120)
    try:
        for name, color in groups.items():
            chosen = group_of == name
            if not chosen.any():
                continue
            label = f"{name} ({int(chosen.sum())})"
            for mask, alpha, size in ((chosen & ~noise, 0.9, 22), (chosen & noise, 0.35, 10)):
                if mask.any():
                    ax.scatter(clusters.x[mask], clusters.y[mask], s=size, color=color, alpha=alpha, linewidths=0, label=label)
                    label = None  # one legend entry per concept
        xy = np.stack([clusters.x, clusters.y], axis=1)
        for c in range(clusters.num_clusters):
            members = xy[clusters.cluster == c]
            # label the member nearest the centre: a spread cluster's centre may be far from any of them
            anchor = members[np.argmin(np.linalg.norm(members - members.mean(axis=0), axis=1))]
            ax.annotate(str(c), anchor, xytext=(3, 3), textcoords="offset points", fontsize=7)
        ax.set_title(f"{title}: {clusters.cluster.size} features, {clusters.num_clusters} clusters, {clusters.num_noise} unclustered")
        ax.set_xlabel("UMAP 1" if clusters.params.get("method", "").startswith("umap") else "PC 1")
        ax.set_ylabel("UMAP 2" if clusters.params.get("method", "").startswith("umap") else "PC 2")
        ax.legend(title="best concept", fontsize=7, title_fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", bbox_inches="tight")
    finally:
        plt.close(fig)
    return Path(path)


def cluster_database(
    db_path: str | os.PathLike,
    sae: SparseAutoencoder,
    *,
    plot: str | os.PathLike | None = None,
    profiles: np.ndarray | None = None,
    profile_weight: float = 0.5,
    min_cluster_size: int = 5,
    min_samples: int | None = None,
    n_neighbors: int = 15,
    seed: int = 0,
    allow_mismatch: bool = False,
) -> FeatureClusters:
    """Cluster ``sae``'s features, store clusters and map in the feature database, optionally plot them.

    ``profiles`` (``[F, R]``, see :func:`activation_profiles`) adds co-activation to the decoder
    directions with weight ``profile_weight``. The database must have been built with ``sae``
    (:func:`~interplm_plugins.core.database.provenance.check_database_matches_sae`; ``allow_mismatch`` makes
    another SAE of the same width a warning, e.g. the raw SAE of a normalised one: their decoder
    directions are the same).
    """
    from interplm_plugins.core.database.provenance import check_database_matches_sae

    with FeatureDatabase(db_path) as db:
        check_database_matches_sae(db, sae, allow_mismatch=allow_mismatch, source=db_path)
        best = {f: m.concept for f, m in db.best_concepts(range(db.num_features)).items()}
    clusters = cluster_features(
        feature_vectors(sae, profiles, profile_weight),
        min_cluster_size=min_cluster_size, min_samples=min_samples, n_neighbors=n_neighbors, seed=seed,
    )  # fmt: skip
    update_feature_database(db_path, clusters=clusters.to_frame())
    if plot is not None:
        plot_clusters(clusters, best, plot, title=Path(db_path).name)
    return clusters
