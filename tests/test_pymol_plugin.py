"""The PyMOL plugin, run in real headless PyMOL: the ``interplm`` command, residue mapping, the
headless renderer and ``interplm color`` CLI, the Qt panel's data, and plugin discovery."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import pymol  # noqa: E402  (a test dependency: the [pymol] extra)
from pymol import CmdException, cmd  # noqa: E402

from interplm_plugins.core.interpret.chains import chain_activations  # noqa: E402
from interplm_plugins.session import current_pipeline
from interplm_plugins.core.inputs.sequences import read_fasta  # noqa: E402
from interplm_plugins.core.inputs.structure import read_structure  # noqa: E402
from interplm_plugins.pymol_plugin import commands  # noqa: E402
from interplm_plugins.pymol_plugin.mapping import DEFAULT_PALETTE, NEUTRAL_COLOR, palette_rgb, supports_properties, value_colors  # noqa: E402

PYMOL_DATA = Path(pymol.__file__).resolve().parent / "pymol_path" / "data"
HPV = PYMOL_DATA / "tut" / "1hpv.pdb"  # HIV protease: chains A, B, an inhibitor and water on a blank chain


@pytest.fixture()
def session(tiny_pipeline):
    """PyMOL's global session, emptied before and after, with the tiny pipeline as the session's."""
    cmd.reinitialize()
    yield cmd
    cmd.reinitialize()


@pytest.fixture(scope="session")
def manifest(shared_data) -> dict[str, dict[str, str]]:
    with open(shared_data / "structures" / "manifest.tsv") as fh:
        return {row["file"]: row for row in csv.DictReader(fh, delimiter="\t")}


@pytest.fixture(scope="session")
def swissprot(swissprot_fasta) -> dict[str, str]:
    return {r.id: r.sequence for r in read_fasta(swissprot_fasta)}


def residue_table(selection: str, fields: str = "b") -> dict[tuple[str, str, str], list]:
    """Per (object, chain, resi), the list of per-atom values of ``fields`` (a Python expression)."""
    rows: list = []
    cmd.iterate(selection, f"rows.append(((model, chain, resi), {fields}))", space={"rows": rows})
    table: dict = {}
    for key, value in rows:
        table.setdefault(key, []).append(value)
    return table


def file_values(pipeline, path: Path, object_name: str, feature: int, reference: str | None = None) -> dict[tuple[str, str, str], float]:
    """The activations Biopython's reading of the file gives each residue (the reference mapping)."""
    values = {}
    for chain in read_structure(path):
        acts = chain_activations(pipeline, chain, reference=reference).feature_values(feature)
        for residue, value in zip(chain.residues, acts):
            if not np.isnan(value):
                values[(object_name, residue.chain, residue.label)] = float(value)
    return values


def strongest_feature(pipeline, path: Path) -> int:
    """A feature with some spread on the file's first chain, so colours differ between residues."""
    acts = pipeline.activations(read_structure(path)[0].sequence)
    return int(np.argmax(acts.max(axis=0) - acts.min(axis=0)))


def assert_painted(selection: str, before: dict, expected: dict) -> None:
    """Atoms of residues in ``expected`` carry their value in the b-factor and its palette colour;
    the other atoms of ``selection`` keep their b-factor (``before``) and are grey."""
    rgb = palette_rgb(DEFAULT_PALETTE, cmd)
    neutral = cmd.get_color_index(NEUTRAL_COLOR)
    after = residue_table(selection, "(b, color)")
    assert set(after) == set(before)
    for key, atoms in after.items():
        bs, colors = (np.array(x) for x in zip(*atoms))
        if key in expected:
            np.testing.assert_allclose(bs, expected[key], atol=1e-5, err_msg=str(key))
            assert set(colors.tolist()) == {int(value_colors(np.array([expected[key]]), rgb)[0])}, key
        else:
            np.testing.assert_allclose(bs, before[key], err_msg=str(key))
            assert set(colors.tolist()) == {neutral}, key


def odd_numbering_pdb(out: Path) -> Path:
    """Chain A of 1hpv as real files come: numbering shifted to start at -19, an insertion code
    (49 -> 29, 50 -> 29A), residues 60-62 unmodelled, Met 46 as a HETATM selenomethionine, residue
    70 in two alternate locations, the inhibitor and waters, two models (NMR style)."""
    atoms = []
    for line in HPV.read_text().splitlines():
        if line.startswith("HETATM"):
            atoms.append(line)
        if not (line.startswith("ATOM") and line[21] == "A") or 60 <= int(line[22:26]) <= 62:
            continue
        resi = int(line[22:26])
        number, icode = (29, "A") if resi == 50 else (resi - 20, " ")
        record, resn = ("HETATM", "MSE") if resi == 46 else ("ATOM  ", line[17:20])
        atom = f"{record}{line[6:17]}{resn}{line[20:22]}{number:4d}{icode}{line[27:]}"
        if resi == 70:
            atoms.append(atom[:16] + "A" + atom[17:])
            atom = f"{atom[:16]}B{atom[17:30]}{float(atom[30:38]) + 0.4:8.3f}{atom[38:]}"
        atoms.append(atom)
    shifted = [f"{a[:30]}{float(a[30:38]) + 1.0:8.3f}{a[38:]}" for a in atoms]
    out.write_text("\n".join(["MODEL        1", *atoms, "ENDMDL", "MODEL        2", *shifted, "ENDMDL", "END", ""]))
    return out


# -- the command ----------------------------------------------------------------------------------


def test_color_writes_each_chains_activations_and_greys_the_rest(session, tiny_pipeline):
    cmd.load(str(HPV), "hpv")
    feature = strongest_feature(tiny_pipeline, HPV)
    before = residue_table("hpv")
    cmd.do(f"interplm color hpv, feature={feature}")
    expected = file_values(tiny_pipeline, HPV, "hpv", feature)
    assert {chain for _, chain, _ in expected} == {"A", "B"} and len(expected) == 198
    assert_painted("hpv", before, expected)
    # the inhibitor and the waters got no value
    assert cmd.count_atoms("hpv and not polymer") > 50
    assert not set(residue_table("hpv and not polymer")) & set(expected)
    assert not supports_properties(cmd)  # open-source PyMOL: the b-factor is the only store


def test_recolour_reuses_cached_activations(session, tiny_pipeline):
    cmd.load(str(HPV), "hpv")
    commands.interplm("color", "hpv", feature=3)
    misses = tiny_pipeline.cache.misses
    before = residue_table("hpv")
    summary = commands.interplm("color hpv and chain B", feature="5", palette="white_red")
    assert tiny_pipeline.cache.misses == misses  # no model run for the second feature
    values = {k: v for k, v in file_values(tiny_pipeline, HPV, "hpv", 5).items() if k[1] == "B"}
    assert {(r["object"], r["chain"], r["resi"]): r["value"] for r in summary["residues"]} == pytest.approx(values)
    after = residue_table("hpv")
    for key, bs in after.items():
        np.testing.assert_allclose(bs, values[key] if key in values else before[key], atol=1e-5)


def test_odd_numbering_insertions_altlocs_models_and_hetero_residues(session, tiny_pipeline, tmp_path):
    path = odd_numbering_pdb(tmp_path / "odd.pdb")
    cmd.load(str(path), "odd")
    assert cmd.count_states("odd") == 2
    feature = strongest_feature(tiny_pipeline, path)
    before = residue_table("odd")
    summary = commands.interplm("color odd", feature=feature)
    expected = file_values(tiny_pipeline, path, "odd", feature)
    assert len(expected) == 96 and summary["mapped"] == 96  # 99 residues, 3 unmodelled
    for label in ("-19", "29", "29A", "26", "50"):  # negative, insertion code, MSE, alternate locations
        assert ("odd", "A", label) in expected
    assert not {("odd", "A", label) for label in ("40", "41", "42")} & set(expected)
    assert_painted("odd", before, expected)
    assert set(residue_table("odd and resi 50", "alt")[("odd", "A", "50")]) == {"A", "B"}  # both locations painted
    # residues in file order: the same chain as Biopython reads
    assert [r["resi"] for r in summary["residues"]] == [r.label for r in read_structure(path)[0].residues]


def test_uniprot_reference_lands_on_full_length_positions(session, tiny_pipeline, shared_data, manifest, swissprot, tmp_path):
    name = "P0DP23_3WFN_calm1.pdb"  # calmodulin: PDB numbering = UniProt - (-6), an N-terminal tag, ions
    path, row = shared_data / "structures" / name, manifest[name]
    full = swissprot[row["uniprot_accession"]]
    fasta = tmp_path / "calm.fasta"
    fasta.write_text(f">{row['uniprot_accession']}\n{full}\n")
    cmd.load(str(path), "calm")
    feature = strongest_feature(tiny_pipeline, path)
    before = residue_table("calm")
    summary = commands.interplm("color", "calm", feature=feature, uniprot=str(fasta))
    expected = file_values(tiny_pipeline, path, "calm", feature, reference=full)
    assert_painted("calm", before, expected)
    acts = tiny_pipeline.activations(full)
    offset = int(row["uniprot_pos_equals_resnum_plus"])
    manifest_index = {key: int(key[2]) + offset - 1 for key in expected}
    agree = [abs(v - acts[manifest_index[key], feature]) < 1e-5 for key, v in expected.items() if 0 <= manifest_index[key] < len(full)]
    assert len(agree) >= 140 and np.mean(agree) > 0.95  # the tag's residues may align anywhere
    assert {r["position"] for r in summary["residues"] if r["value"] is not None} <= set(range(len(full)))


def test_uniprot_as_raw_sequence_with_offset_numbering_and_altlocs(session, tiny_pipeline, shared_data, manifest, swissprot):
    name = "P02794_4Y08.pdb"  # ferritin: PDB 0-182 = UniProt 1-183, alternate locations, metal ions
    path, row = shared_data / "structures" / name, manifest[name]
    full = swissprot[row["uniprot_accession"]]
    cmd.load(str(path), "ferritin")
    before = residue_table("ferritin")
    cmd.do(f"interplm color ferritin, feature=7, uniprot={full}")
    expected = file_values(tiny_pipeline, path, "ferritin", 7, reference=full)
    assert_painted("ferritin", before, expected)
    acts = tiny_pipeline.activations(full)
    for (_, _, resi), value in expected.items():
        assert value == pytest.approx(acts[int(resi) + int(row["uniprot_pos_equals_resnum_plus"]) - 1, 7], abs=1e-5)


def test_partial_selection_of_one_object_embeds_whole_chains(session, tiny_pipeline):
    cmd.load(str(HPV), "copy1")
    cmd.load(str(HPV), "copy2")
    before = residue_table("all")
    summary = commands.interplm("color copy1 and chain B and resi 10-20", feature=4)
    assert summary["mapped"] == 11
    whole_chain = file_values(tiny_pipeline, HPV, "copy1", 4)  # values with the whole chain as context
    for key, bs in residue_table("all").items():
        painted = key[0] == "copy1" and key[1] == "B" and 10 <= int(key[2]) <= 20
        np.testing.assert_allclose(bs, whole_chain[key] if painted else before[key], atol=1e-5)


def test_top_ranks_features_on_selected_residues(session, tiny_pipeline, capsys):
    cmd.load(str(HPV), "hpv")
    cmd.select("sele", "hpv and chain A and resi 25-27")
    hits = commands.interplm("top", k=5)  # defaults to PyMOL's "sele"
    acts = tiny_pipeline.activations(read_structure(HPV)[0].sequence)
    expected = tiny_pipeline.database.features_active_at(acts, [24, 25, 26], k=5)
    assert [h.feature for h in hits] == [h.feature for h in expected] and len(hits) == 5
    assert [h.score for h in hits] == pytest.approx([h.score for h in expected])
    cmd.do("interplm top hpv and chain A and resi 25-27, k=3")
    out = capsys.readouterr().out
    assert "best concept" in out and str(hits[0].feature) in out and "Traceback" not in out


def test_concept_colours_by_the_best_matching_feature(session, tiny_pipeline):
    db = tiny_pipeline.database
    # a name with spaces and a colon, as Swiss-Prot's are ("Binding site: ATP")
    name = next(c for c in db.concept_names() if ": " in c and db.features_for_concept(c, k=1))
    best = db.features_for_concept(name, k=5)
    cmd.load(str(HPV), "hpv")
    before = residue_table("hpv")
    matches = commands.interplm(f"concept {name}", "hpv")
    assert [m.feature for m in matches] == [m.feature for m in best]
    assert_painted("hpv", before, file_values(tiny_pipeline, HPV, "hpv", best[0].feature))


@pytest.mark.parametrize(
    ("command", "kwargs", "message"),
    [
        ("color hpv", {"feature": 64}, "feature 64 does not exist"),
        ("color hpv", {"feature": "x"}, "feature must be an integer"),
        ("color hpv", {}, "which feature"),
        ("color hpv and resn XYZ", {"feature": 1}, "has no atoms"),
        ("color hpv and resn HOH", {"feature": 1}, "no protein residues"),
        ("color hpv and nosuchname", {"feature": 1}, "invalid selection"),
        ("color hpv", {"feature": 1, "palette": "nocolour_atall"}, "unknown palette"),
        ("color hpv", {"feature": 1, "uniprot": "MKTAYIAKQRQISFVKSHFSRQ"}, "does not match the reference"),
        ("color hpv", {"feature": 1, "colour": 2}, "unknown argument 'colour'"),
        ("concept no such concept at all", {}, "no concept is named like it"),
        ("use sea /x", {}, "usage: interplm use"),
        ("paint hpv", {}, "unknown subcommand 'paint'"),
    ],
)
def test_errors_are_one_line_cmd_exceptions(session, command, kwargs, message, capsys):
    cmd.load(str(HPV), "hpv")
    with pytest.raises(CmdException, match=message) as err:
        commands.interplm(command, **kwargs)
    assert "\n" not in str(err.value).strip()
    # typed at the prompt: PyMOL prints the one line, no traceback
    cmd.do(f"interplm {command}" + "".join(f", {k}={v}" for k, v in kwargs.items()))
    out = capsys.readouterr().out
    assert message.split("'")[0] in out and "Traceback" not in out


def test_use_and_info_switch_the_session_pipeline(session, tiny_pipeline, tiny_sae_path, tiny_db_path, capsys):
    described = commands.interplm("info")
    assert described["database"] == str(tiny_db_path) and "64 features" in described["sae"]
    cmd.do(f"interplm use sae {tiny_sae_path}")
    assert current_pipeline() is not tiny_pipeline and current_pipeline().sae_hash == tiny_pipeline.sae_hash
    assert "interplm       sae" in capsys.readouterr().out
    with pytest.raises(CmdException, match="no such"):
        commands.interplm("use db", str(tiny_db_path) + ".missing")
    assert current_pipeline().database_path == tiny_db_path  # a failed switch changes nothing


def test_use_refuses_a_database_of_another_sae_unless_allowed(session, tiny_pipeline, tiny_sae_path, tiny_db_path, tmp_path, capsys):
    from interplm_plugins.core.sae.files import load_sae, save_sae

    other = load_sae(tiny_sae_path)
    other.encoder.bias.data.add_(0.01)  # same width and PLM, another SAE
    other_path = save_sae(other, tmp_path / "other.safetensors")
    with pytest.raises(CmdException, match="database was built with SAE .*allow_mismatch=1"):
        commands.interplm(f"use sae={other_path}")
    assert current_pipeline() is tiny_pipeline  # a refused switch changes nothing
    commands.interplm(f"use sae={other_path}", allow_mismatch="1")
    assert current_pipeline().sae_hash != tiny_pipeline.sae_hash and current_pipeline().database_path == tiny_db_path


def test_first_argument_may_be_a_keyword_or_a_selection_with_an_equals_sign(session, tiny_pipeline):
    cmd.load(str(HPV), "hpv")
    summary = commands.interplm("color b = 31", feature=3)  # a selection (the CA of Pro A1 has b 31.0), not a keyword
    assert {"resi": "1", "chain": "A"}.items() <= next(r for r in summary["residues"] if r["resi"] == "1").items()
    assert commands.interplm("color feature=3")["mapped"] == 198  # "interplm color feature=3": all


def test_prompt_completes_subcommands_selections_and_keywords(session):
    cmd.load(str(HPV), "hpv")
    assert cmd._parser.complete("interplm to") == "interplm top "
    assert cmd._parser.complete("interplm color hp") == "interplm color hpv "
    assert cmd._parser.complete("interplm color hpv, fea") == "interplm color hpv, feature="


# -- headless pictures ----------------------------------------------------------------------------


def picture_colours(png: Path, legend_rows: int = 0) -> tuple[int, float]:
    """Distinct colours and the fraction of non-background pixels in a PNG (above the legend)."""
    from PIL import Image

    pixels = np.asarray(Image.open(png).convert("RGB"))
    picture = pixels[: pixels.shape[0] - legend_rows].reshape(-1, 3)
    background = np.all(picture == picture[0], axis=1)  # the corner is background
    return len(np.unique(picture[~background], axis=0)), float((~background).mean())


def test_cli_renders_a_coloured_png(session, tiny_pipeline, tiny_esm2_path, tiny_sae_path, tiny_db_path, tmp_path, capsys):
    from PIL import Image

    from interplm_plugins.cli import main

    out = tmp_path / "pics" / "hpv_feature.png"
    argv = ["color", str(HPV), "--feature", "3", "--out", str(out), "--width", "320", "--height", "240",
            "--model", str(tiny_esm2_path), "--sae", str(tiny_sae_path), "--db", str(tiny_db_path)]  # fmt: skip
    assert main(argv) == 0
    assert Image.open(out).size == (320, 240)
    colours, covered = picture_colours(out, legend_rows=48)
    assert colours > 50 and covered > 0.05  # a shaded, coloured protein, not a blank frame
    assert f"{out}: feature 3" in capsys.readouterr().out
    assert not list(out.parent.glob(".*.tmp"))  # written atomically: no temporary file left
    assert main(["color", str(tmp_path / "missing.pdb"), "--feature", "3", "--out", str(out)]) == 2
    assert "no such structure file" in capsys.readouterr().err


def test_render_one_chain_with_reference_returns_values(session, tiny_pipeline, shared_data, manifest, swissprot, tmp_path):
    from interplm_plugins.pymol_plugin.render import render_feature_png

    name = "P15802_2X1C.pdb"  # four copies of one protein; colour chain B only
    full = swissprot[manifest[name]["uniprot_accession"]]
    out = tmp_path / "chainB.png"
    result = render_feature_png(shared_data / "structures" / name, 9, out, chain="B", reference=full, width=240, height=200, palette="white_red")
    chain_b = next(c for c in read_structure(shared_data / "structures" / name) if c.chain_id == "B")
    expected = chain_activations(tiny_pipeline, chain_b, reference=full).feature_values(9)
    assert [r["chain"] for r in result["residues"]] == ["B"] * len(chain_b)
    got = np.array([np.nan if r["value"] is None else r["value"] for r in result["residues"]])
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert result["png"] == str(out) and picture_colours(out, legend_rows=48)[0] > 20
    assert cmd.get_names() == []  # rendered in its own PyMOL instance: the session is untouched


# -- the panel ------------------------------------------------------------------------------------


@pytest.fixture()
def annotated_db(tiny_pipeline, tiny_db_path, tmp_path):
    """A copy of the tiny database with clusters and one description, made the session's database."""
    import shutil

    import pandas as pd

    from interplm_plugins.core.database.build import update_feature_database
    from interplm_plugins.session import use_pipeline

    path = shutil.copy(tiny_db_path, tmp_path / "annotated.sqlite")
    features = np.arange(64)
    clusters = pd.DataFrame({"feature": features, "cluster": features % 4, "x": np.cos(features), "y": np.sin(features)})
    descriptions = pd.DataFrame({"feature": [7], "model": ["test"], "description": ["Fires on the catalytic aspartate loop."]})
    update_feature_database(path, clusters=clusters, descriptions=descriptions)
    return use_pipeline(database=str(path))


def test_feature_details_gather_what_the_database_knows(annotated_db):
    from interplm_plugins.pymol_plugin.panel import example_context, feature_details

    db = annotated_db.database
    details = feature_details(7)
    assert details.description == "Fires on the catalytic aspartate loop." and details.description in details.summary()
    assert [m.concept for m in details.concepts] == [m.concept for m in db.concepts_for_feature(7, k=5)]
    assert [e.protein_id for e in details.examples] == [e.protein_id for e in db.top_examples(7, k=5)]
    assert details.neighbours == db.cluster_neighbours(7, k=10) and len(details.neighbours) == 10
    assert all(f % 4 == 3 for f in details.neighbours)
    example = details.examples[0]
    assert f"[{example.sequence[example.argmax_position]}]" in example_context(example)


def test_panel_under_offscreen_qt_searches_shows_and_colours(session, annotated_db, qtbot):
    from interplm_plugins.pymol_plugin.panel import InterPLMPanel, feature_details

    db = annotated_db.database
    panel = InterPLMPanel()
    qtbot.addWidget(panel)
    assert "annotated.sqlite" in panel.pipeline_label.text() and panel.feature_box.maximum() == 63

    concept = next(c for c in db.concept_names() if db.features_for_concept(c, k=1))
    hits = panel.search(concept)
    assert panel.results.count() == len(hits) > 0
    panel.results.itemClicked.emit(panel.results.item(0))  # picking a search hit shows that feature
    assert panel.feature_box.value() == hits[0].feature
    details = feature_details(hits[0].feature)
    assert panel.concepts_table.rowCount() == len(details.concepts)
    assert panel.concepts_table.item(0, 0).text() == details.concepts[0].concept
    assert panel.examples_table.item(0, 0).text() == details.examples[0].protein_id
    assert [panel.neighbours.item(i).text() for i in range(panel.neighbours.count())] == [f"feature {f}" for f in details.neighbours]

    cmd.load(str(HPV), "hpv")
    panel.selection_edit.setText("hpv and chain A")
    panel.color_button.click()
    expected = {k: v for k, v in file_values(annotated_db, HPV, "hpv", hits[0].feature).items() if k[1] == "A"}
    for key, bs in residue_table("hpv and chain A").items():
        np.testing.assert_allclose(bs, expected[key], atol=1e-5)
    panel.top_button.click()
    assert panel.results.count() > 0 and "active on the selection" in panel.status.text()
    panel.selection_edit.setText("hpv and resn HOH")
    panel.color_button.click()  # an error goes to the status line, not into Qt's event loop
    assert "no protein residues" in panel.status.text()


def test_menu_action_opens_one_panel(session, tiny_pipeline, qtbot):
    from interplm_plugins.pymol_plugin import panel

    opened = panel.open_panel()
    try:
        assert opened.isVisible() and panel.open_panel() is opened
    finally:
        opened.close()
        panel._panel = None


# -- being found by PyMOL -------------------------------------------------------------------------


def test_plugin_manager_file_loads_through_pymols_plugin_loader(session, tmp_path, monkeypatch):
    from pymol import plugins

    from interplm_plugins import __version__
    from interplm_plugins.pymol_plugin.plugin_manager import install_plugin_file

    startup = tmp_path / "startup"
    install_plugin_file(startup)  # what Install New Plugin does with the file
    monkeypatch.setattr(plugins.startup, "__path__", [str(startup), *plugins.startup.__path__])
    found = plugins.findPlugins([str(startup)])
    info = plugins.PluginInfo("interplm_plugin", found["interplm_plugin"], "pmg_tk.startup.interplm_plugin")
    try:
        assert "InterPLM" in info.get_docstring()
        assert info.load(-1)  # imported as PyMOL does at start; no GUI, so no menu item yet
        assert info.get_version() == __version__ and "interplm" in cmd.keyword
        with pytest.raises(plugins.QtNotAvailableError):  # the menu needs PyMOL's Qt window
            info.module.__init_plugin__()
    finally:
        plugins.plugins.pop("interplm_plugin", None)
        sys.modules.pop("pmg_tk.startup.interplm_plugin", None)


def test_pymolrc_line_gives_pml_scripts_the_command(tiny_pipeline, tiny_esm2_path, tiny_sae_path, tiny_db_path, tmp_path):
    # PyMOL reads a pymolrc from the working directory first, then from $HOME: the documented line
    (tmp_path / ".pymolrc.py").write_text("import interplm_plugins.pymol_plugin\n")
    script = tmp_path / "color.pml"
    acts = tiny_pipeline.activations(read_structure(HPV)[0].sequence)
    feature = int(acts[9].argmax())  # active on residue 10 of chain A
    script.write_text("\n".join([
        f"interplm use model={tiny_esm2_path}, sae={tiny_sae_path}, db={tiny_db_path}",
        f"load {HPV}, hpv", f"interplm color hpv, feature={feature}",
        'iterate hpv and chain A and resi 10 and name CA, print("B=%.5f" % b)', "interplm color hpv, feature=99", "",
    ]))  # fmt: skip
    env = {**os.environ, "INTERPLM_CACHE_DIR": str(tmp_path / "cache"), "HOME": str(tmp_path)}
    run = subprocess.run([sys.executable, "-m", "pymol", "-cq", str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    out = run.stdout + run.stderr
    painted = [float(line[2:]) for line in out.splitlines() if line.startswith("B=")]
    # the same value (the other process may read it from the shared disk cache, kept as float16)
    assert acts[9, feature] > 0 and painted == [pytest.approx(acts[9, feature], abs=1e-3)], out
    assert "Error: interplm color: " in out and "feature 99 does not exist" in out and "Traceback" not in out
