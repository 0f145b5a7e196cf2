"""The PyMOL plugin on the structures structural biologists bring, built here from real ones: a
fusion protein coloured on its insert, a complex with one or several references, a water numbered
like a residue, AlphaFold pLDDT kept and restored, errors that name the file and the chain."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pymol import CmdException, cmd

from interplm_plugins.core.inputs.structure import read_structure
from interplm_plugins.core.interpret.chains import chain_activations
from interplm_plugins.pymol_plugin import commands
from interplm_plugins.pymol_plugin.mapping import NEUTRAL_COLOR

from test_pymol_plugin import HPV, session  # noqa: F401  (PyMOL's 1hpv.pdb; the emptied global session fixture)


@pytest.fixture(scope="session")
def calmodulin(shared_data) -> Path:
    return shared_data / "structures" / "P0DP23_3WFN_calm1.pdb"


def chain_atoms(path: Path, chain: str) -> list[str]:
    """The ATOM records of one chain of a PDB file (first model)."""
    lines = []
    for line in path.read_text().splitlines():
        if line.startswith("ENDMDL"):
            break
        if line.startswith("ATOM") and line[21] == chain:
            lines.append(line)
    return lines


def renumbered(atoms: list[str], chain: str, first: int) -> list[str]:
    """``atoms`` moved to ``chain``, their residues numbered ``first``, ``first + 1``, ... in order."""
    out, numbers = [], {}
    for line in atoms:
        number = numbers.setdefault(line[22:27], first + len(numbers))
        out.append(f"{line[:21]}{chain}{number:4d} {line[27:]}")
    return out


def write_pdb(path: Path, *blocks: list[str]) -> Path:
    path.write_text("\n".join(line for block in blocks for line in block) + "\nEND\n")
    return path


def painted(selection: str) -> dict[tuple[str, str, str, bool], tuple[set, set]]:
    """Per (chain, resi, resn, HETATM), the set of b-factors and the set of colours of its atoms."""
    rows: list = []
    cmd.iterate(selection, "rows.append(((chain, resi, resn, type == 'HETATM'), b, color))", space={"rows": rows})
    table: dict = {}
    for key, b, color in rows:
        bs, colors = table.setdefault(key, (set(), set()))
        bs.add(round(b, 4))
        colors.add(color)
    return table


def expected_values(pipeline, chain, feature: int, reference: str | None = None) -> dict[str, float]:
    values = chain_activations(pipeline, chain, reference=reference).feature_values(feature)
    return {r.label: float(v) for r, v in zip(chain.residues, values) if not np.isnan(v)}


def hpv_sequence() -> str:
    return read_structure(HPV)[0].sequence


def test_fusion_insert_colours_against_its_own_reference(session, tiny_pipeline, calmodulin, tmp_path):
    # a receptor-lysozyme-style fusion: calmodulin (148 residues) then HIV protease numbered from 1002
    insert = renumbered(chain_atoms(HPV, "A"), "R", 1002)
    fusion = write_pdb(tmp_path / "fusion.pdb", renumbered(chain_atoms(calmodulin, "A"), "R", 1), insert)
    fasta = tmp_path / "protease.fasta"
    fasta.write_text(f">P04585_PR\nPQ{hpv_sequence()}FNF\n")  # the protease with a few flanking residues
    cmd.load(str(fusion), "fusion")
    with pytest.raises(CmdException, match=r"of 2\d\d residues align"):  # the whole chain is mostly calmodulin
        commands.interplm("color fusion", feature=5, uniprot=str(fasta))
    summary = commands.interplm("color fusion and chain R and resi 1002-1100", feature=5, uniprot=str(fasta))
    expected = {str(1002 + i): v for i, v in enumerate(tiny_pipeline.activations(f"PQ{hpv_sequence()}FNF")[2:101, 5])}
    assert summary["mapped"] == 99
    assert {r["resi"]: r["value"] for r in summary["residues"]} == pytest.approx(expected, abs=1e-5)
    assert {r["position"] for r in summary["residues"]} == set(range(2, 101))
    assert summary["references"] == "chain R = P04585_PR"


def complex_pdb(tmp_path: Path, calmodulin: Path) -> Path:
    """HIV protease chain A and calmodulin as chain B of one file."""
    return write_pdb(tmp_path / "complex.pdb", chain_atoms(HPV, "A"), renumbered(chain_atoms(calmodulin, "A"), "B", 1))


def test_complex_colours_the_chain_that_matches_and_greys_the_other(session, tiny_pipeline, calmodulin, tmp_path, capsys):
    path = complex_pdb(tmp_path, calmodulin)
    cmd.load(str(path), "cpx")
    protease = hpv_sequence()
    summary = commands.interplm("color cpx", feature=5, uniprot=protease)
    chain_a = read_structure(path)[0]
    assert {r["resi"]: r["value"] for r in summary["residues"] if r["chain"] == "A"} == pytest.approx(
        expected_values(tiny_pipeline, chain_a, 5, reference=protease), abs=1e-5
    )
    assert all(r["value"] is None for r in summary["residues"] if r["chain"] == "B")
    neutral = cmd.get_color_index(NEUTRAL_COLOR)
    assert {c for key, (_, colors) in painted("cpx and chain B").items() for c in colors} == {neutral}
    assert "chain A = uniprot, chain B matches no reference (grey)" in capsys.readouterr().out


def test_complex_with_a_multi_record_fasta_matches_each_chain(session, tiny_pipeline, calmodulin, tmp_path, shared_data):
    from interplm_plugins.core.inputs.sequences import read_fasta

    path = complex_pdb(tmp_path, calmodulin)
    full_calm = next(r.sequence for r in read_fasta(shared_data / "sequences" / "swissprot_train.fasta") if r.id == "P0DP23")
    fasta = tmp_path / "complex.fasta"
    fasta.write_text(f">P0DP23\n{full_calm}\n>PR\n{hpv_sequence()}\n")
    cmd.load(str(path), "cpx")
    summary = commands.interplm("color cpx", feature=7, uniprot=str(fasta))
    chain_a, chain_b = read_structure(path)
    got = {(r["chain"], r["resi"]): r["value"] for r in summary["residues"]}
    want = {("A", k): v for k, v in expected_values(tiny_pipeline, chain_a, 7, reference=hpv_sequence()).items()}
    want |= {("B", k): v for k, v in expected_values(tiny_pipeline, chain_b, 7, reference=full_calm).items()}
    assert {k: v for k, v in got.items() if v is not None} == pytest.approx(want, abs=1e-5)
    assert len(want) > 230 and summary["references"] == "chain A = PR, chain B = P0DP23"


def test_water_numbered_like_a_residue_keeps_its_own_b_and_grey(session, tiny_pipeline, tmp_path):
    protein = chain_atoms(HPV, "A")
    water = "HETATM 9999  O   HOH A  10      10.000  10.000  10.000  1.00 42.00           O"
    free_thr = ["HETATM" + line[6:] for line in protein if line[22:26] == "  26"]
    path = write_pdb(tmp_path / "water.pdb", protein, [water], free_thr)  # and a free Thr ligand numbered like Thr 26
    cmd.load(str(path), "wat")
    summary = commands.interplm("color wat", feature=3)
    values = expected_values(tiny_pipeline, read_structure(path)[0], 3)
    table = painted("wat")
    neutral = cmd.get_color_index(NEUTRAL_COLOR)
    assert table[("A", "10", "HOH", True)] == ({42.0}, {neutral})
    assert table[("A", "10", "LEU", False)][0] == {round(values["10"], 4)}
    ligand_b = {float(line[60:66]) for line in free_thr}
    assert table[("A", "26", "THR", True)] == (ligand_b, {neutral})
    assert table[("A", "26", "THR", False)][0] == {round(values["26"], 4)} != ligand_b
    assert summary["mapped"] == 99


def test_plddt_survives_colouring_and_comes_back_with_restore(session, tiny_pipeline, shared_data, capsys):
    path = shared_data / "structures" / "O14313_AF.pdb"  # AlphaFold model: pLDDT in the b-factors
    cmd.load(str(path), "af")
    cmd.color("green", "af")
    before = painted("af")
    plddt = {key: bs for key, (bs, _) in before.items()}
    assert len({b for bs in plddt.values() for b in bs}) > 20  # real, varied pLDDT
    commands.interplm("color af", feature=3)
    commands.interplm("color af and resi 1-50", feature=9)  # twice: the originals are still the pLDDT
    assert painted("af") != before
    cmd.do("interplm restore af and resi 1-100")
    after = painted("af")
    assert {k: v for k, v in after.items() if int(k[1]) <= 100} == {k: v for k, v in before.items() if int(k[1]) <= 100}
    assert "restored" in capsys.readouterr().out
    commands.interplm("restore")
    assert painted("af") == before
    # reloaded under the same name: its b-factors are taken afresh, not the old object's
    commands.interplm("color af", feature=3)
    cmd.delete("af")
    cmd.load(str(path), "af")
    cmd.alter("af", "b = 50.0")
    commands.interplm("color af", feature=3)
    commands.interplm("restore af")
    assert {b for bs, _ in painted("af").values() for b in bs} == {50.0}


def test_cli_mismatch_names_the_file_and_the_chains(tiny_pipeline, tiny_esm2_path, tiny_sae_path, tiny_db_path, tmp_path, capsys):
    from interplm_plugins.cli import main

    argv = ["color", str(HPV), "--feature", "3", "--out", str(tmp_path / "x.png"), "--uniprot", "MKTAYIAKQRQISFVKSHFSRQ",
            "--model", str(tiny_esm2_path), "--sae", str(tiny_sae_path), "--db", str(tiny_db_path)]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"interplm: error: {HPV}: ") and "chain A: " in err and "chain B: " in err
    assert "structure" not in err.replace("structure sequence", "") and "\n" not in err
    assert not (tmp_path / "x.png").exists()


def test_mutate_colours_by_the_largest_drop_and_writes_the_table(session, tiny_pipeline, tmp_path):
    import pandas as pd

    from interplm_plugins.core.interpret.mutate import mutation_scan

    cmd.load(str(HPV), "hpv")
    sequence = hpv_sequence()
    feature = int(tiny_pipeline.activations(sequence)[24:27].sum(axis=0).argmax())  # active around Asp 25
    out = tmp_path / "scan.csv"
    table = commands.interplm("mutate hpv and chain A and resi 25-27", feature=feature, out=str(out))
    expected = mutation_scan(tiny_pipeline, sequence, feature, positions=[24, 25, 26])
    pd.testing.assert_frame_equal(table[expected.columns], expected)
    assert pd.read_csv(out)["resi"].astype(str).tolist() == table["resi"].tolist() and len(table) == 57
    b = painted("hpv and chain A and resi 24-28")
    for resi in ("25", "26", "27"):
        drop = max(0.0, -expected.loc[expected.position == int(resi), "site_change"].min())
        assert next(bs for key, (bs, _) in b.items() if key[1] == resi) == {round(drop, 4)}
    assert drop > 0 or (expected["site_change"] < 0).any()
    neutral = cmd.get_color_index(NEUTRAL_COLOR)
    assert {c for key, (_, colors) in b.items() if key[1] in ("24", "28") for c in colors} != {neutral}  # not in the selection: untouched


@pytest.mark.parametrize(
    ("command", "kwargs", "message"),
    [("top hpv", {"k": 0}, "k must be 1 or more"), ("top hpv", {"k": -3}, "k must be 1 or more"),
     ("concept Helix", {"k": 0}, "k must be 1 or more"), ("color hpv", {"feature": 1, "scale": "log"}, "unknown scale"),
     ("mutate hpv", {"feature": 1, "to": "XYZ"}, "not an amino acid"), ("mutate hpv", {}, "which feature"),
     ("restore hpv and nosuch", {}, "invalid selection")],
)  # fmt: skip
def test_argument_errors(session, command, kwargs, message):
    cmd.load(str(HPV), "hpv")
    with pytest.raises(CmdException, match=message):
        commands.interplm(command, **kwargs)


def test_completion_offers_values_of_every_argument(session, tiny_pipeline, tmp_path, monkeypatch):
    cmd.load(str(HPV), "hpv")
    (tmp_path / "P00720.fasta").write_text(">P00720\nMNIFEMLRIDEGLRLKIYKDTEGYYTIGIGHLLTKSPSLNAAK\n")
    (tmp_path / "my_sae.safetensors").write_bytes(b"")
    monkeypatch.chdir(tmp_path)
    complete = cmd._parser.complete
    assert complete("interplm mu") == "interplm mutate "
    assert complete("interplm color hpv, palette=white_r") == "interplm color hpv, palette=white_red"
    assert complete("interplm color hpv, feature=3, sca") == "interplm color hpv, feature=3, scale="
    assert complete("interplm color hpv, feature=3, scale=ch") == "interplm color hpv, feature=3, scale=chain"
    assert complete("interplm color hpv, uniprot=P0") == "interplm color hpv, uniprot=P00720.fasta"
    assert complete("interplm mutate hpv, feature=63") == "interplm mutate hpv, feature=63"
    assert complete("interplm mutate hpv, feature=3, to=TR") == "interplm mutate hpv, feature=3, to=TRP"
    assert complete("interplm use my_s") == "interplm use my_sae.safetensors "
    names = tiny_pipeline.database.concept_names()
    concept = next(c for c in names if sum(n.startswith(c[:5]) for n in names) == 1 and " " not in c[:5])
    assert complete(f"interplm concept {concept[:5]}") == f"interplm concept {concept} "


def test_help_documents_every_keyword_of_every_action():
    import re

    doc = commands.interplm.__doc__
    for name, function in commands.SUBCOMMANDS.items():
        assert f"interplm {name}" in doc
        for parameter in commands._public_parameters(function):
            if parameter not in ("what", "path"):
                assert re.search(rf"^ {{4}}(\w+, )*{parameter}(, \w+)* = ", doc, re.M) or parameter == "name" and "    NAME = " in doc, (name, parameter)


def test_chain_scale_stretches_each_chain_to_its_maximum(session, tiny_pipeline, calmodulin, tmp_path):
    from interplm_plugins.pymol_plugin.mapping import DEFAULT_PALETTE, palette_rgb, value_colors

    path = complex_pdb(tmp_path, calmodulin)
    cmd.load(str(path), "cpx")
    chains = read_structure(path)
    tops = np.min([tiny_pipeline.activations(c.sequence).max(axis=0) for c in chains], axis=0)
    feature = int(tops.argmax())  # active on both chains, to different maxima
    summary = commands.interplm("color cpx", feature=feature, scale="chain")
    rgb = palette_rgb(DEFAULT_PALETTE, cmd)
    table = painted("cpx and polymer.protein")
    for chain in chains:
        values = expected_values(tiny_pipeline, chain, feature)
        top = max(values.values())
        assert top > 0 and min(abs(top - t) for t in summary["scale_max"]) < 1e-5
        for resi, value in values.items():
            bs, colors = table[(chain.chain_id, resi, next(r.resn for r in chain.residues if r.label == resi), False)]
            assert bs == {round(value, 4)}  # the b-factor keeps the activation itself
            assert colors == {int(value_colors(np.array([value / top]), rgb)[0])}
