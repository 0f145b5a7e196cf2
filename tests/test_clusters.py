"""Feature clusters on the real tiny SAE and database: planted near-duplicate decoder directions
share a cluster, clusters and map positions round-trip through the database, the PNG has content."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from interplm_plugins.cli import main
from interplm_plugins.core.database.schema import FeatureDatabase
from interplm_plugins.core.interpret.clusters import activation_profiles, cluster_database, cluster_features, decoder_directions, feature_vectors
from interplm_plugins.core.sae.files import load_sae, save_sae
from interplm_plugins.errors import InterPLMError

#: Groups of features given near-identical decoder directions (the first's, plus 1% noise).
PLANTED = [[3, 17, 40], [5, 50], [8, 9, 60, 61]]


@pytest.fixture()
def db_copy(tiny_db_path, tmp_path):
    """A private copy of the session's database, so clustering it leaves other tests' copy alone."""
    return shutil.copy(tiny_db_path, tmp_path / "features.sqlite")


@pytest.fixture(scope="module")
def planted_sae_path(tiny_sae_path, tmp_path_factory):
    """The conftest's real 64-feature SAE with :data:`PLANTED` groups of near-duplicate features."""
    sae = load_sae(tiny_sae_path)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        w = sae.decoder.weight  # [D, F]
        for group in PLANTED:
            for f in group[1:]:
                w[:, f] = w[:, group[0]] * (1 + 0.01 * torch.randn(w.shape[0], generator=g))
    return save_sae(sae, tmp_path_factory.mktemp("planted") / "sae.safetensors")


@pytest.fixture(scope="module")
def planted_clusters(planted_sae_path, tiny_db_path, tmp_path_factory):
    """(database copy, plot path, FeatureClusters) after clustering the planted SAE once for the module."""
    folder = tmp_path_factory.mktemp("clustered")
    db = shutil.copy(tiny_db_path, folder / "features.sqlite")
    plot = folder / "map.png"
    # the planted SAE is another SAE than the database's (same width and PLM): allowed explicitly
    clusters = cluster_database(db, load_sae(planted_sae_path), plot=plot, min_cluster_size=2, min_samples=1, seed=0, allow_mismatch=True)
    return db, plot, clusters


def test_planted_duplicates_share_a_cluster(planted_clusters):
    _, _, clusters = planted_clusters
    for group in PLANTED:
        labels = clusters.cluster[group]
        assert labels[0] >= 0 and (labels == labels[0]).all(), (group, labels)
        # a real cluster, not everything lumped together
        assert (clusters.cluster == labels[0]).sum() < clusters.cluster.size / 2
    # duplicates sit on top of each other in the 2-D map too
    xy = np.stack([clusters.x, clusters.y], axis=1)
    spread = np.linalg.norm(xy.max(0) - xy.min(0))
    for group in PLANTED:
        assert np.linalg.norm(xy[group] - xy[group[0]], axis=1).max() < 0.1 * spread


def test_clusters_are_stored_and_read_back(planted_clusters):
    db_path, _, clusters = planted_clusters
    with FeatureDatabase(db_path) as db:
        for f in range(db.num_features):
            info = db.feature_info(f)
            assert info["cluster"] == clusters.cluster[f]
            assert info["x"] == pytest.approx(clusters.x[f]) and info["y"] == pytest.approx(clusters.y[f])
        # cluster neighbours: same cluster, nearest in the map first, so the planted twins come early
        # (UMAP keeps neighbourhoods, not exact distance order, so not necessarily first)
        assert {17, 40} <= set(db.cluster_neighbours(3, k=5))
        assert 50 in db.cluster_neighbours(5, k=5)
        for f in (8, 9):
            mates = db.cluster_neighbours(f, k=64)
            assert f not in mates and set(mates) == set(np.flatnonzero(clusters.cluster == clusters.cluster[f])) - {f}
            dist = [np.hypot(clusters.x[m] - clusters.x[f], clusters.y[m] - clusters.y[f]) for m in mates]
            assert dist == sorted(dist)
        noise = np.flatnonzero(clusters.cluster < 0)
        if noise.size:
            assert db.cluster_neighbours(int(noise[0])) == []


def test_neighbours_are_empty_without_clusters(tiny_db_path):
    with FeatureDatabase(tiny_db_path) as db:
        assert db.cluster_neighbours(3) == []


def test_plot_is_a_png_with_content(planted_clusters):
    import matplotlib.image

    _, plot, _ = planted_clusters
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = matplotlib.image.imread(plot)[..., :3]
    assert image.shape[0] > 300 and image.shape[1] > 300
    not_white = (image < 0.95).any(axis=-1)
    assert not_white.mean() > 0.01  # points, axes and legend drawn, not a blank canvas
    colours = {tuple(c) for c in np.round(image[not_white] * 20).astype(int)}
    assert len(colours) > 5  # coloured by concept, not one ink


def test_cli_stores_clusters_and_writes_the_plot(planted_sae_path, db_copy, tmp_path, capsys):
    plot = tmp_path / "out" / "map.png"
    args = ["-q", "cluster", str(db_copy), "--sae", str(planted_sae_path), "--out", str(plot), "--min-cluster-size", "2", "--seed", "3"]
    assert main(args) == 2 and "database was built with SAE" in capsys.readouterr().err  # another SAE: refused ...
    args.append("--allow-mismatch")  # ... unless the user says so
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "64 features:" in out and "clusters" in out and str(plot) in out
    assert f"{sum(len(g) - 1 for g in PLANTED)} near-duplicates share another feature's map point" in out
    assert plot.is_file()
    with FeatureDatabase(db_copy) as db:
        first = [db.feature_info(f)["cluster"] for f in range(64)]
        xy = [db.feature_info(f)["x"] for f in range(64)]
    assert all(c is not None for c in first)
    # the same seed gives the same map
    assert main(args) == 0
    with FeatureDatabase(db_copy) as db:
        assert [db.feature_info(f)["x"] for f in range(64)] == pytest.approx(xy)


def test_cli_profiles_cluster_by_coactivation_too(tiny_esm2_path, tiny_sae_path, db_copy, swissprot_fasta, tmp_path, capsys):
    from interplm_plugins.core.inputs.sequences import read_fasta, write_fasta

    fasta = write_fasta(read_fasta(swissprot_fasta)[:4], tmp_path / "few.fasta") or tmp_path / "few.fasta"
    code = main(["-q", "cluster", str(db_copy), "--sae", str(tiny_sae_path), "--profiles", str(fasta), "--plm", str(tiny_esm2_path),
                 "--min-cluster-size", "3"])  # fmt: skip
    assert code == 0 and "64 features:" in capsys.readouterr().out


def test_cli_error_when_sae_and_database_differ(tiny_plm, db_copy, tmp_path, capsys):
    from interplm_plugins.core.sae.model import SAEConfig, SparseAutoencoder

    other = save_sae(SparseAutoencoder(SAEConfig(d_in=tiny_plm.embed_dim, d_hidden=16, kind="relu", plm_layer=2)), tmp_path / "other.safetensors")
    assert main(["-q", "cluster", str(db_copy), "--sae", str(other)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "database has 64 features but the SAE has 16" in err


def test_joined_vectors_mix_cosines_by_weight():
    rng = np.random.default_rng(0)
    from interplm_plugins.core.sae.model import SAEConfig, SparseAutoencoder

    sae = SparseAutoencoder(SAEConfig(d_in=8, d_hidden=5, kind="relu"), generator=torch.Generator().manual_seed(0))
    acts = np.maximum(rng.standard_normal((50, 5)), 0)
    profiles = activation_profiles(acts)
    joined = feature_vectors(sae, profiles, profile_weight=0.3)
    d = decoder_directions(sae)
    assert np.allclose(np.linalg.norm(d, axis=1), 1) and np.allclose(np.linalg.norm(joined, axis=1), 1)
    np.testing.assert_allclose(joined @ joined.T, 0.7 * (d @ d.T) + 0.3 * (profiles @ profiles.T), atol=1e-12)
    with pytest.raises(InterPLMError, match="profiles must be"):
        feature_vectors(sae, profiles[:3])


@pytest.mark.parametrize("n", [2, 6, 12])
def test_few_features_still_cluster(n):
    """Below UMAP's comfort zone: PCA maps for tiny SAEs, capped neighbours otherwise; no crash."""
    vectors = np.random.default_rng(n).standard_normal((n, 16))
    vectors[1] = vectors[0] + 1e-3
    clusters = cluster_features(vectors, min_cluster_size=2, n_neighbors=15, seed=0)
    assert clusters.cluster.shape == clusters.x.shape == clusters.y.shape == (n,)
    assert np.isfinite(clusters.x).all() and np.isfinite(clusters.y).all()
    assert clusters.params["n_neighbors"] <= max(2, n - 1)


def test_near_duplicates_are_grouped_across_blocks():
    """Chains of near-duplicates are one group, found across row blocks; zero rows and mere neighbours are not."""
    from interplm_plugins.core.interpret.clusters import duplicate_groups

    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((40, 32))
    vectors[33] = vectors[2] * 3  # same direction, other length
    step = rng.standard_normal(32) * 0.08 * np.linalg.norm(vectors[5]) / np.sqrt(32)
    vectors[20], vectors[37] = vectors[5] + step, vectors[5] + 2 * step  # 5~20~37 a chain (5 and 37 less close)
    vectors[[10, 11]] = 0.0  # all-zero rows: nobody's duplicate, not even each other's
    vectors[12] = vectors[13] + 0.5 * rng.standard_normal(32)  # similar (cosine ~0.9) but not a duplicate
    unit = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    assert unit[5] @ unit[37] < 0.99 < min(unit[5] @ unit[20], unit[20] @ unit[37]) and unit[12] @ unit[13] < 0.99
    groups = duplicate_groups(vectors, block=7)  # blocks of 7 rows: every pair crosses a block boundary
    expected = np.arange(40)
    expected[[33]] = 2
    expected[[20, 37]] = 5
    np.testing.assert_array_equal(groups, expected)
    np.testing.assert_array_equal(duplicate_groups(vectors, block=4096), expected)


def test_duplicates_share_one_map_point(planted_clusters):
    _, _, clusters = planted_clusters
    assert clusters.params["duplicates_merged"] == sum(len(g) - 1 for g in PLANTED)
    for group in PLANTED:
        assert len({(clusters.x[f], clusters.y[f]) for f in group}) == 1
