"""Property-based tests (hypothesis) of the parsers and of the structure-to-sequence mapping.

- FASTA: write_fasta -> read_fasta gives the records back for any ids, descriptions, line widths;
  clean_sequence normalises exactly what the policy says and refuses everything else.
- UniProt flat text: generated feature tables (ranges, single positions, '<'/'>'/'?' fuzzy
  positions, unknown positions, other isoforms, positions outside the sequence) come back as
  the features and dropped features the module documents, and the same entry written as
  UniProt's REST JSON reads back identically.
- Structures: generated chains (negative and gapped numbering, insertion codes, altlocs,
  modified residues, ligands, waters, free amino acids) written as PDB text read back as the
  expected residues, Cα coordinates included; align_to_reference recovers the known mapping of
  a chain that covers part of the reference with a deleted loop.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from interplm_plugins.core.inputs.sequences import (
    PROTEIN_LETTERS,
    ProteinRecord,
    clean_sequence,
    looks_like_nucleotides,
    protein_id_from_header,
    read_fasta,
    write_fasta,
)
from interplm_plugins.core.inputs.structure import (
    STANDARD_AMINO_ACIDS,
    StructureResidue,
    align_to_reference,
    read_structure,
    read_structure_ca,
    residue_letter,
)
from interplm_plugins.core.inputs.uniprot import FEATURE_TYPE_NAMES, read_uniprot
from interplm_plugins.errors import InterPLMError

#: Modest by default so the suite stays fast; INTERPLM_HYPOTHESIS_EXAMPLES=2000 for a long hunt.
SETTINGS = settings(max_examples=int(os.environ.get("INTERPLM_HYPOTHESIS_EXAMPLES", "75")), deadline=None)
LETTERS = "".join(sorted(PROTEIN_LETTERS))
STANDARD = "ACDEFGHIKLMNPQRSTVWY"


def _scratch(factory: pytest.TempPathFactory) -> Path:
    """A fresh folder per example under pytest's temp root, which pytest prunes to its last runs
    (tmp_path is per test and hypothesis runs many examples; tempfile.mkdtemp left ~300 folders
    in /tmp on every run)."""
    return factory.mktemp("props")


# ------------------------------------------------------------------------------------- FASTA

# Ids: no separators or control characters (they end the id), no surrogates (not UTF-8), and
# not the sp|ACC|NAME form (read back as ACC; write_fasta refuses those, tested elsewhere).
protein_ids = st.text(st.characters(blacklist_categories=("Z", "C")), min_size=1, max_size=24).filter(
    lambda s: protein_id_from_header(s) == s
)
descriptions = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n"), max_size=60)
records = st.lists(
    st.builds(ProteinRecord, protein_ids, st.text(LETTERS, min_size=1, max_size=300), descriptions),
    min_size=1,
    max_size=12,
    unique_by=lambda r: r.id,
)


@SETTINGS
@given(records=records, width=st.integers(1, 130))
def test_fasta_round_trip(records, width, tmp_path_factory):
    path = _scratch(tmp_path_factory) / "x.fasta"
    write_fasta(records, path, width=width)
    back = read_fasta(path)
    assert back == [ProteinRecord(r.id, r.sequence, r.description.strip()) for r in records]
    lines = path.read_text(encoding="utf-8").split("\n")  # not splitlines(): descriptions may hold \x0c, \x85...
    assert all(len(line) <= width for line in lines if not line.startswith(">"))


@SETTINGS
@given(
    sequence=st.text(LETTERS, min_size=1, max_size=200),
    data=st.data(),
    stop=st.booleans(),
)
def test_clean_sequence_accepts_case_ascii_whitespace_and_one_stop(sequence, data, stop):
    messy = []
    for letter in sequence:
        messy.append(letter.lower() if data.draw(st.booleans()) else letter)
        messy.append(data.draw(st.sampled_from(["", "", "", " ", "\t", "\n", "\r\n", "  "])))
    text = "".join(messy) + ("*" if stop else "")
    assume(not looks_like_nucleotides(sequence))  # DNA / RNA letters only are refused (tests/test_provenance.py)
    assert clean_sequence(text) == sequence
    assert clean_sequence(sequence) == sequence  # idempotent on its own output


@SETTINGS
@given(text=st.text(max_size=80))
def test_clean_sequence_returns_protein_letters_or_names_the_first_bad_character(text):
    try:
        cleaned = clean_sequence(text, file="f.fasta", record="R")
    except InterPLMError as err:
        assert err.file == "f.fasta" and err.record == "R"
        stripped = "".join(c for c in text if c not in " \t\n\r\f\v")
        if stripped.upper().rstrip("*") == "" or stripped == "*":
            assert "empty sequence" in err.reason
        elif "nucleotide" in err.reason:
            assert looks_like_nucleotides(stripped.upper().removesuffix("*"))
        else:
            pos = int(err.reason.split(" at position ")[1].split()[0])
            bad = stripped[pos - 1]
            assert repr(bad.upper() if bad.isascii() else bad) in err.reason  # ASCII letters are reported upper-cased
            assert not (bad.isascii() and bad.upper() in PROTEIN_LETTERS)
            before = stripped[: pos - 1]
            assert all(c.isascii() and c.upper() in PROTEIN_LETTERS for c in before)
        return
    assert cleaned and set(cleaned) <= PROTEIN_LETTERS
    assert clean_sequence(cleaned) == cleaned
    assert cleaned == "".join(c for c in text if not c.isspace()).upper().removesuffix("*")


# ------------------------------------------------------------------------- UniProt flat text

ENTRY = """ID   TEST_HUMAN              Reviewed;{length:>10} AA.
AC   Q00001;
DE   RecName: Full=Generated protein;
{features}SQ   SEQUENCE{length:>6} AA;  1000 MW;  0000000000000000 CRC64;
{sequence}//
"""


def _sq_lines(seq: str) -> str:
    out = []
    for i in range(0, len(seq), 60):
        chunk = seq[i : i + 60]
        out.append("     " + " ".join(chunk[j : j + 10] for j in range(0, len(chunk), 10)) + "\n")
    return "".join(out)


@st.composite
def feature_specs(draw, length: int):
    """``(FT location text, expected (start, end) or a dropped reason)``."""
    kind = draw(st.sampled_from(["range", "range", "single", "fuzzy", "uncertain", "unknown", "isoform", "outside"]))
    start = draw(st.integers(1, length))
    end = draw(st.integers(start, length))
    if kind == "range":
        return f"{start}..{end}", (start, end)
    if kind == "single":
        return f"{start}", (start, start)
    if kind == "fuzzy":  # the feature extends beyond what is annotated: the number is kept
        lo, hi = draw(st.sampled_from(["<", ""])), draw(st.sampled_from([">", ""]))
        return f"{lo}{start}..{hi}{end}", (start, end)
    if kind == "uncertain":  # '?41': position uncertain but given
        return (f"?{start}..{end}", (start, end)) if draw(st.booleans()) else (f"?{start}", (start, start))
    if kind == "unknown":
        return draw(st.sampled_from(["?", f"?..{end}", f"{start}..?"])), "unknown position"
    if kind == "isoform":
        return f"Q00001-{draw(st.integers(2, 9))}:{start}..{end}", "on another isoform"
    beyond = draw(st.integers(length + 1, length + 50))
    return draw(st.sampled_from([f"{start}..{beyond}", f"{beyond}", f"0..{end}"])), "outside the sequence"


@SETTINGS
@given(data=st.data(), sequence=st.text(STANDARD, min_size=5, max_size=250))
def test_flat_feature_locations(data, sequence, tmp_path_factory):
    length = len(sequence)
    specs = data.draw(st.lists(feature_specs(length), max_size=12))
    keys = data.draw(st.lists(st.sampled_from(["DOMAIN", "HELIX", "BINDING", "REGION", "DISULFID"]), min_size=len(specs), max_size=len(specs)))
    notes = data.draw(st.lists(st.text("abcdefghij XYZ-()0123456789", max_size=30), min_size=len(specs), max_size=len(specs)))
    table = ""
    for (loc, _), key, note in zip(specs, keys, notes):
        table += f"FT   {key:<16}{loc}\n"
        if note.strip():
            table += f'FT                   /note="{note.strip()}"\n'
    path = _scratch(tmp_path_factory) / "entry.dat"
    path.write_text(ENTRY.format(length=length, features=table, sequence=_sq_lines(sequence)))
    (entry,) = read_uniprot(path)
    assert entry.sequence == sequence
    placed = [(key, expect, note.strip()) for (_, expect), key, note in zip(specs, keys, notes) if isinstance(expect, tuple)]
    assert [(f.type, (f.start, f.end), f.description) for f in entry.features] == placed
    dropped = [(key, expect) for (_, expect), key in zip(specs, keys) if isinstance(expect, str)]
    assert [(ftype, reason) for ftype, _, reason in entry.dropped] == dropped
    for f in entry.features:
        assert 1 <= f.start <= f.end <= length
    # the same entry as UniProt's REST JSON reads the same, dropped features and their reasons included
    rest_names = {key: rest for key, _, rest in FEATURE_TYPE_NAMES}
    features = [
        {"type": rest_names[key], "location": _json_location(loc), "description": note.strip()}
        for (loc, _), key, note in zip(specs, keys, notes)
    ]
    document = {"primaryAccession": "Q00001", "uniProtkbId": "TEST_HUMAN", "sequence": {"value": sequence, "length": length},
                "features": features}  # fmt: skip
    (path.parent / "entry.json").write_text(json.dumps({"results": [document]}))
    assert read_uniprot(path.parent / "entry.json") == [entry]


def _json_position(text: str) -> dict:
    """One end of a flat FT location as REST JSON: '<1'/'>9' OUTSIDE, '?4' UNSURE, '?' UNKNOWN."""
    if text == "?":
        return {"value": None, "modifier": "UNKNOWN"}
    modifier = {"<": "OUTSIDE", ">": "OUTSIDE", "?": "UNSURE"}.get(text[0], "EXACT")
    return {"value": int(text.lstrip("<>?")), "modifier": modifier}


def _json_location(flat_location: str) -> dict:
    isoform, _, span = flat_location.rpartition(":")
    start, _, end = span.partition("..")
    location = {"start": _json_position(start), "end": _json_position(end or start)}
    return {**location, "sequence": isoform} if isoform else location


# ----------------------------------------------------------------------------- structures


def _atom(serial, name, resn, chain, resi, icode="", altloc="", hetatm=False, x=0.0, occupancy=1.0) -> str:
    record = "HETATM" if hetatm else "ATOM  "
    return (
        f"{record}{serial:5d} {name:<4s}{altloc or ' ':1s}{resn:>3s} {chain:1s}{resi:4d}{icode or ' ':1s}   "
        f"{x:8.3f}{1.0:8.3f}{2.0:8.3f}{occupancy:6.2f}{20.0:6.2f}          {name[0]:>2s}"
    )


AMINO = sorted(STANDARD_AMINO_ACIDS)
MODIFIED = ["MSE", "SEP", "TPO", "PTR", "MLY", "HYP"]
OTHER = ["HOH", "GOL", "SO4", "NAG", "ZN"]


@st.composite
def chain_specs(draw, chain: str):
    """Residues of one chain in file order: (resi, icode, resn, hetatm, altlocs, included?)."""
    resi = draw(st.integers(-60, 40))
    out = []
    for _ in range(draw(st.integers(1, 30))):
        resi += draw(st.sampled_from([1, 1, 1, 2, 5, 17]))  # gaps: unmodelled residues
        kind = draw(st.sampled_from(["aa"] * 6 + ["modified", "free_aa", "other"]))
        if kind == "aa":
            resn, hetatm = draw(st.sampled_from(AMINO)), False
        elif kind == "modified":
            resn, hetatm = draw(st.sampled_from(MODIFIED)), True
        elif kind == "free_aa":  # a standard amino acid as HETATM: a ligand, left out
            resn, hetatm = draw(st.sampled_from(AMINO)), True
        else:
            resn, hetatm = draw(st.sampled_from(OTHER)), True
        altlocs = draw(st.sampled_from([(), (), ("A", "B"), ("A", "B", "C")]))
        out.append((resi, "", resn, hetatm, altlocs))
        for icode in "ABC"[: draw(st.sampled_from([0, 0, 0, 1, 2]))]:  # 52, 52A, 52B: distinct residues
            out.append((resi, icode, draw(st.sampled_from(AMINO)), False, ()))
    return chain, out


@SETTINGS
@given(chains=st.lists(st.sampled_from("ABXZ"), min_size=1, max_size=3, unique=True).flatmap(
    lambda ids: st.tuples(*(chain_specs(c) for c in ids))))  # fmt: skip
def test_generated_pdb_reads_back_as_its_residues(chains, tmp_path_factory):
    lines, expected, serial, x = [], {}, 1, 0.0
    ca_x: dict[tuple, float] = {}
    for chain, residues in chains:
        for resi, icode, resn, hetatm, altlocs in residues:
            x += 1.0
            for alt_index, alt in enumerate(altlocs or ("",)):
                occupancy = 0.6 - 0.1 * alt_index if alt else 1.0  # the first altloc has the highest occupancy
                for name in ("N", "CA", "C"):
                    atom_x = x + 0.01 * alt_index
                    lines.append(_atom(serial, name, resn, chain, resi, icode, alt, hetatm, atom_x, occupancy))
                    serial += 1
            letter = residue_letter(resn, hetatm)
            if letter is not None:
                residue = StructureResidue(chain, resi, icode, resn, letter)
                expected.setdefault(chain, []).append(residue)
                ca_x[(chain, resi, icode)] = x
    path = _scratch(tmp_path_factory) / "generated.pdb"
    path.write_text("\n".join(lines) + "\nEND\n")
    want = {c: r for c, r in expected.items() if r}
    if not want:
        with pytest.raises(InterPLMError, match="no protein chain"):
            read_structure(path)
        return
    chains_read, coords = read_structure_ca(path)
    assert {c.chain_id: list(c.residues) for c in chains_read} == want
    assert [c.chain_id for c in chains_read] == [c for c, _ in chains if c in want]  # file order
    assert read_structure(path) == chains_read
    for chain, xyz in zip(chains_read, coords):
        want_x = [ca_x[(r.chain, r.resi, r.icode)] for r in chain.residues]
        np.testing.assert_allclose(xyz[:, 0], want_x, atol=1e-3)  # the highest-occupancy altloc's Cα


@SETTINGS
@given(
    reference=st.text(STANDARD, min_size=60, max_size=300),
    data=st.data(),
    offset=st.integers(-80, 80),
)
def test_alignment_recovers_offset_and_deleted_loop(reference, data, offset, tmp_path_factory):
    """A structure of reference[a:b] with reference[c:c+d] unmodelled, numbered as the
    reference plus ``offset`` (negative numbers included): every residue maps to its own
    reference position, the mapping that the residue numbers say."""
    n = len(reference)
    a = data.draw(st.integers(0, n - 40))
    b = data.draw(st.integers(a + 40, n))
    d = data.draw(st.integers(0, 10))
    c = data.draw(st.integers(a + 15, b - 15 - d)) if b - a - d >= 30 else a + 15
    assume(b - a - d >= 30)
    if d:  # a deleted loop between equal letters could sit one place left or right: equally good
        assume(reference[c - 1] != reference[c + d - 1] and reference[c] != reference[c + d])
    kept = [i for i in range(a, b) if not c <= i < c + d]
    assume(reference.count(reference[a : a + 12]) == 1)  # the chain's start occurs once in the reference
    three = {v: k for k, v in STANDARD_AMINO_ACIDS.items()}
    lines = [_atom(k + 1, "CA", three[reference[i]], "A", i + offset, x=float(k)) for k, i in enumerate(kept)]
    path = _scratch(tmp_path_factory) / "chain.pdb"
    path.write_text("\n".join(lines) + "\nEND\n")
    (chain,) = read_structure(path)
    assert chain.sequence == "".join(reference[i] for i in kept)
    mapping = align_to_reference(chain.sequence, reference)
    np.testing.assert_array_equal(mapping, [r.resi - offset for r in chain.residues])
