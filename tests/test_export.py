"""``interplm export`` (core/interpret/export.py, cli/export.py) and PyMOL's ``interplm export``: TSV, B-factor PDB/mmCIF
and ChimeraX .defattr written from real structures, read back with Biopython and the .defattr grammar."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pymol
import pytest
from Bio.PDB import MMCIFIO, MMCIFParser, PDBParser

from interplm_plugins.cli import main
from interplm_plugins.core.inputs.structure import read_structure
from interplm_plugins.core.interpret.chains import chain_activations

HPV = Path(pymol.__file__).resolve().parent / "pymol_path" / "data" / "tut" / "1hpv.pdb"  # 2 chains, inhibitor, water


def parse_defattr(path: Path) -> dict[str, dict[str, float]]:
    """ChimeraX's attribute-assignment grammar: ``name: value`` control lines, ``<tab>spec<tab>value`` assignments."""
    attributes: dict[str, dict[str, float]] = {}
    current = None
    for line in path.read_text().splitlines():
        if not line or line.startswith("#"):
            continue
        if line.startswith("\t"):
            spec, value = line[1:].split("\t")
            assert current is not None and spec not in attributes[current]
            attributes[current][spec] = float(value)
        else:
            key, _, value = line.partition(": ")
            assert key in ("attribute", "match mode", "recipient"), line
            if key == "attribute":
                current = value
                attributes[current] = {}
            else:
                assert value == {"match mode": "1-to-1", "recipient": "residues"}[key]
    return attributes


def expected_values(pipeline, path: Path, feature: int) -> dict[tuple[str, int, str], float]:
    return {
        (r.chain, r.resi, r.icode): float(v)
        for chain in read_structure(path)
        for r, v in zip(chain.residues, chain_activations(pipeline, chain).feature_values(feature))
    }


def bfactors(path: Path, mmcif: bool = False) -> dict[tuple[str, int, str, bool], set[float]]:
    """Per (chain, resi, icode, hetero), the set of B-factors of its atoms (rounded to 4 decimals)."""
    structure = (MMCIFParser(QUIET=True) if mmcif else PDBParser(QUIET=True)).get_structure("x", str(path))
    out: dict = {}
    for atom in next(iter(structure)).get_atoms():
        residue = atom.get_parent()
        het, number, icode = residue.id
        out.setdefault((residue.get_parent().id, int(number), icode.strip(), het.strip() != ""), set()).add(round(atom.get_bfactor(), 4))
    return out


def firing_features(pipeline, paths: list[Path], k: int = 2) -> list[int]:
    """``k`` features active on every structure in ``paths`` (so the checks see values other than 0)."""
    peaks = [np.max([chain_activations(pipeline, c).activations.max(axis=0) for c in read_structure(p)], axis=0) for p in paths]
    return [int(f) for f in np.argsort(-np.min(peaks, axis=0))[:k]]


@pytest.fixture()
def pipeline_args(tiny_esm2_path, tiny_sae_path):
    return ["--model", str(tiny_esm2_path), "--sae", str(tiny_sae_path)]


def test_export_writes_tsv_bfactor_pdb_and_defattr_for_several_structures(tiny_pipeline, pipeline_args, shared_data, tmp_path, capsys):
    ferritin = shared_data / "structures" / "P02794_4Y08.pdb"
    out = tmp_path / "out"
    features = firing_features(tiny_pipeline, [HPV, ferritin])
    assert main(["export", str(HPV), str(ferritin), "--feature", *map(str, features), "--out", str(out), *pipeline_args]) == 0
    printed = capsys.readouterr().out.split()
    names = sorted(Path(p).name for p in printed)
    suffixes = ["interplm.tsv", "interplm.defattr", *(f"interplm_{f}.pdb" for f in features)]
    assert names == sorted(f"{s}.{suffix}" for s in ("1hpv", "P02794_4Y08") for suffix in suffixes)
    for structure in (HPV, ferritin):
        stem = structure.stem
        table = pd.read_csv(out / f"{stem}.interplm.tsv", sep="\t", keep_default_na=False, dtype={"icode": str, "chain": str})
        assert len(table) == sum(len(c) for c in read_structure(structure))
        attributes = parse_defattr(out / f"{stem}.interplm.defattr")
        assert sorted(attributes) == sorted(f"interplm_{f}" for f in features)
        for feature in features:
            expected = expected_values(tiny_pipeline, structure, feature)
            got = dict(zip(zip(table["chain"], table["resi"], table["icode"]), table[f"interplm_{feature}"]))
            # (the activation cache keeps float16 on disk: a second pipeline may read those)
            assert max(abs(got[k] - v) for k, v in expected.items()) <= 1e-3 and any(v > 0 for v in expected.values())
            # ChimeraX: one assignment per residue, /chain:resi[icode], the table's values
            assert attributes[f"interplm_{feature}"] == pytest.approx({f"/{c}:{n}{i}": v for (c, n, i), v in got.items()}, abs=1e-4)
            # B-factors: every atom of a protein residue carries its value (PDB's column has 2 decimals), ligands and water 0
            for (chain, number, icode, hetero), values in bfactors(out / f"{stem}.interplm_{feature}.pdb").items():
                want = got.get((chain, number, icode))
                assert values == ({round(want, 2)} if want is not None else {0.0}), (chain, number, hetero)
    assert any(key[3] for key in bfactors(out / f"1hpv.interplm_{features[0]}.pdb"))  # the inhibitor and water were written too
    assert not list(out.glob(".*.tmp"))


def test_mmcif_in_gives_mmcif_out(tiny_pipeline, pipeline_args, shared_data, tmp_path):
    cif = tmp_path / "ferritin.cif"
    writer = MMCIFIO()
    writer.set_structure(PDBParser(QUIET=True).get_structure("ferritin", str(shared_data / "structures" / "P02794_4Y08.pdb")))
    writer.save(str(cif))
    out = tmp_path / "cif_out"
    assert main(["export", str(cif), "--feature", "5", "--out", str(out), "--format", "pdb,tsv", *pipeline_args]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["ferritin.interplm.tsv", "ferritin.interplm_5.cif"]
    table = pd.read_csv(out / "ferritin.interplm.tsv", sep="\t", keep_default_na=False, dtype={"icode": str, "chain": str})
    got = dict(zip(zip(table["chain"], table["resi"], table["icode"]), table["interplm_5"]))
    expected = expected_values(tiny_pipeline, cif, 5)
    assert got.keys() == expected.keys() and max(abs(got[k] - v) for k, v in expected.items()) <= 1e-3
    for (chain, number, icode, hetero), values in bfactors(out / "ferritin.interplm_5.cif", mmcif=True).items():
        want = got.get((chain, number, icode))
        assert values == ({round(want, 4)} if want is not None else {0.0})  # mmCIF keeps the 4 decimals


def test_bad_feature_or_format_is_one_line_and_writes_nothing(tiny_pipeline, pipeline_args, tmp_path, capsys):
    assert main(["export", str(HPV), "--feature", "9999", "--out", str(tmp_path / "a"), *pipeline_args]) == 2
    assert "feature 9999 does not exist" in capsys.readouterr().err
    assert main(["export", str(HPV), "--feature", "1", "--format", "png", "--out", str(tmp_path / "b"), *pipeline_args]) == 2
    assert "unknown export format(s) png" in capsys.readouterr().err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_pymol_export_matches_the_command_line(tiny_pipeline, pipeline_args, tmp_path, capsys):
    from pymol import cmd

    from interplm_plugins.pymol_plugin import commands

    first, second = firing_features(tiny_pipeline, [HPV])
    cmd.reinitialize()
    try:
        cmd.load(str(HPV), "hpv")
        paths = commands.interplm("export hpv", feature=f"{first}+{second}", out=str(tmp_path / "session"))
    finally:
        cmd.reinitialize()
    assert [Path(p).name for p in paths] == ["session.interplm.tsv", "session.interplm.defattr", f"session.hpv.interplm_{first}.pdb", f"session.hpv.interplm_{second}.pdb"]
    assert main(["export", str(HPV), "--feature", str(first), str(second), "--out", str(tmp_path / "cli"), *pipeline_args]) == 0
    ours = pd.read_csv(tmp_path / "session.interplm.tsv", sep="\t", keep_default_na=False, dtype={"icode": str})
    cli = pd.read_csv(tmp_path / "cli" / "1hpv.interplm.tsv", sep="\t", keep_default_na=False, dtype={"icode": str})
    assert (ours["structure"] == "hpv").all()
    # equal up to the float16 of the on-disk activation cache, which one of the two may have read
    pd.testing.assert_frame_equal(ours.drop(columns="structure"), cli.drop(columns="structure"), check_exact=False, atol=1e-3)
    session_attributes, cli_attributes = parse_defattr(tmp_path / "session.interplm.defattr"), parse_defattr(tmp_path / "cli" / "1hpv.interplm.defattr")
    assert session_attributes.keys() == cli_attributes.keys()
    for name, values in session_attributes.items():
        assert values == pytest.approx(cli_attributes[name], abs=1e-3)
    session_b, cli_b = bfactors(tmp_path / f"session.hpv.interplm_{second}.pdb"), bfactors(tmp_path / "cli" / f"1hpv.interplm_{second}.pdb")
    protein = {k: max(v) for k, v in cli_b.items() if not k[3] and len(v) == 1}
    assert len(protein) == len(ours) and any(v > 0 for v in protein.values())
    assert {k: max(v) for k, v in session_b.items() if k in protein} == pytest.approx(protein, abs=0.011)


def test_export_aligns_each_chain_to_the_reference_it_matches(tiny_pipeline, pipeline_args, shared_data, tmp_path, capsys):
    """--uniprot with one record per protein: each chain takes the record it matches; none matching is one line."""
    from interplm_plugins.core.inputs.sequences import read_fasta

    protease = read_structure(HPV)[0].sequence
    calmodulin = read_fasta(shared_data / "sequences" / "swissprot_train.fasta")[0].sequence
    references = tmp_path / "refs.fasta"
    references.write_text(f">OTHER\n{calmodulin}\n>PR\n{protease}\n")
    assert main(["export", str(HPV), "--feature", "3", "--out", str(tmp_path / "out"), "--uniprot", str(references), "--format", "tsv", *pipeline_args]) == 0
    assert "chain A = PR, chain B = PR" in capsys.readouterr().out
    table = pd.read_csv(tmp_path / "out" / "1hpv.interplm.tsv", sep="\t")
    assert (table["position"] > 0).all()  # every residue landed on the reference
    (tmp_path / "other.fasta").write_text(f">OTHER\n{calmodulin}\n")
    assert main(["export", str(HPV), "--feature", "3", "--out", str(tmp_path / "none"), "--uniprot", str(tmp_path / "other.fasta"), *pipeline_args]) == 2
    assert "does not match the reference" in capsys.readouterr().err and not (tmp_path / "none" / "1hpv.interplm.tsv").exists()
