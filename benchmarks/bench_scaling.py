"""Cost curves: how time and memory grow with sequence length, protein count, residues and positions.

Each curve answers "how long / how much memory for my N proteins of length L" on this machine,
with real proteins (Swiss-Prot, the mmseqs2 examples, ``../shared/data/sequences/corpus``) and the
embedded default pipeline (the demo ESM-2, 4 layers x 256, its SAE of 4,096 features on layer 3).
Every measured point is one row of the JSON's ``rows``; ``results/scaling.png`` plots them.

1. *Embedding vs sequence length* (``embed_sequences``): lengths 50 to 3,000 residues, about
   20,000 residues at each length (so time per residue compares), each length in a fresh process
   (``_common.run_child``) that loads the model, warms up on one short protein, then embeds them
   ``LENGTH_REPEATS`` (3) times, the median time the point (all in ``runs_s``); past
   1,022 residues ``embed_sequences`` embeds overlapping windows (>= 256 shared) and stitches them.
   The proteins are real: the first proteins of the pool (Swiss-Prot training set, mmseqs2
   examples, then the corpus) with at least L residues, cropped to their first L; proteins joined
   end to end only if the pool has too few long ones (the row's ``source`` says which). Reported:
   seconds per residue, residues/s, and the child's peak resident memory while embedding above its
   resident memory once the model was loaded (the kernel's peak counter is reset at that point
   through ``/proc/self/clear_refs``; where that is refused, ``ru_maxrss`` minus the baseline).
   The same for the ESM-2 8M architecture (6 x 320, random weights: speed depends on shapes only)
   to the last of its 6 layers, to show how a bigger model scales.
2. *Embedding vs number of proteins*: 10 to 3,000 real proteins (an evenly spaced sample of the
   corpus, shuffled once, nested prefixes), total ``embed_sequences`` wall time in this process:
   linear if the points lie on a line of slope 1 on the log-log plot.
3. *count_matches vs residues* (the concept-metrics kernel): the real concept labels of every
   annotated Swiss-Prot file (the 727 of ``uniprot/swissprot_train.dat.gz`` and the entries of
   ``uniprot/more/``, ``build_concept_labels`` with >= 3 instances in >= 2 proteins, as
   bench_concepts.py) against the demo SAE's activations of the same proteins, stacked protein by
   protein and cut at increasing residue counts up to all of them (~470,000). Time per residue
   and the peak of numpy's allocations during the count (``tracemalloc``).
4. *build-db* (``core.database.from_pipeline.build_database``, what ``interplm build-db --concepts`` runs): on
   increasing numbers of annotated proteins (50, 200, all 856), halves as the demo's shipped
   ``concept_halves.tsv``: wall time (embedding, SAE, statistics, concept table) and file size.
5. *Corpus streaming*: ``python -m interplm_plugins.cli embed SLICE --dtype float16`` (the demo
   model, layer 3) in a subprocess on evenly spaced slices of the corpus (300, 1,000 and
   3,000 proteins written as FASTA files; ``--slices`` for others): wall time, store size on disk, and the subprocess's
   peak RSS (``/usr/bin/time``'s maximum resident set size). A least-squares line against
   residues over the slices (intercept and slope >= 0: start-up and cost per residue) is then
   evaluated at the whole corpus (111,579 proteins, ~51.5 M residues), a row labelled as an
   extrapolation; the peak RSS line is fitted to the slices of at least one store shard (200,000
   residues: the store writer holds up to a shard in memory) when there are two such. ``--full-corpus`` really embeds the whole corpus instead of extrapolating it:
   well over 30 minutes more on 2 cores (the extrapolated row estimates it) and ~26 GB of disk for the float16 store (it checks the free
   space in the work folder first and refuses in one line if there is not enough).
6. *Mutation scan* (``core.interpret.mutate.mutation_scan``, as bench_mutate.py): 10, 25, 50 and 100
   positions x 19 mutants of one real 300-residue Swiss-Prot protein, each scan cold (a fresh
   cache folder).

Every timing also records CPU seconds: on a shared machine wall time grows with the other load.
``--quick`` runs tiny sizes of each curve (under a minute); the default sizes take about 15
minutes on a quiet 2-core machine (without ``--full-corpus``), most of it embedding (curves 2, 4, 5).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

LENGTHS = (50, 100, 200, 400, 800, 1022, 1500, 2000, 3000)
RESIDUES_PER_LENGTH = 20_000
LENGTH_REPEATS = 3  # embeddings of each length's proteins in its process; the median is the point
PROTEIN_COUNTS = (10, 100, 1000, 3000)
COUNT_RESIDUES = (25_000, 50_000, 100_000, 200_000)  # then all annotated residues
DB_PROTEINS = (50, 200)  # then all annotated proteins
CORPUS_SLICES = (300, 1000, 3000)  # (10,000 proteins take ~9 more minutes: --slices 300 1000 10000)
SHARD_RESIDUES = 200_000  # `interplm embed`'s default shard: the writer holds up to one shard in memory
SCAN_POSITIONS = (10, 25, 50, 100)
SCAN_LENGTH = 300
QUICK = {"lengths": (50, 400, 1500), "lengths_8m": (50, 1500), "residues_per_length": 3000, "protein_counts": (5, 20),
         "length_repeats": 1, "count_proteins": 15, "count_residues": (2000, 4000), "db_proteins": (5, 10), "corpus_slices": (10, 30), "scan_positions": (1, 3)}  # fmt: skip
DEMO_LAYER_8M = 6  # the 8M architecture is embedded to its last layer: the whole model's cost
CORPUS_DTYPE_BYTES = 2  # float16 store


# ------------------------------------------------------------------------------ inputs


def corpus_files(data: Path) -> list[Path]:
    return sorted((data / "sequences" / "corpus").glob("*.fasta*"))


def read_corpus(data: Path):
    """Every protein of the corpus, in file order (``iter_fasta`` streams and validates each file)."""
    from interplm_plugins.core.inputs.sequences import ProteinRecord, iter_fasta

    out, seen = [], set()
    for path in corpus_files(data):
        for r in iter_fasta(path):
            rid = r.id
            while rid in seen:  # (ids are unique across the corpus files today; keep them so)
                rid += "_"
            seen.add(rid)
            out.append(r if rid == r.id else ProteinRecord(rid, r.sequence, r.description))
    return out


def evenly_spaced(records: list, count: int) -> list:
    """``count`` records spread evenly over ``records`` (the corpus files differ in their lengths)."""
    count = min(count, len(records))
    return [records[i * len(records) // count] for i in range(count)]


def write_plain_fasta(records, path: Path) -> Path:
    with open(path, "w", encoding="utf-8") as out:
        for r in records:
            out.write(f">{r.id}\n{r.sequence}\n")
    return path


def proteins_of_length(pool, length: int, count: int) -> tuple[list, str]:
    """``count`` real proteins of exactly ``length`` residues: the first proteins of ``pool`` with at
    least ``length`` residues cropped to their first ``length``; if there are too few, the rest are
    real proteins joined end to end, then cropped. Returns the records and a note saying which."""
    from interplm_plugins.core.inputs.sequences import ProteinRecord

    cropped, short = [], []
    for r in pool:
        if len(r.sequence) >= length:
            cropped.append(ProteinRecord(f"L{length}_{len(cropped)}", r.sequence[:length]))
            if len(cropped) == count:
                return cropped, f"first {length} residues of {count} real proteins"
        elif len(short) < count * 50:
            short.append(r.sequence)
    joined, buffer = [], ""
    for seq in short:
        buffer += seq
        if len(buffer) >= length:
            joined.append(ProteinRecord(f"L{length}_j{len(joined)}", buffer[:length]))
            buffer = ""
            if len(cropped) + len(joined) == count:
                break
    return cropped + joined, f"{len(cropped)} real proteins cropped, {len(joined)} made of real proteins joined end to end"


def annotated_files(data: Path) -> list[Path]:
    """Every annotated Swiss-Prot file: the 727 training entries, then uniprot/more/ (as scripts/build_demo.py)."""
    more = data / "uniprot" / "more"
    return [data / "uniprot" / "swissprot_train.dat.gz", *sorted(more.glob("*.dat.gz")), *sorted(more.glob("*.json.gz"))]


def annotated_labels(data: Path):
    """Concept labels of every annotated protein (>= 3 instances in >= 2 proteins, as bench_concepts.py)."""
    from interplm_plugins.core.concepts import build_concept_labels
    from interplm_plugins.core.inputs.uniprot import read_uniprot_files

    entries, _ = read_uniprot_files(annotated_files(data))
    return build_concept_labels(entries, min_instances=3, min_proteins=2)


# ------------------------------------------------------------------ 1. embedding vs length


def _proc_status_kib(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter (VmHWM) to the current RSS (Linux >= 4.0); False if refused."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def child(spec: dict) -> dict:
    """One length in a fresh process: load the model, warm up, reset the peak, embed ``spec['fasta']``."""
    import resource

    import torch

    torch.set_num_threads(spec["threads"])
    from interplm_plugins.core.plm.embed import embed_sequences
    from interplm_plugins.core.plm.loading import load_plm
    from interplm_plugins.core.inputs.sequences import ProteinRecord, read_fasta

    plm = load_plm(spec["model"])
    records = read_fasta(spec["fasta"])
    list(embed_sequences(plm, [ProteinRecord("warmup", records[0].sequence[:50])], spec["layer"]))
    baseline_kib = _proc_status_kib("VmRSS")
    reset = _reset_peak_rss()
    runs = []  # (seconds, cpu seconds) of each repeat
    for _ in range(spec["repeats"]):
        cpu, start = time.process_time(), time.perf_counter()
        residues = 0
        for _, reps in embed_sequences(plm, records, spec["layer"]):
            residues += len(reps[spec["layer"]])
        runs.append((time.perf_counter() - start, time.process_time() - cpu))
    seconds, cpu = sorted(runs)[len(runs) // 2]  # the median repeat
    peak_kib = _proc_status_kib("VmHWM") if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"seconds": seconds, "cpu_s": cpu, "runs_s": [r[0] for r in runs], "residues": residues, "baseline_rss_mib": baseline_kib / 1024,
            "peak_rss_mib": peak_kib / 1024, "extra_rss_mib": max(0, peak_kib - baseline_kib) / 1024, "peak_reset": reset}  # fmt: skip


def length_curve(model: str, model_label: str, layer: int, lengths, residues_per_length: int, pool, work: Path, threads: int, repeats: int) -> list[dict]:
    rows = []
    for length in lengths:
        count = max(1, round(residues_per_length / length))
        records, source = proteins_of_length(pool, length, count)
        fasta = write_plain_fasta(records, work / f"length_{model_label}_{length}.fasta")
        r = _common.run_child(__file__, {"model": model, "layer": layer, "fasta": str(fasta), "threads": threads, "repeats": repeats})
        rows.append({"curve": "embed vs length", "model": model_label, "layer": layer, "length": length, "proteins": len(records),
                     "residues": r["residues"], "seconds": r["seconds"], "cpu_s": r["cpu_s"], "residues_per_s": r["residues"] / r["seconds"],
                     "s_per_residue": r["seconds"] / r["residues"], "runs_s": r["runs_s"], "windows": len(_window_starts(length)),
                     "peak_rss_mib": r["peak_rss_mib"], "baseline_rss_mib": r["baseline_rss_mib"], "extra_rss_mib": r["extra_rss_mib"],
                     "source": source})  # fmt: skip
        print(f"  {model_label} L={length}: {r['residues'] / r['seconds']:,.0f} residues/s, +{r['extra_rss_mib']:.0f} MiB", flush=True)
    return rows


def _window_starts(length: int) -> list[int]:
    from interplm_plugins.core.plm.embed import MAX_WINDOW, window_starts

    return window_starts(length, MAX_WINDOW, 256)


# ------------------------------------------------------------ 2. embedding vs protein count


def count_curve(plm, layer: int, sample, counts) -> list[dict]:
    from interplm_plugins.core.plm.embed import embed_sequences

    rows = []
    for n in counts:
        records = sample[:n]
        cpu = time.process_time()
        seconds, residues = _common.timed(lambda: sum(len(reps[layer]) for _, reps in embed_sequences(plm, records, layer)))
        cpu = time.process_time() - cpu
        rows.append({"curve": "embed vs proteins", "model": "demo", "layer": layer, "proteins": len(records), "residues": residues,
                     "seconds": seconds, "cpu_s": cpu, "residues_per_s": residues / seconds, "s_per_protein": seconds / len(records)})  # fmt: skip
        print(f"  {len(records)} proteins ({residues:,} residues): {seconds:.1f} s", flush=True)
    return rows


# ------------------------------------------------------------------- 3. count_matches


def demo_activations(pipeline, labels, proteins):
    """The demo SAE's activations of ``proteins`` stacked in that order (sparse: SAE activations are >= 0)."""
    from scipy import sparse

    from interplm_plugins.core.sae.encode import iter_feature_activations
    from interplm_plugins.core.inputs.sequences import ProteinRecord

    records = [ProteinRecord(p, labels.sequences[p]) for p in proteins]
    by_id = {r.id: sparse.csr_matrix(a) for r, a in iter_feature_activations(pipeline.plm, pipeline.sae, pipeline.layer, records)}
    return sparse.vstack([by_id[p] for p in proteins], format="csr")


def count_matches_curve(pipeline, labels, proteins, residue_points) -> list[dict]:
    from interplm_plugins.core.concepts import THRESHOLDS, count_matches

    stacked, offsets = labels.stack(proteins)
    start = time.perf_counter()
    acts = demo_activations(pipeline, labels, proteins)
    print(f"  activations of {len(proteins)} annotated proteins ({acts.shape[0]:,} residues, L0 {acts.nnz / acts.shape[0]:.0f}) "
          f"in {time.perf_counter() - start:.0f} s", flush=True)  # fmt: skip
    total = int(offsets[-1])
    cuts = sorted({int(offsets[np.searchsorted(offsets, r, side="right") - 1]) for r in residue_points if r < total} | {total})
    rows = []
    for cut in cuts:
        a, lab = acts[:cut], stacked[:cut]
        tracemalloc.start()
        cpu = time.process_time()
        seconds, _ = _common.timed(lambda: count_matches(a, lab, THRESHOLDS))
        cpu = time.process_time() - cpu
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        rows.append({"curve": "count_matches vs residues", "residues": cut, "proteins": int(np.searchsorted(offsets, cut)),
                     "concepts": lab.shape[1], "features": a.shape[1], "thresholds": len(THRESHOLDS), "activations_nnz": int(a.nnz),
                     "label_cells": int(lab.nnz), "seconds": seconds, "cpu_s": cpu, "s_per_residue": seconds / cut,
                     "peak_alloc_mib": peak / 2**20})  # fmt: skip
        print(f"  count_matches on {cut:,} residues: {seconds:.2f} s", flush=True)
    return rows


# ------------------------------------------------------------------------ 4. build-db


def concept_halves_of(labels, proteins):
    """Validation/test halves of ``proteins`` as the demo's shipped ``concept_halves.tsv`` has them
    (proteins it lacks alternate between the halves)."""
    import interplm_plugins
    from interplm_plugins.core.concepts import ConceptHalves, ConceptLabels

    tsv = Path(interplm_plugins.__file__).parent / "data" / "demo" / "concept_halves.tsv"
    shipped = dict(line.split("\t") for line in tsv.read_text().splitlines()[1:]) if tsv.is_file() else {}
    splits = {p: shipped.get(p, ("valid", "test")[i % 2]) for i, p in enumerate(proteins)}
    subset = labels.subset(proteins)
    split_labels = ConceptLabels(subset.concepts, subset.sequences, {p: subset.matrix(p) for p in proteins}, splits, subset.settings)
    return ConceptHalves.from_splits(split_labels)


def build_db_curve(pipeline, labels, proteins, counts, work: Path) -> list[dict]:
    from interplm_plugins.core.database.from_pipeline import build_database
    from interplm_plugins.core.inputs.sequences import ProteinRecord

    rows = []
    for n in counts:
        chosen = proteins[:n]
        records = [ProteinRecord(p, labels.sequences[p]) for p in chosen]
        halves = concept_halves_of(labels, chosen)
        out = work / f"features_{n}.sqlite"
        cpu = time.process_time()
        seconds, _ = _common.timed(lambda: build_database(pipeline, records, out, halves=halves, progress=False))
        cpu = time.process_time() - cpu
        size = out.stat().st_size
        residues = sum(len(r.sequence) for r in records)
        rows.append({"curve": "build-db vs proteins", "proteins": n, "residues": residues, "seconds": seconds, "cpu_s": cpu,
                     "s_per_protein": seconds / n, "database_mib": size / 2**20, "features": pipeline.num_features})  # fmt: skip
        print(f"  build_database on {n} proteins ({residues:,} residues): {seconds:.1f} s, {size / 2**20:.1f} MiB", flush=True)
        out.unlink()
    return rows


# --------------------------------------------------------------------- 5. corpus streaming


def _vm_hwm_kib(pid: int) -> int:
    """Peak RSS so far (VmHWM, KiB) of a running process."""
    with open(f"/proc/{pid}/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("VmHWM:"))


def cli_embed(fasta: Path, store: Path, layer: int) -> dict:
    """``interplm embed FASTA --dtype float16`` in a subprocess: wall, CPU, peak RSS, store bytes.

    The peak RSS is what ``/usr/bin/time`` reports for the command (not ``ru_maxrss`` of our own
    child: Linux carries the parent's resident size at fork through exec into it); without
    ``/usr/bin/time``, the command's VmHWM polled every 0.1 s until it exits."""
    cmd = [sys.executable, "-m", "interplm_plugins.cli", "-q", "embed", str(fasta), "--out", str(store), "--layer", str(layer),
           "--dtype", "float16", "--no-resume"]  # fmt: skip
    log, timing = store.with_suffix(".log"), store.with_suffix(".time")
    timer = "/usr/bin/time" if os.access("/usr/bin/time", os.X_OK) else None
    if timer:
        cmd = [timer, "-f", "%M %U %S", "-o", str(timing), *cmd]
    start, polled = time.perf_counter(), 0
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            try:
                polled = max(polled, _vm_hwm_kib(proc.pid))
            except (OSError, StopIteration):
                pass
            time.sleep(0.1)
    seconds = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"interplm embed exited {proc.returncode}: {log.read_text()[-2000:]}")
    if timer:
        peak_kib, user, system = timing.read_text().split()[-3:]
        peak_kib, cpu, method = int(peak_kib), float(user) + float(system), "/usr/bin/time"
    else:
        peak_kib, cpu, method = polled, usage.ru_utime + usage.ru_stime, "VmHWM polled every 0.1 s"
    size = sum(f.stat().st_size for f in store.iterdir() if f.is_file())
    return {"seconds": seconds, "cpu_s": cpu, "peak_rss_mib": peak_kib / 1024, "rss_method": method, "store_bytes": size}


def corpus_curve(corpus, slices, layer: int, work: Path) -> list[dict]:
    rows = []
    for n in slices:
        records = evenly_spaced(corpus, n)
        fasta = write_plain_fasta(records, work / f"corpus_{n}.fasta")
        r = cli_embed(fasta, work / f"store_{n}", layer)
        shutil.rmtree(work / f"store_{n}")
        residues = sum(len(x.sequence) for x in records)
        rows.append({"curve": "interplm embed (corpus)", "kind": "measured", "proteins": len(records), "residues": residues, **r,
                     "residues_per_s": residues / r["seconds"], "store_gib": r["store_bytes"] / 2**30})  # fmt: skip
        print(f"  interplm embed, {len(records)} proteins ({residues:,} residues): {r['seconds']:.0f} s, "
              f"store {r['store_bytes'] / 2**30:.2f} GiB, peak RSS {r['peak_rss_mib']:.0f} MiB", flush=True)  # fmt: skip
    return rows


def extrapolate(measured: list[dict], proteins: int, residues: int) -> dict:
    """A least-squares line of each measure against residues (intercept and slope >= 0: a fixed
    start-up cost and a cost per residue), evaluated at the whole corpus: an extrapolation."""
    from scipy.optimize import nnls

    x = np.array([r["residues"] for r in measured], dtype=float)
    design = np.stack([np.ones_like(x), x / residues], axis=1)  # (scaled: the two columns are of similar size)

    def at(key: str, rows: np.ndarray | None = None) -> float:
        rows = np.ones(len(x), dtype=bool) if rows is None else rows
        (intercept, slope), _ = nnls(design[rows], np.array([r[key] for r in measured], dtype=float)[rows])
        return float(intercept + slope)

    whole_shards = x >= SHARD_RESIDUES
    rss = at("peak_rss_mib", whole_shards if whole_shards.sum() >= 2 else None)

    seconds, store = at("seconds"), at("store_bytes")
    return {"curve": "interplm embed (corpus)", "kind": f"extrapolated (line fitted to {len(measured)} slices)", "proteins": proteins,
            "residues": residues, "seconds": seconds, "cpu_s": at("cpu_s"), "peak_rss_mib": rss, "store_bytes": store,
            "peak_rss_fitted_to": int(whole_shards.sum()) if whole_shards.sum() >= 2 else len(x),
            "residues_per_s": residues / seconds, "store_gib": store / 2**30}  # fmt: skip


def full_corpus_space(corpus, dim: int, work: Path) -> tuple[int, int]:
    """(bytes the full-corpus run needs in the work folder, bytes free there)."""
    residues = sum(len(r.sequence) for r in corpus)
    need = int(residues * dim * CORPUS_DTYPE_BYTES * 1.05 + residues * 1.1 + 2**30)  # store (+5%), the FASTA, 1 GiB spare
    return need, shutil.disk_usage(work).free


def full_corpus_run(corpus, layer: int, work: Path) -> dict:
    fasta = write_plain_fasta(corpus, work / "corpus_all.fasta")
    r = cli_embed(fasta, work / "store_all", layer)
    shutil.rmtree(work / "store_all")
    residues = sum(len(x.sequence) for x in corpus)
    return {"curve": "interplm embed (corpus)", "kind": "measured (--full-corpus)", "proteins": len(corpus), "residues": residues, **r,
            "residues_per_s": residues / r["seconds"], "store_gib": r["store_bytes"] / 2**30}  # fmt: skip


# ------------------------------------------------------------------------ 6. mutation scan


def mutation_curve(pipeline, record, positions_list, work: Path) -> list[dict]:
    from interplm_plugins.core.interpret.mutate import mutation_scan

    sequence = record.sequence[:SCAN_LENGTH]
    feature = int(pipeline.activations(sequence).max(axis=0).argmax())
    rows = []
    for n in positions_list:
        os.environ["INTERPLM_CACHE_DIR"] = str(work / f"cache_scan_{n}")  # cold: nothing cached for this scan
        scanned = list(range(0, len(sequence), max(1, len(sequence) // n)))[:n]
        cpu = time.process_time()
        seconds, table = _common.timed(lambda: mutation_scan(pipeline, sequence, feature, scanned))
        cpu = time.process_time() - cpu
        rows.append({"curve": "mutation scan vs positions", "protein": record.id, "length": len(sequence), "positions": len(scanned),
                     "mutants": len(table), "seconds": seconds, "cpu_s": cpu, "s_per_position": seconds / len(scanned)})  # fmt: skip
        print(f"  mutation scan, {len(scanned)} positions: {seconds:.1f} s", flush=True)
    return rows


# ------------------------------------------------------------------------------- output


def plot(rows: list[dict], path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def curve(name, **match):
        return [r for r in rows if r["curve"] == name and all(r.get(k) == v for k, v in match.items())]

    fig, axes = plt.subplots(2, 4, figsize=(22, 10))
    ax = axes[0, 0]
    for model in dict.fromkeys(r["model"] for r in curve("embed vs length")):
        pts = curve("embed vs length", model=model)
        ax.plot([r["length"] for r in pts], [1000 * r["s_per_residue"] for r in pts], "o-", label=model)
    ax.axvline(1022, color="grey", ls=":", lw=1)
    ax.text(1022, 0.98, " windows past 1,022", transform=ax.get_xaxis_transform(), va="top", fontsize=8, color="grey")
    ax.set(xscale="log", yscale="log", xlabel="sequence length (residues)", ylabel="seconds per 1,000 residues",
           title="1. Embedding time per residue vs length")  # fmt: skip
    ax.legend(fontsize=8)

    ax = axes[0, 1]
    for model in dict.fromkeys(r["model"] for r in curve("embed vs length")):
        pts = curve("embed vs length", model=model)
        ax.plot([r["length"] for r in pts], [max(r["extra_rss_mib"], 0.1) for r in pts], "o-", label=f"{model} (above the loaded model)")
    ax.axvline(1022, color="grey", ls=":", lw=1)
    ax.set(xscale="log", yscale="log", xlabel="sequence length (residues)", ylabel="peak RSS while embedding (MiB)",
           title="1. Embedding memory vs length")  # fmt: skip
    ax.legend(fontsize=8)

    ax = axes[0, 2]
    pts = curve("embed vs proteins")
    if pts:
        ax.plot([r["proteins"] for r in pts], [r["seconds"] for r in pts], "o-", label="demo, measured")
        ref = pts[-1]
        xs = np.array([pts[0]["proteins"], ref["proteins"]], dtype=float)
        ax.plot(xs, ref["seconds"] * xs / ref["proteins"], "k--", lw=1, label="proportional to N")
    ax.set(xscale="log", yscale="log", xlabel="proteins (corpus sample)", ylabel="wall time (s)", title="2. Embedding vs number of proteins")
    ax.legend(fontsize=8)

    ax = axes[0, 3]
    pts = curve("count_matches vs residues")
    ax.plot([r["residues"] for r in pts], [r["seconds"] for r in pts], "o-")
    if pts:
        ax.set_title(f"3. count_matches vs residues\n({pts[0]['features']:,} features x {pts[0]['concepts']} concepts x {pts[0]['thresholds']} thresholds)")
    ax.set(xscale="log", yscale="log", xlabel="residues (annotated Swiss-Prot)", ylabel="wall time (s)")

    ax = axes[1, 0]
    pts = curve("build-db vs proteins")
    ax.plot([r["proteins"] for r in pts], [r["seconds"] for r in pts], "o-", label="wall time")
    ax.set(xlabel="annotated proteins", ylabel="wall time (s)", title="4. build_database (build-db) vs proteins")
    twin = ax.twinx()
    twin.plot([r["proteins"] for r in pts], [r["database_mib"] for r in pts], "s--", color="tab:orange", label="database size")
    twin.set_ylabel("database size (MiB)")
    ax.legend(handles=ax.lines + twin.lines, fontsize=8, loc="upper left")

    measured = [r for r in curve("interplm embed (corpus)") if r["kind"].startswith("measured")]
    extrapolated = [r for r in curve("interplm embed (corpus)") if r["kind"].startswith("extrapolated")]
    panels = ((axes[1, 1], (("seconds", 1 / 60, "wall time", "min"),)),
              (axes[1, 2], (("store_bytes", 1 / 2**30, "store size (float16)", "GiB"), ("peak_rss_mib", 1 / 1024, "peak RSS", "GiB"))))  # fmt: skip
    for ax, measures in panels:
        for key, scale, label, unit in measures:
            line, = ax.plot([r["residues"] for r in measured], [r[key] * scale for r in measured], "o-", label=f"{label}, measured")
            for r in extrapolated:
                ax.plot([measured[-1]["residues"], r["residues"]], [measured[-1][key] * scale, r[key] * scale], ":", color=line.get_color(), lw=1)
                ax.plot([r["residues"]], [r[key] * scale], "o", mfc="none", color=line.get_color(), label=f"{label}, whole corpus EXTRAPOLATED")
                ax.annotate(f"{r[key] * scale:,.1f} {unit} (extrapolated)", (r["residues"], r[key] * scale), textcoords="offset points",
                            xytext=(-110, 6), fontsize=8)  # fmt: skip
        ax.set(xscale="log", yscale="log", xlabel="residues embedded (evenly spaced corpus slices)",
               ylabel=" / ".join(f"{m[2]} ({m[3]})" for m in measures))  # fmt: skip
        ax.legend(fontsize=8, loc="lower right")
    axes[1, 1].set_title("5. `interplm embed --dtype float16`: wall time")
    axes[1, 2].set_title("5. `interplm embed --dtype float16`: store size, peak RSS")

    ax = axes[1, 3]
    pts = curve("mutation scan vs positions")
    ax.plot([r["positions"] for r in pts], [r["seconds"] for r in pts], "o-")
    if pts:
        ax.set_title(f"6. Mutation scan (cold) vs positions\n(x 19 mutants, {pts[0]['protein']}, {pts[0]['length']} residues)")
    ax.set(xscale="log", yscale="log", xlabel="positions scanned", ylabel="wall time (s)")
    for a in axes.flat:
        a.grid(True, which="both", alpha=0.3)
    fig.suptitle(title, fontsize=12)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def table_rows(rows: list[dict]) -> list[dict]:
    """One printable line per measured point."""
    out = []
    for r in rows:
        c = r["curve"]
        if c == "embed vs length":
            size, rate, memory = f"{r['model']}, L={r['length']} x {r['proteins']}", f"{r['residues_per_s']:,.0f} res/s", f"+{r['extra_rss_mib']:.0f}"
        elif c == "embed vs proteins":
            size, rate, memory = f"{r['proteins']} proteins, {r['residues']:,} res", f"{r['residues_per_s']:,.0f} res/s", ""
        elif c == "count_matches vs residues":
            size, rate, memory = f"{r['residues']:,} res", f"{1e6 * r['s_per_residue']:.2f} s/M res", f"{r['peak_alloc_mib']:.0f} (numpy)"
        elif c == "build-db vs proteins":
            size, rate, memory = f"{r['proteins']} proteins, {r['residues']:,} res", f"{r['database_mib']:.1f} MiB db", ""
        elif c == "interplm embed (corpus)":
            size = f"{r['proteins']:,} proteins, {r['residues']:,} res"
            rate, memory = f"{r['residues_per_s']:,.0f} res/s, {r['store_gib']:.2f} GiB", f"{r['peak_rss_mib']:.0f}"
        else:
            size, rate, memory = f"{r['positions']} positions x 19", f"{r['s_per_position']:.2f} s/position", ""
        note = r.get("kind", r.get("source", ""))
        out.append({"curve": c, "size": size, "seconds": r["seconds"], "cpu_s": r["cpu_s"], "rate": rate, "memory_mib": memory, "note": note})
    return out


def main(argv: list[str] | None = None) -> int:
    p = _common.parser(__doc__.splitlines()[0])
    p.add_argument("--lengths", type=int, nargs="+", help=f"sequence lengths of curve 1 (default {' '.join(map(str, LENGTHS))})")
    p.add_argument("--residues-per-length", type=int, help=f"residues embedded at each length (default {RESIDUES_PER_LENGTH})")
    p.add_argument("--slices", type=int, nargs="+", help=f"corpus slices (proteins) for `interplm embed` (default {' '.join(map(str, CORPUS_SLICES))})")
    p.add_argument("--full-corpus", action="store_true",
                   help="also embed the whole corpus with `interplm embed` (~30+ min on 2 cores, ~26 GB of disk in --workdir)")  # fmt: skip
    p.add_argument("--child", help="(internal)")
    args = p.parse_args(argv)
    if _common.child_mode(args, child):
        return 0
    import torch

    threads = min(2, os.cpu_count() or 1)
    torch.set_num_threads(threads)
    q = QUICK if args.quick else {}
    lengths = args.lengths or q.get("lengths", LENGTHS)
    lengths_8m = args.lengths or q.get("lengths_8m", LENGTHS)
    residues_per_length = args.residues_per_length or q.get("residues_per_length", RESIDUES_PER_LENGTH)
    repeats = q.get("length_repeats", LENGTH_REPEATS)
    slices = args.slices or q.get("corpus_slices", CORPUS_SLICES)

    started = time.perf_counter()
    with _common.Workdir(args.workdir) as work:
        os.environ["INTERPLM_CACHE_DIR"] = str(work / "cache")
        from interplm_plugins.core.interpret.pipeline import load_pipeline
        from interplm_plugins.core.plm.model import new_esm2, save_esm2_checkpoint
        from interplm_plugins.core.inputs.sequences import read_fasta

        corpus = read_corpus(args.data)
        corpus_residues = sum(len(r.sequence) for r in corpus)
        print(f"corpus: {len(corpus):,} proteins, {corpus_residues:,} residues ({len(corpus_files(args.data))} files)", flush=True)
        pipeline = load_pipeline()
        if args.full_corpus:
            need, free = full_corpus_space(corpus, pipeline.plm.embed_dim, work)
            if free < need:
                print(f"--full-corpus needs ~{need / 1e9:.0f} GB free in {work}, only {free / 1e9:.0f} GB: use --workdir on a larger disk", file=sys.stderr)
                return 2
        small = [*read_fasta(args.data / "sequences" / "swissprot_train.fasta"), *read_fasta(args.data / "sequences" / _common.SEQUENCE_FILES[0])]
        pool = small + corpus

        print("1. embedding vs sequence length (a fresh process per length)", flush=True)
        rows = length_curve("demo", "demo 4x256", pipeline.layer, lengths, residues_per_length, pool, work, threads, repeats)
        path_8m = save_esm2_checkpoint(new_esm2(6, 320, 20, seed=0), work / "esm2_t6_8M_random.pt")
        rows += length_curve(str(path_8m), "ESM-2 8M 6x320", DEMO_LAYER_8M, lengths_8m, residues_per_length, pool, work, threads, repeats)

        print("2. embedding vs number of proteins", flush=True)
        counts = q.get("protein_counts", PROTEIN_COUNTS)
        sample = evenly_spaced(corpus, max(counts))
        np.random.default_rng(0).shuffle(sample)
        rows += count_curve(pipeline.plm, pipeline.layer, sample, counts)

        print("3. count_matches vs residues", flush=True)
        labels = annotated_labels(args.data)
        annotated = labels.proteins[: q["count_proteins"]] if args.quick else labels.proteins
        rows += count_matches_curve(pipeline, labels, annotated, q.get("count_residues", COUNT_RESIDUES))

        print("4. build-db vs proteins", flush=True)
        db_counts = q.get("db_proteins", (*DB_PROTEINS, len(labels.proteins)))
        rows += build_db_curve(pipeline, labels, labels.proteins, db_counts, work)

        print("5. `interplm embed` on corpus slices", flush=True)
        corpus_rows = corpus_curve(corpus, slices, pipeline.layer, work)
        rows += corpus_rows
        if args.full_corpus:
            print("   the whole corpus (--full-corpus)", flush=True)
            rows.append(full_corpus_run(corpus, pipeline.layer, work))
        else:
            rows.append(extrapolate(corpus_rows, len(corpus), corpus_residues))

        print("6. mutation scan vs positions", flush=True)
        record = next(r for r in read_fasta(args.data / "sequences" / "swissprot_train.fasta") if len(r.sequence) == SCAN_LENGTH)
        rows += mutation_curve(pipeline, record, q.get("scan_positions", SCAN_POSITIONS), work)
    total = time.perf_counter() - started

    m = _common.machine()
    title = (f"Cost curves ({'quick: smoke-run sizes' if args.quick else 'full'}), {m['cpu']}, {m['cores']} cores, torch {m['torch']} "
             f"({threads} threads), load at start {m['load_average_at_start']}")  # fmt: skip
    png = plot(rows, Path(args.results_dir) / "scaling.png", title)
    print(f"\nwrote {png}")
    _common.print_table(f"Cost curves, {threads} threads ({total:.0f} s in all)", table_rows(rows),
                        ["curve", "size", "seconds", "cpu_s", "rate", "memory_mib", "note"])  # fmt: skip
    _common.write_result(args, "scaling", {
        "plot": str(png), "total_s": total, "threads": threads, "residues_per_length": residues_per_length, "length_repeats": repeats,
        "corpus": {"files": [f.name for f in corpus_files(args.data)], "proteins": len(corpus), "residues": corpus_residues},
        "pipeline": {"plm": pipeline.plm.name, "layer": pipeline.layer, "features": pipeline.num_features},
        "rows": rows,
    })  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
