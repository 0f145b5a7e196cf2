"""core.inputs.structure on real PDB files (the shared manifest, PyMOL's 1hpv) and on generated residue lists."""

from __future__ import annotations

import csv
import gzip
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from interplm_plugins.core.inputs.sequences import read_fasta
from interplm_plugins.core.inputs.structure import (
    STANDARD_AMINO_ACIDS,
    StructureChain,
    StructureResidue,
    align_to_reference,
    chain_from_atoms,
    parse_resi,
    read_structure,
    residue_letter,
)
from interplm_plugins.errors import InterPLMError

HPV = Path(__import__("pymol").__file__).parent / "pymol_path" / "data" / "tut" / "1hpv.pdb"
HIV_PROTEASE = "PQITLWQRPLVTIKIGGQLKEALLDTGADDTVLEEMSLPGRWKPKMIGGIGGFIKVRQYDQILIEICGHKAIGTVLVGPTPVNIIGRNLLTQIGCTLNF"


def manifest_rows(shared: Path) -> list[dict]:
    with open(shared / "structures" / "manifest.tsv", newline="") as fh:
        return list(csv.DictReader(fh, delimiter="\t"))


@pytest.fixture(scope="module")
def swissprot(swissprot_fasta) -> dict[str, str]:
    return {r.id: r.sequence for r in read_fasta(swissprot_fasta)}


def pdb_atom_line(serial, name, resn, chain, resi, icode="", altloc="", hetatm=False, x=0.0, occupancy=1.0) -> str:
    record = "HETATM" if hetatm else "ATOM  "
    return (
        f"{record}{serial:5d} {name:<4s}{altloc or ' ':1s}{resn:>3s} {chain or ' ':1s}{resi:4d}{icode or ' ':1s}   "
        f"{x:8.3f}{1.0:8.3f}{2.0:8.3f}{occupancy:6.2f}{20.0:6.2f}          {name[0]:>2s}"
    )


# --- real structures -------------------------------------------------------------------------


def test_manifest_structures_match_swissprot_at_offset(shared_data, swissprot):
    for row in manifest_rows(shared_data):
        chains = {c.chain_id: c for c in read_structure(shared_data / "structures" / row["file"])}
        reference = swissprot[row["uniprot_accession"]]
        offset = int(row["uniprot_pos_equals_resnum_plus"])
        first, last = (int(x) for x in row["resnum_region_for_offset"].split("-"))
        for chain_id in row["chain"].split(","):
            chain = chains[chain_id]
            in_region = [r for r in chain.residues if first <= r.resi <= last]
            assert len(in_region) > 0.8 * (last - first + 1), row["file"]
            same = sum(reference[r.resi + offset - 1] == r.one_letter for r in in_region)
            assert same / len(in_region) >= 0.97, (row["file"], chain_id, same, len(in_region))
            # the sequence alignment recovers the manifest's numbering (ambiguous gap placement aside)
            mapping = align_to_reference(chain.sequence, reference, file=row["file"], record=chain_id)
            agree = [mapping[i] == r.resi + offset - 1 for i, r in enumerate(chain.residues) if first <= r.resi <= last]
            assert np.mean(agree) >= 0.97, (row["file"], chain_id, np.mean(agree))


def test_alphafold_model_is_full_length(shared_data, swissprot):
    (chain,) = read_structure(shared_data / "structures" / "P07900_AF.pdb")
    assert chain.chain_id == "A" and chain.sequence == swissprot["P07900"]
    assert [r.resi for r in chain.residues] == list(range(1, 733))
    np.testing.assert_array_equal(align_to_reference(chain.sequence, swissprot["P07900"]), np.arange(732))


def test_altlocs_collapse_and_ligands_water_are_excluded(shared_data):
    # 4Y08 has alternate locations (ASP 45), Fe/Mg/Cl ions, O2 and 328 waters in chain A
    (chain,) = read_structure(shared_data / "structures" / "P02794_4Y08.pdb")
    labels = [r.label for r in chain.residues]
    assert len(labels) == len(set(labels)) == 172
    assert labels[0] == "5" and labels[-1] == "176"
    assert {r.resn for r in chain.residues} <= set(STANDARD_AMINO_ACIDS)
    assert chain.residues[labels.index("45")].resn == "ASP"


def test_hiv_protease_dimer_from_pymol_data():
    chains = read_structure(HPV)
    assert [c.chain_id for c in chains] == ["A", "B"]
    for chain in chains:
        assert chain.sequence == HIV_PROTEASE
        assert [r.resi for r in chain.residues] == list(range(1, 100))
        assert "478" not in {r.resn for r in chain.residues} and "HOH" not in {r.resn for r in chain.residues}


def test_gzipped_and_mmcif_copies_give_the_same_chains(tmp_path):
    from Bio.PDB import MMCIFIO, PDBParser

    expected = read_structure(HPV)
    gz = tmp_path / "1hpv.pdb.gz"
    gz.write_bytes(gzip.compress(HPV.read_bytes()))
    assert read_structure(gz) == expected
    io = MMCIFIO()
    io.set_structure(PDBParser(QUIET=True).get_structure("1hpv", HPV))
    cif = tmp_path / "1hpv.cif"
    io.save(str(cif))
    assert read_structure(cif) == expected
    mmcif_gz = tmp_path / "1hpv.mmcif.gz"
    mmcif_gz.write_bytes(gzip.compress(cif.read_bytes()))
    assert read_structure(mmcif_gz) == expected


# --- residue rules on small hand-written files ------------------------------------------------


def test_modified_residues_models_and_free_amino_acids(tmp_path):
    lines = [
        "MODEL        1",
        pdb_atom_line(1, "CA", "GLY", "A", -2),
        pdb_atom_line(2, "CA", "MSE", "A", -1, hetatm=True),  # selenomethionine: part of the chain, M
        pdb_atom_line(3, "CA", "SEP", "A", 0, hetatm=True),  # phosphoserine: S
        pdb_atom_line(4, "CA", "UNK", "A", 1),
        pdb_atom_line(5, "CA", "SEC", "A", 2),
        pdb_atom_line(6, "CA", "ALA", "A", 3, altloc="A", occupancy=0.6),
        pdb_atom_line(7, "CA", "THR", "A", 3, altloc="B", occupancy=0.4),  # point mutation: one residue
        pdb_atom_line(8, "CA", "GLU", "A", 100, hetatm=True),  # a free glutamate ligand
        pdb_atom_line(9, "O", "HOH", "A", 101, hetatm=True),
        pdb_atom_line(10, "P", "DA", "B", 1),  # DNA chain
        "ENDMDL",
        "MODEL        2",
        pdb_atom_line(1, "CA", "TRP", "A", 7),
        "ENDMDL",
        "END",
    ]
    path = tmp_path / "mod.pdb"
    path.write_text("\n".join(lines) + "\n")
    (chain,) = read_structure(path)
    assert chain.sequence == "GMSXUA"
    assert [r.label for r in chain.residues] == ["-2", "-1", "0", "1", "2", "3"]
    assert read_structure(path, model_index=1)[0].sequence == "W"
    with pytest.raises(InterPLMError, match="model index 2 out of range: the file has 2"):
        read_structure(path, model_index=2)


def test_residue_letter_table():
    assert residue_letter("MSE", hetero=True) == "M"
    assert residue_letter("ala") == "A"
    assert residue_letter("ALA", hetero=True) is None
    assert residue_letter("HOH", hetero=True) is None and residue_letter("DA") is None
    assert residue_letter("PYL") == "O"


def test_parse_resi():
    assert parse_resi("52A") == (52, "A") and parse_resi("-3") == (-3, "") and parse_resi(7) == (7, "")
    with pytest.raises(InterPLMError, match="'12-'"):
        parse_resi("12-")


@pytest.mark.parametrize(
    "content, reason",
    [
        (pdb_atom_line(1, "O", "HOH", "A", 1, hetatm=True) + "\n" + pdb_atom_line(2, "FE", "HEM", "A", 2, hetatm=True), "no protein chain"),
        ("ATOM      1  CA  ALA A   1      xx.xxx  11.000  12.000  1.00 20.00           C\n", "broken PDB record"),
        (">sp|P1|X\nMKVLA\n", "no atoms found"),
        ("", "empty file"),
        ("data_x\nloop_\n_foo.bar\n1\n", "not a readable mmCIF file"),
    ],
)
def test_bad_structure_files_raise_naming_file_and_reason(tmp_path, content, reason):
    path = tmp_path / "bad.pdb"
    path.write_text(content)
    with pytest.raises(InterPLMError, match=reason) as info:
        read_structure(path)
    assert info.value.file == str(path)


def test_binary_and_missing_files(tmp_path):
    path = tmp_path / "x.cif"
    path.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe\x00")
    with pytest.raises(InterPLMError, match="not a text structure file"):
        read_structure(path)
    with pytest.raises(InterPLMError, match="no such file"):
        read_structure(tmp_path / "missing.pdb")


def test_chain_from_atoms_rejects_bad_rows():
    with pytest.raises(InterPLMError, match="residue number 'x1'"):
        chain_from_atoms([("A", "x1", "ALA")])
    with pytest.raises(InterPLMError, match="is not"):
        chain_from_atoms([("A", "1")])


# --- properties ---------------------------------------------------------------------------------

AMINO = sorted(STANDARD_AMINO_ACIDS) + ["MSE", "UNK"]
residue_spec = st.tuples(
    st.sampled_from("ABZ"),  # chain
    st.integers(-999, 9999),  # residue number
    st.sampled_from(["", "", "", "A", "B"]),  # insertion code
    st.sampled_from(AMINO + ["HOH", "GOL", "NAG"]),
    st.booleans(),  # with an alternate location
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(specs=st.lists(residue_spec, min_size=1, max_size=40))
def test_generated_residues_round_trip_through_file_and_atom_table(tmp_path, specs):
    lines, rows, expected = [], [], {}
    seen = set()
    serial = 1
    for chain, resi, icode, resn, altloc in specs:
        if (chain, resi, icode) in seen:
            continue
        seen.add((chain, resi, icode))
        hetatm = resn in ("HOH", "GOL", "NAG") or resn == "MSE"
        for name in ("N", "CA"):
            for alt in ("A", "B") if altloc else ("",):
                lines.append(pdb_atom_line(serial, name, resn, chain, resi, icode, alt, hetatm, occupancy=0.5 if alt else 1.0))
                rows.append((chain, f"{resi}{icode}", resn, hetatm))
                serial += 1
        letter = residue_letter(resn, hetatm)
        expected.setdefault(chain, [])
        if letter:
            expected[chain].append(StructureResidue(chain, resi, icode, resn, letter))
    path = tmp_path / "generated.pdb"
    path.write_text("\n".join(lines) + "\nEND\n")
    want = [StructureChain(c, tuple(res)) for c, res in expected.items() if res]
    assert chain_from_atoms(rows) == want
    if want:
        assert read_structure(path) == want
    else:
        with pytest.raises(InterPLMError, match="no protein chain"):
            read_structure(path)


protein = st.text(alphabet="ACDEFGHIKLMNPQRSTVWY", min_size=20, max_size=300)


@settings(max_examples=60, deadline=None)
@given(reference=protein, data=st.data())
def test_substring_aligns_back_to_its_offset(reference, data):
    start = data.draw(st.integers(0, len(reference) - 15))
    stop = data.draw(st.integers(start + 15, len(reference)))
    part = reference[start:stop]
    mapping = align_to_reference(part, reference)
    assert np.all(mapping >= 0) and np.all(np.diff(mapping) == 1)
    assert "".join(reference[i] for i in mapping) == part
    if sum(reference.startswith(part, i) for i in range(len(reference))) == 1:
        np.testing.assert_array_equal(mapping, np.arange(start, stop))


@settings(max_examples=40, deadline=None)
@given(reference=protein, tag=st.text(alphabet="HG", min_size=0, max_size=8), data=st.data())
def test_unmodelled_loop_and_tag_leave_mapped_residues_in_place(reference, tag, data):
    cut = data.draw(st.integers(5, len(reference) - 5))
    loop = data.draw(st.integers(1, 4))
    structure = tag + reference[:cut] + reference[cut + loop :]
    mapping = align_to_reference(structure, reference, min_identity=0.7)
    mapped = mapping[mapping >= 0]
    assert np.all(np.diff(mapped) > 0)  # order preserved, each position at most once
    # every residue the alignment places lies on an identical letter of the reference, up to a few tag/loop mismatches
    same = sum(structure[i] == reference[m] for i, m in enumerate(mapping) if m >= 0)
    assert same >= len(reference) - loop - 4


def test_alignment_maps_a_tagged_partial_chain_and_rejects_another_protein(swissprot):
    reference = swissprot["P07900"]
    structure = "MHHHHHHSSG" + reference[100:300] + reference[320:400]  # tag, domain with a missing loop
    mapping = align_to_reference(structure, reference)
    np.testing.assert_array_equal(mapping[10:210], np.arange(100, 300))
    np.testing.assert_array_equal(mapping[210:], np.arange(320, 400))
    assert np.all(mapping[:10] < 100)  # tag letters may pair with residues before the domain, never inside it
    with pytest.raises(InterPLMError, match="does not match the reference") as info:
        align_to_reference(swissprot["O14313"], reference, file="x.pdb", record="A")
    assert info.value.file == "x.pdb" and info.value.record == "A"


def test_alignment_handles_selenocysteine_and_empty_input():
    np.testing.assert_array_equal(align_to_reference("ACUDEFGHIK", "MMACUDEFGHIKLL"), np.arange(2, 12))
    with pytest.raises(InterPLMError, match="empty"):
        align_to_reference("", "MKV")
