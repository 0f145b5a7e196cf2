"""The bad-input corpus: every row of tests/bad_inputs/README.md's table, in-process and (rows
marked CLI) through a real ``python -m interplm_plugins.cli`` subprocess."""

from __future__ import annotations

import importlib.util
import logging
import os
import pickle
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from interplm_plugins.core.database.schema import FeatureDatabase
from interplm_plugins.core.inputs.sequences import ProteinRecord, read_fasta, write_fasta
from interplm_plugins.core.inputs.structure import read_structure
from interplm_plugins.core.inputs.uniprot import read_uniprot
from interplm_plugins.core.plm.loading import load_plm
from interplm_plugins.core.plm.store import EmbeddingStore
from interplm_plugins.core.sae.files import load_sae
from interplm_plugins.errors import InterPLMError

CORPUS = Path(__file__).resolve().parent / "bad_inputs"
TABLE = CORPUS / "README.md"


def _load_generator():
    spec = importlib.util.spec_from_file_location("bad_inputs_generate", CORPUS / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


generate = _load_generator()


@dataclass(frozen=True)
class Row:
    input: str
    reader: str
    outcome: str
    record: str | None
    expect: str
    cli: bool

    def __str__(self) -> str:
        return self.input


def _unquote(cell: str) -> str:
    cell = cell.strip()
    return cell[1:-1] if len(cell) >= 2 and cell[0] == cell[-1] == "`" else cell


def table_rows(text: str | None = None) -> list[Row]:
    """The rows between the README's ``table:start`` and ``table:end`` markers."""
    text = TABLE.read_text(encoding="utf-8") if text is None else text
    body = text.split("<!-- table:start -->", 1)[1].split("<!-- table:end -->", 1)[0]
    rows = []
    for line in body.strip().splitlines()[2:]:  # header and separator
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        assert len(cells) == 6, f"table row does not have 6 cells: {line}"
        name, reader, outcome, record, expect, cli = cells
        assert outcome in ("error", "recovered"), line
        rows.append(Row(_unquote(name), reader, outcome, record or None, _unquote(expect), cli == "CLI"))
    return rows


ROWS = table_rows()


def _read_store(path: Path) -> EmbeddingStore:
    store = EmbeddingStore(path)
    for pid in store.proteins:  # memory-map every shard: a broken one is only found on reading
        store.get(pid)
    return store


def _open_database(path: Path) -> FeatureDatabase:
    db = FeatureDatabase(path)
    try:
        for feature in range(db.num_features):
            db.feature_info(feature)
            db.top_examples(feature)
            db.quantile_examples(feature)
        db.concept_names()
    except BaseException:
        db.close()
        raise
    return db


READERS = {
    "read_fasta": read_fasta,
    "read_uniprot": read_uniprot,
    "read_structure": read_structure,
    "load_sae": load_sae,
    "load_plm": load_plm,
    "EmbeddingStore": _read_store,
    "FeatureDatabase": _open_database,
}


@pytest.fixture(scope="session")
def generated(tmp_path_factory) -> tuple[Path, Path]:
    """``(folder of generated inputs, marker file the exploits would write)``."""
    dest = tmp_path_factory.mktemp("bad_inputs")
    marker = dest / "PWNED"
    generate.build_all(dest, marker)
    return dest, marker


def _path(row: Row, generated: tuple[Path, Path]) -> Path:
    if row.input.startswith("gen:"):
        return generated[0] / row.input[4:]
    return CORPUS / row.input


def _names_input(path: Path, reported: str | None) -> bool:
    """The error names the input, a file inside it (a store's index or shard) or beside it with its stem."""
    if not reported:
        return False
    reported_path = Path(reported).resolve()
    path = path.resolve()
    return reported_path == path or path in reported_path.parents or (
        reported_path.parent == path.parent and reported_path.name.startswith(path.stem)
    )


@pytest.mark.parametrize("row", ROWS, ids=str)
def test_bad_input_in_process(row: Row, generated, caplog):
    path = _path(row, generated)
    assert path.exists(), f"{row.input} is in the table but not in the corpus"
    caplog.set_level(logging.WARNING)
    reader = READERS[row.reader]
    if row.outcome == "error":
        with pytest.raises(InterPLMError) as info:
            reader(path)
        err = info.value
        assert row.expect in err.reason, f"{err.reason!r} does not contain {row.expect!r}"
        assert err.record == row.record, f"record {err.record!r}, table says {row.record!r}"
        assert _names_input(path, err.file), f"error names {err.file!r}, not {path}"
        assert "\n" not in str(err) and "Traceback" not in str(err)
    else:
        result = reader(path)
        try:
            namespace = {"result": result, "log": caplog.text, "ProteinRecord": ProteinRecord}
            assert eval(row.expect, namespace), f"{row.expect} is false for {result!r}"  # noqa: S307 - the project's own table
        finally:
            if isinstance(result, FeatureDatabase):
                result.close()
    assert not generated[1].exists(), "a malicious pickle ran code while a file was read"


def test_table_covers_the_whole_corpus(generated):
    """Every corpus file has a row, and every row names an existing file."""
    listed = {row.input for row in ROWS}
    assert len(listed) == len(ROWS), "an input is listed twice"
    on_disk = {f"{p.parent.name}/{p.name}" for kind in ("fasta", "uniprot", "structure") for p in (CORPUS / kind).iterdir()}
    assert sorted(on_disk - listed) == []
    dest = generated[0]
    made = set()
    for p in dest.rglob("*"):
        rel = p.relative_to(dest).as_posix()
        if p.name == generate.MARKER_NAME or p.suffix == ".json" or "-contact-regression" in p.name:
            continue
        if rel.startswith("store/"):
            if p.parent.parent == dest:  # one row per store folder
                made.add(rel)
        elif p.is_file() and not rel.startswith("plm/broken_regression/") or rel == "plm/broken_regression/esm2_t1_regression.pt":
            made.add(rel)
    assert sorted(made - {r[4:] for r in listed if r.startswith("gen:")}) == []
    assert {row.reader for row in ROWS} == set(READERS)


def test_exploit_files_would_run_code_if_unpickled(tmp_path):
    """The corpus's pickles are live: plain pickle and torch.load(weights_only=False) run them."""
    import torch

    marker = tmp_path / "ran"
    pickle.loads(pickle.dumps(generate.Exploit(marker), protocol=2))  # noqa: S301 - the point of the test
    assert marker.exists()
    marker.unlink()
    torch.save({"x": generate.Exploit(marker)}, tmp_path / "exploit.pt")
    torch.load(tmp_path / "exploit.pt", weights_only=False)  # noqa: S614 - the point of the test
    assert marker.exists()


def test_unknown_feature_types_are_counted_once_per_file(caplog):
    from interplm_plugins.core.inputs.uniprot import unknown_feature_types

    caplog.set_level(logging.WARNING, logger="interplm_plugins.core.inputs.uniprot")
    entries = read_uniprot(CORPUS / "uniprot" / "flat_unknown_feature_type.dat")
    assert unknown_feature_types(entries) == {"NEW_KEY": 1, "WIDGET": 1}
    records = [r for r in caplog.records if "does not know" in r.getMessage()]
    assert len(records) == 1 and "flat_unknown_feature_type.dat" in records[0].getMessage()


def test_write_fasta_refuses_what_would_not_read_back(tmp_path):
    out = tmp_path / "out.fasta"
    cases = [
        (ProteinRecord("two words", "MKT"), "would read back as 'two'"),
        (ProteinRecord("sp|Q00001|X_HUMAN", "MKT"), "would read back as 'Q00001'"),
        (ProteinRecord("", "MKT"), "empty id"),
        (ProteinRecord("P1", "MKT", "line\nbreak"), "line break"),
        (ProteinRecord("P1", "MK-T"), "gap '-' at position 3"),
    ]
    for record, message in cases:
        with pytest.raises(InterPLMError, match=re.escape(message)):
            write_fasta([ProteinRecord("ok", "MKV"), record], out)
        assert not out.exists()  # atomic: nothing half-written
    write_fasta([ProteinRecord("P1", "mkt*", "  padded  ")], out)
    assert read_fasta(out) == [ProteinRecord("P1", "MKT", "padded")]


# ------------------------------------------------------------------------------ command line

CLI_ROWS = [row for row in ROWS if row.cli]


def _cli_command(row: Row, path: Path, out: Path, plm: Path, fasta: Path) -> list[str]:
    commands = {
        "read_fasta": ["embed", str(path), "--model", str(plm), "--layer", "1", "--out", str(out)],
        "read_uniprot": ["concepts", str(path), "--out", str(out)],
        "load_sae": ["build-db", str(fasta), "--model", str(plm), "--sae", str(path), "--out", str(out)],
        "load_plm": ["embed", str(fasta), "--model", str(path), "--layer", "1", "--out", str(out)],
        "EmbeddingStore": ["train", str(path), "--out", str(out), "--steps", "2", "--batch-size", "4", "--width", "16"],
        "FeatureDatabase": ["describe", str(path), "--top", "1", "--base-url", "http://127.0.0.1:9"],
    }
    return [sys.executable, "-m", "interplm_plugins.cli", "-q", *commands[row.reader]]


def test_cli_rows_fail_with_one_line_and_status_2(generated, tiny_esm2_path, tmp_path):
    """The CLI rows, run as real subprocesses (a few at a time): exit 2, one stderr line naming
    the file and the reason, no traceback, no output written."""
    assert len(CLI_ROWS) >= 20 and {row.reader for row in CLI_ROWS} == set(READERS) - {"read_structure"}
    fasta = tmp_path / "proteins.fasta"
    write_fasta([ProteinRecord("P1", "MKTAYIAKQRQISFVKSHFSRQ"), ProteinRecord("P2", "GSHMLEDPVRKQ")], fasta)
    env = {**os.environ, "INTERPLM_OFFLINE": "1", "ANTHROPIC_API_KEY": "sk-ant-test-not-a-key", "TQDM_DISABLE": "1"}

    def run(item):
        index, row = item
        path = _path(row, generated)
        out = tmp_path / f"out_{index}"
        result = subprocess.run(_cli_command(row, path, out, tiny_esm2_path, fasta), capture_output=True, text=True,
                                timeout=240, env=env)  # fmt: skip
        return row, path, out, result

    failures = []
    with ThreadPoolExecutor(max_workers=3) as pool:
        for row, path, out, result in pool.map(run, enumerate(CLI_ROWS)):
            lines = result.stderr.strip().splitlines()
            problems = []
            if result.returncode != 2:
                problems.append(f"exit status {result.returncode}")
            if len(lines) != 1 or not lines[0].startswith("interplm: error: "):
                problems.append(f"stderr is not one 'interplm: error:' line: {result.stderr[-800:]!r}")
            elif row.expect not in lines[0] or path.name not in lines[0] and path.stem not in lines[0]:
                problems.append(f"stderr does not name the file and reason: {lines[0]!r}")
            if "Traceback" in result.stderr:
                problems.append("traceback")
            written = [p for p in out.rglob("*") if p.is_file()] if out.is_dir() else [out] if out.exists() else []
            if written:  # an empty output folder (train makes it first) is harmless
                problems.append(f"{written[0]} was written")
            if problems:
                failures.append(f"{row.input}: {'; '.join(problems)}")
    assert failures == []
    assert not generated[1].exists()
