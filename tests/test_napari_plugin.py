"""The napari plugin with a real napari viewer (offscreen Qt), the tiny real pipeline and real structures.

The screenshot test needs real rendering: it starts Xvfb (when there is no DISPLAY) and renders in a
subprocess on the xcb platform, since this process's Qt is already bound to the offscreen one.
"""

from __future__ import annotations

import gzip
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from napari.utils.colormaps import ensure_colormap  # noqa: E402

from interplm_plugins.core.inputs.structure import read_structure  # noqa: E402
from interplm_plugins.napari_plugin import _widget  # noqa: E402
from interplm_plugins.napari_plugin._reader import napari_get_reader  # noqa: E402
from interplm_plugins.napari_plugin._sample_data import demo_structure_path  # noqa: E402

PLUGIN = "interplm-plugins"
WIDGET_NAMES = {"Color by feature", "Top features at selection", "Activation profile", "Feature neighbours", "Mutation scan"}
HERE = Path(__file__).resolve().parent


def _ca_count(path: Path) -> int:
    """Cα atoms of the first model's protein chains, counted from the PDB text (alternate locations once)."""
    count, seen = 0, set()
    for line in path.read_text().splitlines():
        if line.startswith("ENDMDL"):
            break
        key = (line[21], line[22:27])
        if line.startswith("ATOM") and line[12:16] == " CA " and key not in seen:
            seen.add(key)
            count += 1
    return count


@pytest.fixture
def viewer(make_napari_viewer):
    return make_napari_viewer()


@pytest.fixture
def demo_layer(viewer):
    """The demo protein opened through napari and the npe2 reader: its Cα Points layer."""
    viewer.open(demo_structure_path(), plugin=PLUGIN)
    (layer,) = [layer for layer in viewer.layers if _widget.is_structure_layer(layer)]
    return layer


def _dock(viewer, cls):
    widget = cls(viewer)
    viewer.window.add_dock_widget(widget)
    return widget


def _wait(qtbot, widget, worker):
    assert worker is not None, widget.status.value
    qtbot.waitUntil(lambda: not widget.busy, timeout=60_000)
    assert not widget.status.value.startswith("error"), widget.status.value


def _points_of_chain(layer, chain_id: str) -> np.ndarray:
    return np.flatnonzero(layer.features["chain"].to_numpy() == chain_id)


# ----------------------------------------------------------------------------------------------
# Manifest, discovery, reader


def test_manifest_validates_and_contributions_are_discoverable():
    import npe2

    result = subprocess.run(
        [sys.executable, "-m", "npe2", "validate", PLUGIN, "--imports"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "valid" in result.stdout

    pm = npe2.PluginManager.instance()
    pm.discover()
    manifest = pm.get_manifest(PLUGIN)
    assert {w.display_name for w in manifest.contributions.widgets} == WIDGET_NAMES
    assert [s.key for s in manifest.contributions.sample_data] == ["demo_protein"]
    for suffix in ("pdb", "cif", "ent", "pdb.gz", "cif.gz"):
        assert PLUGIN in {r.plugin_name for r in pm.iter_compatible_readers([f"x.{suffix}"])}
    for widget in manifest.contributions.widgets:  # every command resolves to a class taking the viewer
        assert "napari_viewer" in pm.commands.get(widget.command).__init__.__code__.co_varnames


@pytest.mark.parametrize("name", ["P15802_2X1C.pdb", "P02794_4Y08.pdb", "P07900_AF.pdb"])
def test_reader_layers_hold_the_ca_atoms_and_residue_table(shared_data, name):
    path = shared_data / "structures" / name
    reader = napari_get_reader(str(path))
    assert reader is not None and napari_get_reader("notes.txt") is None
    *backbones, (points, kwargs, kind) = reader(str(path))
    assert kind == "points" and points.shape == (_ca_count(path), 3)
    features = kwargs["features"]
    assert list(features.columns) == ["chain", "resi", "icode", "resn", "one_letter", "seq_index"]
    chains = {c.chain_id: c for c in read_structure(path)}
    assert list(features["chain"].unique()) == list(chains)
    for row in features.itertuples():  # seq_index names the residue within its chain's sequence
        residue = chains[row.chain].residues[row.seq_index]
        assert (residue.resi, residue.icode, residue.one_letter) == (row.resi, row.icode, row.one_letter)
    # napari's axes are (z, y, x): the first Cα's x coordinate is the last column
    first_ca = next(line for line in path.read_text().splitlines() if line.startswith("ATOM") and line[12:16] == " CA ")
    assert points[0, ::-1] == pytest.approx([float(first_ca[30:38]), float(first_ca[38:46]), float(first_ca[46:54])], abs=1e-3)
    assert [kw["name"].rsplit(" ", 1)[1] for _, kw, _ in backbones] == list(chains)
    assert all(k == "shapes" and kw["shape_type"] == "path" for _, kw, k in backbones)


def test_sample_data_and_open_through_napari(viewer, tmp_path):
    gzipped = tmp_path / "1hpv.pdb.gz"
    gzipped.write_bytes(gzip.compress(demo_structure_path().read_bytes()))
    viewer.open(gzipped, plugin=PLUGIN)
    assert len(viewer.layers["1hpv Cα"].data) == 198
    viewer.layers.clear()
    viewer.open_sample(PLUGIN, "demo_protein")
    names = [layer.name for layer in viewer.layers]
    assert names == ["1hpv backbone A", "1hpv backbone B", "1hpv Cα"]
    points = viewer.layers["1hpv Cα"]
    assert len(points.data) == 198 and sorted(points.metadata["interplm"]["chains"]) == ["A", "B"]
    assert viewer.layers.selection.active is points


# ----------------------------------------------------------------------------------------------
# Widgets


def test_color_by_feature_follows_activations(tiny_pipeline, viewer, demo_layer, qtbot, tmp_path):
    widget = _dock(viewer, _widget.ColorByFeatureWidget)
    assert widget.layer_combo.value is demo_layer and widget.chain_combo.choices == (_widget.ALL_CHAINS, "A", "B")
    chain_a = demo_layer.metadata["interplm"]["chains"]["A"]
    acts = tiny_pipeline.activations(chain_a.sequence)
    feature = int(acts.max(axis=0).argmax())
    widget.chain_combo.value = "A"
    worker = widget.color(feature)
    # the call returns at once: the model runs on the worker thread, the GUI thread keeps serving events
    assert widget.busy and "computing" in widget.status.value
    _wait(qtbot, widget, worker)

    points_a, points_b = _points_of_chain(demo_layer, "A"), _points_of_chain(demo_layer, "B")
    values = acts[demo_layer.features["seq_index"].to_numpy()[points_a], feature]
    # the default: white to red over 0..1 of the feature, as PyMOL colours it
    assert (widget.colormap.value, widget.scale.value) == ("white_red", "feature")
    expected = _widget.activation_colors(values, "white_red", 0.0, 1.0)
    np.testing.assert_allclose(demo_layer.face_color[points_a], expected, atol=1e-6)
    from interplm_plugins.pymol_plugin.mapping import palette_rgb, value_colors
    from pymol import cmd

    pymol_rgb = value_colors(values, palette_rgb("white_red", cmd))  # PyMOL's colour of the same values
    pymol_rgb = np.stack([(pymol_rgb >> 16) & 255, (pymol_rgb >> 8) & 255, pymol_rgb & 255], axis=1) / 255
    np.testing.assert_allclose(demo_layer.face_color[points_a, :3], pymol_rgb, atol=1 / 255 + 1e-6)
    assert "0 to 1 of the feature's maximum (feature scale)" in widget.legend.value
    # per-chain scaling: the chain's maximum is the colormap's top
    widget.scale.value, widget.colormap.value = "chain", "viridis"
    _wait(qtbot, widget, widget.color(feature))
    expected = _widget.activation_colors(values, "viridis", 0.0, values.max())
    np.testing.assert_allclose(demo_layer.face_color[points_a], expected, atol=1e-6)
    top = points_a[values.argmax()]
    np.testing.assert_allclose(demo_layer.face_color[top], ensure_colormap("viridis").colors[-1], atol=1e-6)
    np.testing.assert_allclose(demo_layer.face_color[points_b], np.tile(_widget.NEUTRAL_GREY, (len(points_b), 1)))
    np.testing.assert_allclose(demo_layer.features["activation"].to_numpy()[points_a], values, rtol=1e-6)
    assert demo_layer.features["activation"].iloc[points_b].isna().all()
    best = tiny_pipeline.database.concepts_for_feature(feature, k=1)
    assert f"feature {feature}, chain A: colours 0 to each chain's maximum ({values.max():.3f}; chain scale)" in widget.legend.value
    assert (best[0].label() if best else "no concept match") in widget.legend.value
    assert viewer.dims.ndisplay == 3

    # a full-length reference: the chain is aligned to it, residues beyond its end get no value (grey)
    reference = "MKT" + chain_a.sequence[:-10]
    widget.reference.value = reference
    widget.colormap.value = "magma"
    _wait(qtbot, widget, widget.color(feature))
    ref_acts = tiny_pipeline.activations(reference)
    seq_index = demo_layer.features["seq_index"].to_numpy()[points_a]
    mapped = seq_index < len(chain_a.sequence) - 10
    ref_values = ref_acts[seq_index[mapped] + 3, feature]
    expected = _widget.activation_colors(ref_values, "magma", 0.0, ref_values.max())
    np.testing.assert_allclose(demo_layer.face_color[points_a[mapped]], expected, atol=1e-6)
    np.testing.assert_allclose(demo_layer.face_color[points_a[~mapped]], np.tile(_widget.NEUTRAL_GREY, (10, 1)))

    # the same reference as a one-record FASTA file (as PyMOL's uniprot= takes it) colours the same
    by_sequence = demo_layer.face_color.copy()
    fasta = tmp_path / "reference.fasta"
    fasta.write_text(">P04585 reference\n" + reference + "\n")
    widget.reference.value = str(fasta)
    _wait(qtbot, widget, widget.color(feature))
    np.testing.assert_allclose(demo_layer.face_color, by_sequence, atol=1e-6)
    # a path that is not there: the widget says so (named), the colours stay
    widget.reference.value = str(tmp_path / "missing.fasta")
    worker = widget.color(feature)
    qtbot.waitUntil(lambda: not widget.busy, timeout=60_000)
    assert "reference: neither a protein sequence nor a FASTA file" in widget.status.value and "missing.fasta" in widget.status.value
    np.testing.assert_allclose(demo_layer.face_color, by_sequence, atol=1e-6)


def test_feature_search_picks_the_best_match(tiny_pipeline, viewer, demo_layer):
    widget = _dock(viewer, _widget.ColorByFeatureWidget)
    database = tiny_pipeline.database
    concept = next(c for c in database.concept_names() if database.features_for_concept(c, k=1))
    expected = [hit.feature for hit in database.search_features(concept, k=20)]
    assert widget.feature.search(concept) == expected
    assert widget.feature.value == expected[0] and widget.feature.matches.value == expected[0]
    assert widget.feature.search("no such concept at all") == [] and "no feature matches" in widget.feature.message.value


def test_top_features_at_selection_match_the_database(tiny_pipeline, viewer, demo_layer, qtbot):
    widget = _dock(viewer, _widget.TopFeaturesWidget)
    assert widget.show_top() is None and "select residues" in widget.status.value
    database = tiny_pipeline.database
    chains = demo_layer.metadata["interplm"]["chains"]
    points_a = _points_of_chain(demo_layer, "A")[20:30]
    demo_layer.selected_data = set(points_a.tolist())
    _wait(qtbot, widget, widget.show_top())
    acts_a = tiny_pipeline.activations(chains["A"].sequence)
    expected = database.features_active_at(acts_a, demo_layer.features["seq_index"].to_numpy()[points_a], k=10)
    assert expected and [(h.feature, h.score) for h in widget.hits] == [(h.feature, h.score) for h in expected]
    table = widget.table.to_dataframe()
    assert table["feature"].tolist() == [h.feature for h in expected]

    # residues of both chains: one ranking over all selected residues
    points_b = _points_of_chain(demo_layer, "B")[:5]
    demo_layer.selected_data = set(points_a.tolist() + points_b.tolist())
    _wait(qtbot, widget, widget.show_top())
    acts_b = tiny_pipeline.activations(chains["B"].sequence)
    seq_index = demo_layer.features["seq_index"].to_numpy()
    rows = list(seq_index[points_a]) + [len(acts_a) + i for i in seq_index[points_b]]
    expected = database.features_active_at(np.concatenate([acts_a, acts_b]), rows, k=10)
    assert [h.feature for h in widget.hits] == [h.feature for h in expected]


def test_activation_profile_plots_the_feature_along_the_sequence(tiny_pipeline, viewer, demo_layer, qtbot):
    widget = _dock(viewer, _widget.ActivationProfileWidget)
    chains = demo_layer.metadata["interplm"]["chains"]
    widget.chain_combo.value = "B"
    _wait(qtbot, widget, widget.plot(7))
    (line,) = widget.axes.get_lines()
    expected = tiny_pipeline.activations(chains["B"].sequence)[:, 7]
    np.testing.assert_array_equal(line.get_xdata(), np.arange(1, len(expected) + 1))
    np.testing.assert_allclose(line.get_ydata(), expected)
    assert widget.axes.get_title() == "feature 7"

    widget.chain_combo.value = _widget.ALL_CHAINS
    _wait(qtbot, widget, widget.plot())
    assert [line.get_label() for line in widget.axes.get_lines()] == ["chain A", "chain B"]


def test_feature_neighbours_and_description(tiny_pipeline, tiny_db_path, viewer, tmp_path):
    from interplm_plugins import session
    from interplm_plugins.core.database.build import update_feature_database

    widget = _dock(viewer, _widget.FeatureNeighboursWidget)
    assert widget.find_neighbours(5) == [] and "no cluster neighbours" in widget.about.value

    database = shutil.copy(tiny_db_path, tmp_path / "features.sqlite")
    features = np.arange(tiny_pipeline.num_features)
    update_feature_database(
        database,
        clusters=pd.DataFrame({"feature": features, "cluster": features % 4, "x": features.astype(float), "y": 0.0}),
        descriptions=pd.DataFrame({"feature": [5, 9], "model": "test", "description": ["binds zinc", "helix start"]}),
    )
    pipeline = session.use_pipeline(database=str(database))
    neighbours = widget.find_neighbours(5)
    assert neighbours == pipeline.database.cluster_neighbours(5, k=10) == [1, 9, 13, 17, 21, 25, 29, 33, 37, 41]
    assert "feature 5: binds zinc" in widget.about.value
    table = widget.table.to_dataframe()
    assert table["feature"].tolist() == neighbours and table["description"].tolist()[1] == "helix start"


def test_mutation_scan_widget_tables_and_colours_the_largest_drop(tiny_pipeline, viewer, demo_layer, qtbot):
    from interplm_plugins.core.interpret.mutate import largest_drops, mutation_scan

    widget = _dock(viewer, _widget.MutationScanWidget)
    chains = demo_layer.metadata["interplm"]["chains"]
    acts = tiny_pipeline.activations(chains["A"].sequence)
    feature = int(acts[24:26].sum(axis=0).argmax())
    widget.chain_combo.value, widget.positions.value, widget.to.value = "A", "25-26", "ALA"
    _wait(qtbot, widget, widget.scan(feature))
    expected = mutation_scan(tiny_pipeline, chains["A"].sequence, feature, positions=[24, 25], to="A")
    np.testing.assert_allclose(widget.result["site_change"], expected["site_change"], atol=1e-6)
    assert widget.result["resi"].tolist() == ["25", "26"] and len(widget.table.to_dataframe()) == 2
    points = _points_of_chain(demo_layer, "A")
    seq_index = demo_layer.features["seq_index"].to_numpy()
    drops = largest_drops(expected)
    scanned = points[np.isin(seq_index[points], [24, 25])]
    want = _widget.activation_colors(np.array([drops[seq_index[i] + 1] for i in scanned]), "white_red", 0.0, 1.0)
    np.testing.assert_allclose(demo_layer.face_color[scanned], want, atol=1e-6)
    others = np.setdiff1d(np.arange(len(seq_index)), scanned)
    np.testing.assert_allclose(demo_layer.face_color[others], np.tile(_widget.NEUTRAL_GREY, (len(others), 1)))
    # no positions typed: the selected points are scanned
    widget.positions.value, widget.chain_combo.value, widget.to.value = "", _widget.ALL_CHAINS, "GLY"
    demo_layer.selected_data = {int(_points_of_chain(demo_layer, "B")[9])}
    _wait(qtbot, widget, widget.scan(feature))
    assert widget.result[["chain", "resi", "mutant"]].values.tolist() == [["B", "10", "G"]]


def test_reference_fasta_with_several_records_matches_each_chain(tiny_pipeline, viewer, demo_layer, qtbot, shared_data, tmp_path):
    from interplm_plugins.core.inputs.sequences import read_fasta

    widget = _dock(viewer, _widget.ColorByFeatureWidget)
    chains = demo_layer.metadata["interplm"]["chains"]
    calmodulin = next(r.sequence for r in read_fasta(shared_data / "sequences" / "swissprot_train.fasta") if r.id == "P0DP23")
    fasta = tmp_path / "refs.fasta"
    fasta.write_text(f">P0DP23\n{calmodulin}\n>PR\nPQ{chains['A'].sequence}\n")
    widget.reference.value = str(fasta)
    _wait(qtbot, widget, widget.color(5))
    values = demo_layer.features["activation"].to_numpy()
    seq_index = demo_layer.features["seq_index"].to_numpy()
    np.testing.assert_allclose(values, tiny_pipeline.activations(f"PQ{chains['A'].sequence}")[seq_index + 2, 5], atol=1e-6)
    fasta.write_text(f">P0DP23\n{calmodulin}\n")  # no chain matches: an error naming the file and both chains
    assert widget.color(5) is not None
    qtbot.waitUntil(lambda: not widget.busy, timeout=60_000)
    assert "does not match the reference" in widget.status.value and "chain A:" in widget.status.value and "chain B:" in widget.status.value
    assert "1hpv" in widget.status.value


def test_errors_are_shown_in_the_widget(tiny_pipeline, viewer, qtbot):
    widget = _dock(viewer, _widget.ColorByFeatureWidget)
    assert widget.color(0) is None and "open a structure" in widget.status.value
    viewer.open(demo_structure_path(), plugin=PLUGIN)
    assert widget.layer_combo.value is viewer.layers["1hpv Cα"]  # the picker follows layers being added
    worker = widget.color(tiny_pipeline.num_features + 5)
    qtbot.waitUntil(lambda: not widget.busy, timeout=60_000)
    assert worker is not None and "error:" in widget.status.value and "does not exist" in widget.status.value


# ----------------------------------------------------------------------------------------------
# Real rendering


@pytest.fixture(scope="session")
def x_display():
    """A DISPLAY to render on: the existing one, or an Xvfb started for this session."""
    if os.environ.get("DISPLAY"):
        yield os.environ["DISPLAY"]
        return
    xvfb = shutil.which("Xvfb")
    if xvfb is None:
        pytest.fail("no DISPLAY and no Xvfb: run bash scripts/install_system_deps.sh (the test install does)")
    read_fd, write_fd = os.pipe()
    # -displayfd: Xvfb picks a free display number and writes it once it accepts connections
    server = subprocess.Popen(
        [xvfb, "-displayfd", str(write_fd), "-screen", "0", "1280x1024x24", "-nolisten", "tcp"],
        pass_fds=(write_fd,), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    os.close(write_fd)
    with os.fdopen(read_fd) as pipe:
        number = pipe.readline().strip()
    try:
        if not number:
            pytest.fail(f"Xvfb did not start (exit code {server.poll()})")
        yield f":{number}"
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_screenshot_shows_the_coloured_structure(tiny_esm2_path, tiny_sae_path, tiny_db_path, x_display, tmp_path):
    import imageio.v3 as iio

    env = dict(os.environ, DISPLAY=x_display, QT_QPA_PLATFORM="xcb", INTERPLM_CACHE_DIR=str(tmp_path / "cache"))
    args = [str(tmp_path), "--model", str(tiny_esm2_path), "--sae", str(tiny_sae_path), "--database", str(tiny_db_path)]
    result = subprocess.run(
        [sys.executable, str(HERE / "napari_screenshot.py"), *args], env=env, capture_output=True, text=True, timeout=180
    )
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    canvas = iio.imread(tmp_path / "canvas.png")[..., :3]
    background = canvas.reshape(-1, 3)[0]
    foreground = (canvas != background).any(axis=-1).mean()
    colours = len(np.unique(canvas.reshape(-1, 3), axis=0))
    assert foreground > 0.05 and colours > 200, (foreground, colours)
    window = iio.imread(tmp_path / "window.png")
    assert window.shape[0] > canvas.shape[0] or window.shape[1] > canvas.shape[1]
    if os.environ.get("INTERPLM_SCREENSHOT_DIR"):  # how docs/images/ gets its napari screenshot
        shutil.copy(tmp_path / "window.png", Path(os.environ["INTERPLM_SCREENSHOT_DIR"]) / "napari_color_by_feature.png")
