"""Fuzz the FASTA and UniProt readers (and, on request, the structure reader): nothing but
:class:`InterPLMError` may come out of them, and what they return must be well formed.

Two engines:

- ``mutate`` (default, no extra dependency, deterministic for a given ``--seed``): real seed files
  from ``../shared/data`` and the hand-written corpus in ``tests/bad_inputs`` are mutated at the
  byte level (bit flips, interesting bytes and tokens such as ``//``, ``FT   ``, ``</entry>``, a
  UTF-8 BOM or CRLF, deletions, duplications, line shuffles, truncation, splices of two seeds,
  re-compression as ``.gz``), one to six mutations stacked per input;
- ``atheris`` (``pip install atheris``): coverage-guided libFuzzer over the same seeds.

Every input is written to a file with a suffix the reader sees (``.fasta``, ``.dat``, ``.xml``, ``.json``,
``.tsv``, ``.pdb``, ``.cif``, sometimes ``.gz``) and read. Outcomes: ``ok`` (parsed; then checked:
unique non-empty ids, sequences of protein letters only, features inside their sequence),
``error`` (InterPLMError), ``crash`` (any other exception, or a result that breaks those checks),
``hang`` (longer than ``--time-limit`` seconds). Crashing inputs are saved under ``--crashes``.

    python tests/fuzz_parsers.py --iterations 20000            # a few minutes
    python tests/fuzz_parsers.py --seconds 600 --targets fasta,uniprot,structure
    python tests/fuzz_parsers.py --engine atheris --seconds 600

The test suite runs a short, fixed-seed version (tests/test_fuzz_parsers.py).
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import hashlib
import json
import logging
import os
import random
import signal
import sys
import tempfile
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

HERE = Path(__file__).resolve().parent
SHARED = (HERE.parent.parent / "shared" / "data").resolve()
CORPUS = HERE / "bad_inputs"

TARGET_SUFFIXES = {
    "fasta": [".fasta", ".fa", ".fasta.gz"],
    "uniprot": [".dat", ".xml", ".tsv", ".json", ".txt", ".dat.gz", ".json.gz"],
    "structure": [".pdb", ".cif", ".pdb.gz"],
}

TOKENS = [
    b"\n", b"\r\n", b"\r", b"\t", b" ", b"\x00", b"\xff", b"\xfe", b"\x80", b"\xef\xbb\xbf", "ß".encode(), "\u00a0".encode(),
    "\ufb01".encode(), b">", b">sp|P12345|X_HUMAN ", b";", b"*", b"-", b".", b"?", b"..", b"<", b">", b"<1", b">999999",
    b"?..?", b"-1", b"0", b"99999999999999999999", b"//\n", b"ID   ", b"AC   ", b"FT   ", b"FT   DOMAIN          ",
    b"FT                   /note=\"", b"SQ   SEQUENCE   ", b"\"", b"</entry>", b"<entry>", b"<feature type=\"domain\">",
    b"<location><begin position=\"", b"<sequence length=\"", b"&amp;", b"&lol;", b"<!DOCTYPE x [<!ENTITY a \"b\">]>",
    b"Entry\tSequence\n", b"\tHELIX 1..5; ", b"BINDING ", b"/ligand=\"", b'{"results": [', b'"primaryAccession": "',
    b'"value": null', b'"modifier": "UNKNOWN"', b'"sequence": "Q00001-2", ', b"{", b"}", b"[", b"]", b",", b"\\u0000",
    b"ATOM  ", b"HETATM", b"data_", b"loop_\n",
    b"_atom_site.", b"END\n", b"MODEL        1\n", b"ENDMDL\n",
]  # fmt: skip


# ------------------------------------------------------------------------------------ seeds


def load_seeds(shared: Path = SHARED, corpus: Path = CORPUS) -> dict[str, list[tuple[str, bytes]]]:
    """``{target: [(suffix, bytes), ...]}``: small slices of real files plus the bad-input corpus."""
    seeds: dict[str, list[tuple[str, bytes]]] = {"fasta": [], "uniprot": [], "structure": []}

    def add(target: str, suffix: str, data: bytes) -> None:
        seeds[target].append((suffix, data))

    if shared.is_dir():
        for name in ("sequences/swissprot_train.fasta", "sequences/mmseqs2_examples_QUERY_500.fasta",
                     "uniprot/biopython_tests/multi_ex.fasta"):  # fmt: skip
            path = shared / name
            if path.is_file():
                records = path.read_text().lstrip(">").split("\n>")[:6]
                add("fasta", ".fasta", (">" + "\n>".join(records).rstrip("\n") + "\n").encode())
        for name in ("uniprot/biopython_tests/multi_ex.txt", "uniprot/biopython_tests/P04439.txt"):
            path = shared / name
            if path.is_file():
                entries = path.read_text().split("//\n")
                add("uniprot", ".dat", ("//\n".join(entries[:2]) + "//\n").encode())
        dat = shared / "uniprot" / "swissprot_train.dat.gz"
        if dat.is_file():
            with gzip.open(dat, "rt") as fh:
                chunk = fh.read(400_000)
            entries = chunk.split("//\n")[:-1]
            for i in (0, 17, 101):
                if i < len(entries):
                    add("uniprot", ".dat", (entries[i] + "//\n").encode())
        xml = shared / "uniprot" / "biopython_tests" / "multi_ex.xml"
        if xml.is_file():
            text = xml.read_text()
            cut = text.find("</entry>", text.find("</entry>") + 1)
            add("uniprot", ".xml", (text[: cut + len("</entry>")] + "\n</uniprot>\n").encode())
        rest_json = shared / "uniprot" / "more" / "uniprot_rest_json_parquet_44.json.gz"
        if rest_json.is_file():  # REST JSON: a two-entry search result and one entry, features only
            with gzip.open(rest_json, "rt") as fh:
                results = json.load(fh)["results"]
            keep = ("primaryAccession", "uniProtkbId", "entryType", "sequence", "features")
            small = [{k: e[k] for k in keep if k in e} for e in results[:3]]
            add("uniprot", ".json", json.dumps({"results": small[:2]}, indent=1).encode())
            add("uniprot", ".json", json.dumps(small[2]).encode())
        tsv = shared / "uniprot" / "procaliper_sample_uniprot.tsv"
        if tsv.is_file():
            add("uniprot", ".tsv", "".join(tsv.read_text().splitlines(keepends=True)[:4]).encode())
        structures = shared / "structures"
        for name in ("P0DP23_3WFN_calm1.pdb", "O14313_AF.pdb"):
            path = structures / name
            if path.is_file():
                lines = path.read_text().splitlines(keepends=True)
                add("structure", ".pdb", "".join(lines[:60] + [line for line in lines if line.startswith("HETATM")][:10]).encode())
    for target, folder in (("fasta", "fasta"), ("uniprot", "uniprot"), ("structure", "structure")):
        for path in sorted((corpus / folder).glob("*")):
            if path.is_file() and path.stat().st_size < 50_000:
                add(target, "".join(path.suffixes) or ".txt", path.read_bytes())
    return seeds


# ---------------------------------------------------------------------------------- mutation


def mutate(data: bytes, rng: random.Random, others: list[bytes]) -> bytes:
    """One to six stacked byte-level mutations of ``data``."""
    buf = bytearray(data)
    for _ in range(rng.randint(1, 6)):
        op = rng.randrange(12)
        n = len(buf)
        pos = rng.randint(0, n) if n else 0
        if op == 0 and n:  # flip bits
            for _ in range(rng.randint(1, 4)):
                i = rng.randrange(n)
                buf[i] ^= 1 << rng.randrange(8)
        elif op == 1 and n:  # an interesting byte
            buf[rng.randrange(n)] = rng.choice(b"\x00\xff\x7f\x80\n\r\t >*-?.;\"|<>/0123456789")
        elif op in (2, 3):  # insert a token
            buf[pos:pos] = rng.choice(TOKENS)
        elif op == 4 and n:  # delete a range
            buf[pos : pos + rng.randint(1, 64)] = b""
        elif op == 5 and n:  # duplicate a range
            start = rng.randrange(n)
            buf[pos:pos] = buf[start : start + rng.randint(1, 200)]
        elif op == 6 and n:  # truncate
            del buf[rng.randint(0, n) :]
        elif op == 7:  # line-level: delete, duplicate or swap lines
            lines = bytes(buf).split(b"\n")
            if len(lines) > 1:
                i, j = rng.randrange(len(lines)), rng.randrange(len(lines))
                choice = rng.randrange(3)
                if choice == 0:
                    del lines[i]
                elif choice == 1:
                    lines.insert(j, lines[i])
                else:
                    lines[i], lines[j] = lines[j], lines[i]
                buf = bytearray(b"\n".join(lines))
        elif op == 8 and others:  # splice with another seed
            other = rng.choice(others)
            cut = rng.randint(0, len(other))
            buf = buf[:pos] + bytearray(other[cut:])
        elif op == 9 and n:  # change case of a stretch
            start = rng.randrange(n)
            stretch = bytes(buf[start : start + rng.randint(1, 40)])
            buf[start : start + len(stretch)] = stretch.lower() if rng.random() < 0.5 else stretch.upper()
        elif op == 10 and n:  # random bytes
            buf[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
        elif op == 11:  # line endings
            buf = bytearray(bytes(buf).replace(b"\n", rng.choice([b"\r\n", b"\r", b"\n\n", b"\n"])))
    return bytes(buf)


# ----------------------------------------------------------------------------- the targets


class Hang(Exception):
    pass


def _check_fasta(records) -> str | None:
    from interplm_plugins.core.inputs.sequences import MAX_SEQUENCE_LENGTH, PROTEIN_LETTERS

    ids = [r.id for r in records]
    if not records or len(set(ids)) != len(ids) or not all(ids):
        return "empty result, empty or duplicate id"
    for r in records:
        if any(c.isspace() for c in r.id):
            return f"id with whitespace {r.id!r}"
        if not r.sequence or len(r.sequence) > MAX_SEQUENCE_LENGTH or not set(r.sequence) <= PROTEIN_LETTERS:
            return f"bad sequence for {r.id!r}"
    return None


def _check_uniprot(entries) -> str | None:
    from interplm_plugins.core.inputs.sequences import PROTEIN_LETTERS

    accessions = [e.accession for e in entries]
    if not entries or len(set(accessions)) != len(accessions) or not all(accessions):
        return "empty result, empty or duplicate accession"
    for e in entries:
        if not e.sequence or not set(e.sequence) <= PROTEIN_LETTERS:
            return f"bad sequence for {e.accession}"
        for f in e.features:
            if not (isinstance(f.start, int) and isinstance(f.end, int) and 1 <= f.start <= f.end <= len(e.sequence)):
                return f"feature {f.type} {f.start}..{f.end} outside 1..{len(e.sequence)} of {e.accession}"
    return None


def _check_structure(chains) -> str | None:
    from interplm_plugins.core.inputs.sequences import PROTEIN_LETTERS

    if not chains:
        return "no chains returned instead of an error"
    for chain in chains:
        if not chain.residues or not set(chain.sequence) <= PROTEIN_LETTERS:
            return f"chain {chain.chain_id!r} empty or with bad letters"
        keys = [(r.resi, r.icode) for r in chain.residues]
        if len(set(keys)) != len(keys):
            return f"chain {chain.chain_id!r} lists a residue twice"
    return None


def _readers() -> dict[str, tuple[Callable, Callable]]:
    from interplm_plugins.core.inputs.sequences import read_fasta
    from interplm_plugins.core.inputs.structure import read_structure
    from interplm_plugins.core.inputs.uniprot import read_uniprot

    return {"fasta": (read_fasta, _check_fasta), "uniprot": (read_uniprot, _check_uniprot),
            "structure": (read_structure, _check_structure)}  # fmt: skip


@dataclass
class Report:
    engine: str
    seed: int | None
    targets: list[str]
    seeds: dict[str, int] = field(default_factory=dict)
    inputs: Counter = field(default_factory=Counter)  # per target
    outcomes: Counter = field(default_factory=Counter)  # "target:ok/error/crash/hang"
    reasons: Counter = field(default_factory=Counter)  # error reasons, first words
    crashes: dict[str, dict] = field(default_factory=dict)  # signature -> first example
    seconds: float = 0.0

    def as_dict(self) -> dict:
        return {
            "engine": self.engine, "seed": self.seed, "targets": self.targets, "seed_files": self.seeds,
            "inputs": dict(self.inputs), "total_inputs": sum(self.inputs.values()), "outcomes": dict(sorted(self.outcomes.items())),
            "distinct_crashes": len(self.crashes), "crashes": self.crashes, "seconds": round(self.seconds, 1),
            "inputs_per_second": round(sum(self.inputs.values()) / self.seconds, 1) if self.seconds else None,
            "top_error_reasons": dict(self.reasons.most_common(15)),
        }  # fmt: skip


def _error_kind(reason: str) -> str:
    words = reason.replace("(", " ").split()
    return " ".join(w for w in words[:4] if not any(ch.isdigit() for ch in w))


def run_one(target: str, suffix: str, data: bytes, workdir: Path, report: Report, time_limit: float,
            crash_dir: Path | None = None) -> str:  # fmt: skip
    """Read ``data`` as a ``suffix`` file with ``target``'s reader; record and return the outcome."""
    from interplm_plugins.errors import InterPLMError

    reader, check = _readers()[target]
    path = workdir / f"input{suffix}"
    path.write_bytes(data)
    report.inputs[target] += 1
    outcome, detail = "ok", None
    use_alarm = time_limit > 0 and hasattr(signal, "setitimer") and os.name == "posix"
    if use_alarm:
        signal.setitimer(signal.ITIMER_REAL, time_limit)
    try:
        result = reader(path)
        problem = check(result)
        if problem:
            outcome, detail = "crash", ("invalid result", problem, "")
    except InterPLMError as err:
        outcome = "error"
        report.reasons[f"{target}: {_error_kind(err.reason)}"] += 1
        if "\n" in str(err):
            outcome, detail = "crash", ("multi-line InterPLMError", str(err)[:200], "")
    except Hang:
        outcome, detail = "hang", ("hang", f"over {time_limit}s", "")
    except RecursionError as exc:
        outcome, detail = "crash", (type(exc).__name__, str(exc)[:200], "")
    except Exception as exc:  # the point: anything but InterPLMError is a finding
        tb = traceback.extract_tb(exc.__traceback__)
        where = next((f"{Path(f.filename).name}:{f.lineno}" for f in reversed(tb) if "interplm_plugins" in f.filename), "")
        deepest = f"{Path(tb[-1].filename).name}:{tb[-1].lineno}" if tb else ""
        outcome, detail = "crash", (type(exc).__name__, str(exc).splitlines()[0][:200] if str(exc) else "", f"{where} -> {deepest}")
    finally:
        if use_alarm:
            signal.setitimer(signal.ITIMER_REAL, 0)
    report.outcomes[f"{target}:{outcome}"] += 1
    if detail is not None:
        kind, message, where = detail
        signature = f"{target}: {kind} at {where}" if where else f"{target}: {kind}: {message[:60]}"
        if signature not in report.crashes:
            digest = hashlib.sha1(data).hexdigest()[:12]
            saved = None
            if crash_dir is not None:
                crash_dir.mkdir(parents=True, exist_ok=True)
                saved = crash_dir / f"{target}-{digest}{suffix}"
                saved.write_bytes(data)
            report.crashes[signature] = {"message": message, "input": str(saved) if saved else digest, "count": 0}
        report.crashes[signature]["count"] += 1
    return outcome


@contextlib.contextmanager
def _quiet_and_alarmed():
    def on_alarm(signum, frame):
        raise Hang()

    previous = signal.signal(signal.SIGALRM, on_alarm) if hasattr(signal, "SIGALRM") else None
    logging.disable(logging.WARNING)  # the readers' per-file warnings about dropped features
    try:
        yield
    finally:
        logging.disable(logging.NOTSET)
        if previous is not None:
            signal.signal(signal.SIGALRM, previous)


def run(iterations: int | None = 1000, seconds: float | None = None, seed: int = 0,
        targets: tuple[str, ...] = ("fasta", "uniprot"), time_limit: float = 10.0, crash_dir: Path | None = None,
        shared: Path = SHARED, corpus: Path = CORPUS, progress: bool = False) -> Report:  # fmt: skip
    """The ``mutate`` engine: ``iterations`` inputs (or as many as fit in ``seconds``); each seed is
    also read once unmutated first."""
    rng = random.Random(seed)
    all_seeds = load_seeds(shared, corpus)
    report = Report("mutate", seed, list(targets), seeds={t: len(all_seeds[t]) for t in targets})
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="interplm_fuzz_") as tmp, _quiet_and_alarmed():
        workdir = Path(tmp)
        for target in targets:  # the seeds themselves
            for suffix, data in all_seeds[target]:
                run_one(target, suffix, data, workdir, report, time_limit, crash_dir)
        done = 0
        while (iterations is None or done < iterations) and (seconds is None or time.monotonic() - start < seconds):
            target = targets[done % len(targets)]
            pool = all_seeds[target]
            if not pool:
                done += 1
                continue
            suffix, data = rng.choice(pool)
            mutated = mutate(data, rng, [d for _, d in pool])
            if rng.random() < 0.7:  # mostly valid UTF-8, or most inputs stop at 'not a text file'
                mutated = mutated.decode("utf-8", "ignore").encode("utf-8")
            if rng.random() < 0.2:  # the same content under another name the reader sees
                suffix = rng.choice(TARGET_SUFFIXES[target])
            if suffix.endswith(".gz") and rng.random() < 0.8:
                mutated = gzip.compress(mutated, mtime=0)
                if rng.random() < 0.3:
                    mutated = mutate(mutated, rng, [])  # a damaged archive
            run_one(target, suffix, mutated, workdir, report, time_limit, crash_dir)
            done += 1
            if progress and done % 1000 == 0:
                print(f"{done} inputs, {len(report.crashes)} distinct crashes, {time.monotonic() - start:.0f}s", file=sys.stderr)
    report.seconds = time.monotonic() - start
    return report


def run_atheris(seconds: float, targets: tuple[str, ...], crash_dir: Path | None, time_limit: float) -> None:
    """Coverage-guided fuzzing with atheris (libFuzzer). The first byte picks target and suffix."""
    import atheris

    with atheris.instrument_imports():
        import Bio.SwissProt  # noqa: F401
        import interplm_plugins.core.inputs.sequences  # noqa: F401
        import interplm_plugins.core.inputs.uniprot  # noqa: F401

    seeds = load_seeds()
    corpus_dir = Path(tempfile.mkdtemp(prefix="interplm_atheris_corpus_"))
    choices = [(t, s) for t in targets for s in TARGET_SUFFIXES[t]]
    for t in targets:
        for i, (suffix, data) in enumerate(seeds[t]):
            index = next((k for k, c in enumerate(choices) if c == (t, suffix)), choices.index((t, TARGET_SUFFIXES[t][0])))
            (corpus_dir / f"{t}_{i}").write_bytes(bytes([index]) + data)
    report = Report("atheris", None, list(targets), seeds={t: len(seeds[t]) for t in targets})
    workdir = Path(tempfile.mkdtemp(prefix="interplm_atheris_"))
    start = time.monotonic()
    out = Path(os.environ.get("INTERPLM_FUZZ_REPORT") or Path(tempfile.gettempdir()) / "interplm_fuzz_atheris.json")
    print(f"report: {out} (rewritten every 2,000 inputs)", file=sys.stderr)

    def one_input(data: bytes) -> None:
        if not data:
            return
        target, suffix = choices[data[0] % len(choices)]
        outcome = run_one(target, suffix, data[1:], workdir, report, time_limit, crash_dir)
        total = sum(report.inputs.values())
        if total % 2000 == 0 or outcome in ("crash", "hang"):
            report.seconds = time.monotonic() - start
            out.write_text(json.dumps(report.as_dict(), indent=2))

    signal.signal(signal.SIGALRM, lambda *_: (_ for _ in ()).throw(Hang()))
    logging.disable(logging.WARNING)
    atheris.Setup([sys.argv[0], f"-max_total_time={int(seconds)}", "-rss_limit_mb=4096", str(corpus_dir)], one_input)
    atheris.Fuzz()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--engine", choices=("mutate", "atheris"), default="mutate")
    parser.add_argument("--iterations", type=int, default=None, help="mutated inputs to try (default 5000 unless --seconds)")
    parser.add_argument("--seconds", type=float, default=None, help="stop after this long")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--targets", default="fasta,uniprot", help="comma-separated: fasta, uniprot, structure")
    parser.add_argument("--time-limit", type=float, default=10.0, help="seconds before one input counts as a hang")
    parser.add_argument("--crashes", type=Path, default=None, help="folder to save crashing inputs in")
    parser.add_argument("--json", type=Path, default=None, help="write the report here as JSON")
    args = parser.parse_args(argv)
    targets = tuple(t.strip() for t in args.targets.split(",") if t.strip())
    unknown = set(targets) - set(TARGET_SUFFIXES)
    if unknown:
        parser.error(f"unknown targets {sorted(unknown)}")
    if args.engine == "atheris":
        run_atheris(args.seconds or 60, targets, args.crashes, args.time_limit)
        return 0
    iterations = args.iterations if args.iterations is not None or args.seconds is not None else 5000
    report = run(iterations, args.seconds, args.seed, targets, args.time_limit, args.crashes, progress=True)
    summary = report.as_dict()
    text = json.dumps(summary, indent=2)
    if args.json:
        args.json.write_text(text)
    print(text)
    return 1 if report.crashes else 0


if __name__ == "__main__":
    sys.exit(main())
