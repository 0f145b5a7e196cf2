"""UniProt REST JSON in ``read_uniprot``: the real 44-entry search result from ../shared/data, one
entry (plain, gzip, byte-order mark, any file name), the same entry read from flat text and from
JSON, uncertain and isoform positions handled as in flat text, and ``interplm concepts`` on the
real file. The bad JSON inputs are rows of tests/bad_inputs/README.md (tests/test_bad_inputs.py)."""

from __future__ import annotations

import gzip
import json
import logging
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from interplm_plugins.core.inputs.sequences import read_fasta
from interplm_plugins.core.inputs.uniprot import (
    FEATURE_TYPE_NAMES,
    JSON_FEATURE_KEYS,
    KNOWN_FEATURE_KEYS,
    UniProtFeature,
    read_uniprot,
    unknown_feature_types,
)

# the one accession of the JSON file that swissprot_train.dat.gz also holds (entry versions 259 and 258)
SHARED_ACCESSION = "P10599"

UNCERTAIN_FLAT = """\
ID   TEST1_HUMAN             Reviewed;        30 AA.
AC   Q00001;
DE   RecName: Full=Test protein Q00001;
FT   SIGNAL          <1..5
FT   CHAIN           ?6..30
FT                   /note="Test protein"
FT   DOMAIN          ?..20
FT                   /note="Test domain"
FT   REGION          10..>30
FT                   /note="Disordered"
FT   MOD_RES         Q00001-2:4
FT                   /note="Phosphoserine"
FT   HELIX           25..40
FT   BINDING         7
FT                   /ligand="Zn(2+)"
FT                   /evidence="ECO:0000269|PubMed:1"
FT   SITE            ?
SQ   SEQUENCE   30 AA;  3300 MW;  0000000000000000 CRC64;
     MKTAYIAKQR QISFVKSHFS RQLEERLGLI
//
"""


def _position(value: int | None, modifier: str = "EXACT") -> dict:
    return {"value": value, "modifier": modifier}


def _feature(rest_type: str, start: dict, end: dict, description: str = "", **extra) -> dict:
    return {"type": rest_type, "location": {"start": start, "end": end}, "description": description, **extra}


# UNCERTAIN_FLAT as rest.uniprot.org writes it
UNCERTAIN_JSON = {
    "entryType": "UniProtKB reviewed (Swiss-Prot)",
    "primaryAccession": "Q00001",
    "uniProtkbId": "TEST1_HUMAN",
    "sequence": {"value": "MKTAYIAKQRQISFVKSHFSRQLEERLGLI", "length": 30},
    "features": [
        _feature("Signal", _position(1, "OUTSIDE"), _position(5)),
        _feature("Chain", _position(6, "UNSURE"), _position(30), "Test protein"),
        _feature("Domain", _position(None, "UNKNOWN"), _position(20), "Test domain"),
        _feature("Region", _position(10), _position(30, "OUTSIDE"), "Disordered"),
        {"type": "Modified residue", "description": "Phosphoserine",
         "location": {"start": _position(4), "end": _position(4), "sequence": "Q00001-2"}},  # fmt: skip
        _feature("Helix", _position(25), _position(40)),
        _feature("Binding site", _position(7), _position(7), ligand={"name": "Zn(2+)"},
                 evidences=[{"evidenceCode": "ECO:0000269", "source": "PubMed", "id": "1"}]),  # fmt: skip
        _feature("Site", _position(None, "UNKNOWN"), _position(None, "UNKNOWN")),
    ],
}


@pytest.fixture(scope="module")
def real_json(shared_data) -> Path:
    return shared_data / "uniprot" / "more" / "uniprot_rest_json_parquet_44.json.gz"


@pytest.fixture(scope="module")
def raw_results(real_json) -> list[dict]:
    with gzip.open(real_json, "rt", encoding="utf-8") as handle:
        return json.load(handle)["results"]


@pytest.fixture(scope="module")
def real_entries(real_json):
    return read_uniprot(real_json)


def test_type_table_maps_every_rest_name_to_one_known_key():
    keys = [key for key, _, _ in FEATURE_TYPE_NAMES]
    assert len(set(keys)) == len(keys) == len(JSON_FEATURE_KEYS) == 39
    assert set(JSON_FEATURE_KEYS.values()) <= KNOWN_FEATURE_KEYS
    assert JSON_FEATURE_KEYS["Beta strand"] == "STRAND" and JSON_FEATURE_KEYS["Signal"] == "SIGNAL"
    assert JSON_FEATURE_KEYS["Glycosylation"] == "CARBOHYD" and JSON_FEATURE_KEYS["Disulfide bond"] == "DISULFID"


def test_real_search_result(real_entries, raw_results):
    """Every feature of the 44 entries is read (placed or dropped with its reason) under its flat key."""
    assert len(real_entries) == len(raw_results) == 44
    by_accession = {e.accession: e for e in real_entries}
    for item in raw_results:
        entry = by_accession[item["primaryAccession"]]
        assert (entry.entry_name, entry.sequence) == (item["uniProtkbId"], item["sequence"]["value"])
    read = Counter(f.type for e in real_entries for f in e.features)
    read.update(ftype for e in real_entries for ftype, _, _ in e.dropped)
    served = Counter(JSON_FEATURE_KEYS[f["type"]] for item in raw_results for f in item["features"])
    assert read == served and sum(read.values()) == 1451
    # the counts SOURCES.md lists for the file, by REST name
    assert [read[k] for k in ("STRAND", "HELIX", "DISULFID", "BINDING", "ACT_SITE", "CARBOHYD", "SIGNAL", "DOMAIN")] == [
        346, 299, 107, 97, 92, 50, 33, 23,
    ]  # fmt: skip
    assert unknown_feature_types(real_entries) == {}
    # UniProt marks two positions of Q75N34 UNKNOWN: those two features, and only they, are dropped
    assert {e.accession: e.dropped for e in real_entries if e.dropped} == {
        "Q75N34": (("SIGNAL", "1..?", "unknown position"), ("CHAIN", "?..268", "unknown position"))
    }
    # OUTSIDE (<1) keeps its number; every binding site names its ligand
    assert UniProtFeature("CHAIN", 1, 496, "Alpha-amylase") in by_accession["P49274"].features
    assert all(f.ligand for e in real_entries for f in e.features if f.type == "BINDING")
    thio_init_met = by_accession[SHARED_ACCESSION].features[0]
    assert thio_init_met == UniProtFeature(
        "INIT_MET", 1, 1, "Removed", "", "ECO:0000269|PubMed:1998498, ECO:0000269|PubMed:7818492"
    )


def test_one_entry_plain_gzip_bom_and_any_name(real_entries, raw_results, tmp_path):
    """One entry object, or a results list holding it, in every encoding reads the same entry."""
    item = next(i for i in raw_results if i["primaryAccession"] == SHARED_ACCESSION)
    expected = [next(e for e in real_entries if e.accession == SHARED_ACCESSION)]
    pretty = json.dumps(item, indent=2)
    (tmp_path / "entry.json").write_text(pretty, encoding="utf-8")
    with gzip.open(tmp_path / "entry.json.gz", "wt", encoding="utf-8") as handle:
        json.dump({"results": [item]}, handle)
    (tmp_path / "entry_bom_crlf.json").write_bytes(("\ufeff" + pretty.replace("\n", "\r\n")).encode("utf-8"))
    (tmp_path / "download.txt").write_text(json.dumps(item), encoding="utf-8")  # the content decides, not the name
    for name in ("entry.json", "entry.json.gz", "entry_bom_crlf.json", "download.txt"):
        assert read_uniprot(tmp_path / name) == expected, name


def _flat_entry_text(dat_gz: Path, entry_name: str) -> str:
    with gzip.open(dat_gz, "rt", encoding="utf-8") as handle:
        text = handle.read()
    start = text.index(f"ID   {entry_name} ")
    return text[start : text.index("\n//\n", start) + 4]


def test_flat_and_json_of_the_same_entry_agree(real_entries, swissprot_dat, tmp_path):
    """THIO_HUMAN from flat text (release of entry version 258) and REST JSON (259): same sequence,
    same features in the same order with the same positions, ligands and evidence; descriptions
    equal except that flat text prefixes variants' notes with the alternative sequence."""
    flat_path = tmp_path / "thio.dat"
    flat_path.write_text(_flat_entry_text(swissprot_dat, "THIO_HUMAN"), encoding="utf-8")
    (flat,) = read_uniprot(flat_path)
    from_json = next(e for e in real_entries if e.accession == SHARED_ACCESSION)
    assert (flat.accession, flat.entry_name, flat.sequence) == (from_json.accession, from_json.entry_name, from_json.sequence)
    assert flat.dropped == from_json.dropped == ()
    assert len(flat.features) == len(from_json.features) == 44

    def placed(f: UniProtFeature) -> tuple:  # Biopython joins the flat evidence's wrapped lines without the space
        return f.type, f.start, f.end, f.ligand, f.evidence.replace(" ", "")

    assert [placed(f) for f in flat.features] == [placed(f) for f in from_json.features]
    with_alternative = {"MUTAGEN", "VARIANT", "CONFLICT", "VAR_SEQ"}
    for f_flat, f_json in zip(flat.features, from_json.features):
        if f_flat.type in with_alternative:  # 'C->S: Loses ...' / 'Loses ...'
            assert f_json.description and f_json.description in f_flat.description
        else:
            assert f_flat.description == f_json.description
    assert sum(f.type in with_alternative for f in flat.features) == 13


def test_uncertain_isoform_and_outside_positions_as_in_flat_text(tmp_path, caplog):
    """OUTSIDE/UNSURE keep their number, UNKNOWN and other isoforms and features past the end are
    dropped with their reasons, exactly as the flat reader does with <1, ?6, ?, P-2: and 25..40."""
    (tmp_path / "entry.dat").write_text(UNCERTAIN_FLAT, encoding="utf-8")
    (tmp_path / "entry.json").write_text(json.dumps(UNCERTAIN_JSON), encoding="utf-8")
    caplog.set_level(logging.WARNING, logger="interplm_plugins.core.inputs.uniprot")
    (flat,) = read_uniprot(tmp_path / "entry.dat")
    (from_json,) = read_uniprot(tmp_path / "entry.json")
    assert from_json == flat
    assert [(f.type, f.start, f.end) for f in from_json.features] == [
        ("SIGNAL", 1, 5), ("CHAIN", 6, 30), ("REGION", 10, 30), ("BINDING", 7, 7)
    ]  # fmt: skip
    assert from_json.dropped == (
        ("DOMAIN", "?..20", "unknown position"),
        ("MOD_RES", "4", "on another isoform"),
        ("HELIX", "25..40", "outside the sequence"),
        ("SITE", "?", "unknown position"),
    )
    warned = [r.getMessage() for r in caplog.records if "entry.json" in r.getMessage()]
    assert warned == [
        f"{tmp_path / 'entry.json'}: dropped 4 features that cannot be placed on the sequence "
        "(2 unknown position, 1 on another isoform, 1 outside the sequence)"
    ]


def test_cli_concepts_reads_the_real_json(real_json, tmp_path):
    """``interplm concepts FILE.json.gz`` writes labels for the 44 proteins; its help names JSON."""
    out = tmp_path / "concepts"
    cli = [sys.executable, "-m", "interplm_plugins.cli"]
    run = subprocess.run([*cli, "-q", "concepts", str(real_json), "--out", str(out)], capture_output=True, text=True,
                         timeout=240)  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.startswith("44 entries, ")
    assert len(read_fasta(out / "proteins.fasta")) == 44
    concepts = (out / "concepts.tsv").read_text(encoding="utf-8")
    assert "Beta strand" in concepts and "Helix" in concepts and "Disulfide bond" in concepts
    assert (out / "labels.npz").is_file()
    helptext = subprocess.run([*cli, "concepts", "--help"], capture_output=True, text=True, timeout=120).stdout
    assert "REST JSON" in helptext
