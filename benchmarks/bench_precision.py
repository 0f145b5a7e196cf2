"""Compute precision: bf16 against our fp32, in speed and in what users read, on the embedded default.

Everything runs in this process on real proteins (``../shared/data/sequences/swissprot_train.fasta``,
the first ``--proteins`` of <= 1,022 residues) and the embedded default: the demo ESM-2 (4 x 256),
its SAE on layer 3 and its shipped feature database (``data/demo/features.sqlite``).

Speed (the two precisions alternate, so a busy machine slows both alike):

- embedding, residues/s: ``embed_sequences`` in fp32 and in bf16 on the same proteins, best of
  ``--repeats``; also on the ESM-2 8M and 35M architectures (random weights: speed depends on the
  shapes only). Target: bf16 >= 1.8x fp32. Where bf16 runs our attention kernel
  (``core/plm/bf16_attention.py``), bf16 with PyTorch's attention is timed too, alternating with
  the others (``pytorch_attention_speedup``): what the kernel adds.
- SAE training, tokens/s: ``train_step`` in fp32 and in bf16 on the same batches of the demo's
  layer-3 embeddings, steps interleaved, median step time; ReLU (hand-written products) and TopK
  (sparse products, bf16 in its one dense product). Target: bf16 >= 1.5x fp32.
- where embedding time goes: ``--profile-passes`` extra passes per model and precision under
  ``torch.profiler``, alternating (first ``--profile-proteins``), the pass with the least profiled
  time kept per precision: the CPU seconds of the attention kernel (PyTorch's fused one, or ours
  under bf16; its input packing counts as the rest), of the matrix products
  and of everything else, so the speed-up of each part is a number, not a guess (one pass alone
  swings by a tenth on this VM: docs/PRECISION.md).

Error where users feel it (the embedded default, fp32 as the reference):

- SAE activations: max absolute error and mean relative error (per protein ``|a_bf16 - a_fp32| /
  |a_fp32|``, Frobenius norms, averaged over proteins); the embeddings' relative error too;
- active features per residue: Jaccard index of the sets of features with activation > 0, mean
  over residues and the worst residue;
- concept F1: the features the database chose (each feature's best concept, as every surface
  shows it, and each evaluated concept's best feature), each at its stored threshold, scored on
  the test half of the demo's concept halves (``data/demo/concept_halves.tsv`` over the annotated
  entries of ``../shared/data/uniprot``, as ``scripts/build_demo.py`` made them) from fp32 and from
  bf16 activations, with the project's counting (``ConceptMatchCounter``, ``ConceptCounts.metrics``:
  the selection F1 the database stores). The fp32 recount is checked against the database's stored
  test F1; the verdict line says whether bf16 changes any of them by more than 0.01. The
  validation choice itself is redone in bf16 too, and the share of concepts whose chosen feature
  stays the same is reported.

``--quick``: a handful of proteins, a few steps, the first test proteins only (no check against
the database, whose F1 is over the whole test half).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

MODELS = {"8M": (6, 320, 20), "35M": (12, 480, 20)}
F1_TOLERANCE = 0.01
EMBED_TARGET, TRAIN_TARGET = 1.8, 1.5


def swissprot_records(data: Path, count: int, max_length: int = 1022):
    from interplm_plugins.core.inputs.sequences import read_fasta

    return [r for r in read_fasta(data / "sequences" / "swissprot_train.fasta") if len(r.sequence) <= max_length][:count]


def annotated_files(data: Path) -> list[Path]:
    """What scripts/build_demo.py builds the demo's concepts from: the 727 training entries, then uniprot/more/."""
    more = data / "uniprot" / "more"
    return [data / "uniprot" / "swissprot_train.dat.gz", *sorted(more.glob("*.dat.gz")), *sorted(more.glob("*.json.gz"))]


def demo_halves(data: Path):
    """The demo's concept halves: labels rebuilt from the real entries, halves from the shipped file (as tests/test_demo.py)."""
    from interplm_plugins.core.concepts import ConceptHalves, ConceptLabels, build_concept_labels, read_halves
    from interplm_plugins.core.inputs.uniprot import read_uniprot_files
    from interplm_plugins.core.interpret.pipeline import DEMO_DIR

    entries, _ = read_uniprot_files(annotated_files(data))
    labels = build_concept_labels(entries)
    halves = read_halves(DEMO_DIR / "concept_halves.tsv", labels.sequences)
    return ConceptHalves.from_splits(ConceptLabels(labels.concepts, labels.sequences, {p: labels.matrix(p) for p in labels.proteins}, halves))


# ------------------------------------------------------------------------------------ speed


def random_plm(name: str, work: Path):
    """A fair-esm ESM-2 of one of :data:`MODELS`' shapes with random weights, loaded as users load one."""
    from interplm_plugins.core.plm.loading import load_plm
    from interplm_plugins.core.plm.model import new_esm2, save_esm2_checkpoint

    layers, dim, heads = MODELS[name]
    return load_plm(save_esm2_checkpoint(new_esm2(layers, dim, heads, seed=0), work / f"esm2_t{layers}_{name}_random.pt"))


@contextlib.contextmanager
def pytorch_bf16_attention():
    """bf16 with PyTorch's fused attention in place of our kernel (its own switch, ``INTERPLM_BF16_ATTENTION``)."""
    from interplm_plugins.core.plm import bf16_attention

    before = os.environ.get(bf16_attention.ENV)
    os.environ[bf16_attention.ENV] = "pytorch"
    bf16_attention.kernel.cache_clear()
    try:
        yield
    finally:
        if before is None:
            del os.environ[bf16_attention.ENV]
        else:
            os.environ[bf16_attention.ENV] = before
        bf16_attention.kernel.cache_clear()


def embedding_speed(plm, records, repeats: int, toks_per_batch: int) -> dict:
    """fp32 and bf16 embedding, alternating, the fastest of ``repeats`` each; where bf16 runs our own
    attention kernel, also bf16 with PyTorch's attention (what that kernel adds)."""
    from interplm_plugins.core.plm import bf16_attention
    from interplm_plugins.core.plm.embed import embed_sequences

    layer = max(1, plm.num_layers - 1)
    residues = sum(len(r.sequence) for r in records)
    modes = {"fp32": ("fp32", contextlib.nullcontext), "bf16": ("bf16", contextlib.nullcontext)}
    if bf16_attention.unavailable_reason() is None:
        modes["bf16_pytorch_attention"] = ("bf16", pytorch_bf16_attention)

    def seconds(mode: str, batch: list) -> float:
        precision, context = modes[mode]
        with context():
            start = time.perf_counter()
            for _ in embed_sequences(plm, batch, [layer], toks_per_batch=toks_per_batch, precision=precision):
                pass
            return time.perf_counter() - start

    for mode in modes:  # warm every path up (untimed)
        seconds(mode, records[:2])
    times: dict[str, list[float]] = {mode: [] for mode in modes}
    for repeat in range(repeats):
        for mode in list(modes) if repeat % 2 == 0 else list(modes)[::-1]:
            times[mode].append(seconds(mode, records))
    best = {mode: min(runs) for mode, runs in times.items()}
    out = {"layer": layer, "bf16_attention": "ours" if "bf16_pytorch_attention" in modes else f"PyTorch's ({bf16_attention.unavailable_reason()})"}
    for mode in modes:
        out[f"{mode}_res_per_s"] = residues / best[mode]
    out["speedup"] = best["fp32"] / best["bf16"]
    if "bf16_pytorch_attention" in modes:
        out["pytorch_attention_speedup"] = best["fp32"] / best["bf16_pytorch_attention"]
    return out | {f"{mode}_runs_s": runs for mode, runs in times.items()}


#: Profiler op names of attention: PyTorch's fused kernel (CPU flash attention, or any other SDPA backend), or ours under bf16.
ATTENTION_OPS = ("scaled_dot_product", "flash_attention", "efficient_attention", "interplm::bf16_attention")
MATMUL_OPS = ("aten::addmm", "aten::mm", "aten::bmm", "aten::matmul", "aten::linear")


def embedding_profile(plm, records, toks_per_batch: int, passes: int = 2) -> dict:
    """CPU seconds (self time, both threads summed) of attention, matrix products and the rest, per
    precision: of the ``passes`` alternating passes, the one with the least total per precision."""
    from torch.profiler import ProfilerActivity, profile

    from interplm_plugins.core.plm.embed import embed_sequences

    layer = max(1, plm.num_layers - 1)
    out: dict = {"passes": passes}
    for index in range(passes):
        for precision in ("fp32", "bf16") if index % 2 == 0 else ("bf16", "fp32"):
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                for _ in embed_sequences(plm, records, [layer], toks_per_batch=toks_per_batch, precision=precision):
                    pass
            events = prof.key_averages()
            total = sum(e.self_cpu_time_total for e in events) / 1e6
            attention = sum(e.self_cpu_time_total for e in events if any(op in e.key for op in ATTENTION_OPS)) / 1e6
            matmul = sum(e.self_cpu_time_total for e in events if e.key in MATMUL_OPS) / 1e6
            if precision not in out or total < out[precision]["total_s"]:
                out[precision] = {"attention_s": attention, "matmul_s": matmul, "other_s": total - attention - matmul, "total_s": total}
    for part in ("attention_s", "matmul_s", "other_s", "total_s"):
        out[f"{part.removesuffix('_s')}_speedup"] = out["fp32"][part] / out["bf16"][part]
    out["fp32_attention_share"] = out["fp32"]["attention_s"] / out["fp32"]["total_s"]
    out["bf16_attention_share"] = out["bf16"]["attention_s"] / out["bf16"]["total_s"]
    return out


def training_speed(store, kind: str, width: int, batch_size: int, steps: int, warmup: int) -> dict:
    import torch

    from interplm_plugins.core.sae.model import SAEConfig
    from interplm_plugins.core.sae.train import TrainConfig, make_training_state, train_step

    total = steps + warmup
    batches = [torch.from_numpy(np.ascontiguousarray(b, dtype=np.float32)) for _, b in zip(range(total), store.iter_batches(batch_size, seed=0))]
    sparsity = {"relu": {"l1_coefficient": 10.0}}.get(kind, {"k": 32})  # (the demo SAE's L1 for these norm-80 embeddings)
    config = SAEConfig(d_in=store.dim, d_hidden=width, kind=kind, **sparsity)
    states = {p: make_training_state(config, TrainConfig(steps=total + 1, batch_size=batch_size, warmup_steps=max(1, total // 10),
                                                          checkpoint_every=10**6, log_every=10**6, precision=p))
              for p in ("fp32", "bf16")}  # fmt: skip
    last: dict[str, dict] = {}

    def runner(precision: str):
        def run(step: int, x) -> None:
            last[precision] = train_step(states[precision], x)

        return run

    times = _common.interleaved_step_times({p: runner(p) for p in ("fp32", "bf16")}, batches, warmup)
    rate = {p: batch_size / _common.median(t) for p, t in times.items()}
    return {"sae": f"{kind} {store.dim}->{width}", "batch_size": batch_size, "fp32_tokens_per_s": rate["fp32"], "bf16_tokens_per_s": rate["bf16"],
            "speedup": rate["bf16"] / rate["fp32"], "fp32_mse_last": last["fp32"]["mse"], "bf16_mse_last": last["bf16"]["mse"],
            "step_times_s": times}  # fmt: skip


# ------------------------------------------------------------------------------------ error


def activation_error(pipelines: dict, records) -> dict:
    """Max abs and mean relative error of bf16 activations and embeddings, and the Jaccard of active sets per residue."""
    from interplm_plugins.core.plm.embed import embed_sequences
    from interplm_plugins.core.sae.encode import encode_features

    fp32 = pipelines["fp32"]
    emb = {p: dict(embed_sequences(fp32.plm, records, [fp32.layer], precision=p)) for p in pipelines}
    max_abs, rel, emb_rel, jaccards, l0 = 0.0, [], [], [], []
    for record in records:
        e32, e16 = emb["fp32"][record.id][fp32.layer], emb["bf16"][record.id][fp32.layer]
        a32, a16 = encode_features(fp32.sae, e32), encode_features(fp32.sae, e16)
        max_abs = max(max_abs, float(np.abs(a32 - a16).max()))
        rel.append(float(np.linalg.norm(a32 - a16) / max(np.linalg.norm(a32), 1e-12)))
        emb_rel.append(float(np.linalg.norm(e32 - e16) / max(np.linalg.norm(e32), 1e-12)))
        on32, on16 = a32 > 0, a16 > 0
        jaccards.append((on32 & on16).sum(axis=1) / np.maximum((on32 | on16).sum(axis=1), 1))
        l0.append(on32.sum(axis=1))
    jaccard = np.concatenate(jaccards)
    result = {
        "proteins": len(records), "residues": int(len(jaccard)),
        "activation_max_abs_error": max_abs, "activation_mean_relative_error": float(np.mean(rel)),
        "activation_worst_protein_relative_error": float(np.max(rel)),
        "embedding_mean_relative_error": float(np.mean(emb_rel)),
        "active_set_jaccard_mean": float(jaccard.mean()), "active_set_jaccard_min": float(jaccard.min()),
        "residues_with_identical_active_set": float((jaccard == 1.0).mean()),
        "fp32_mean_active_features": float(np.concatenate(l0).mean()),
    }  # fmt: skip
    return result


def database_thresholds(db) -> tuple[float, ...]:
    """The activation thresholds the database's matches were counted at."""
    from interplm_plugins.core.concepts.counts import THRESHOLDS

    return tuple(float(t) for t in db.provenance.get("thresholds", THRESHOLDS))


def chosen_matches(db, halves) -> tuple[dict, list[str]]:
    """The (concept, feature, threshold) matches the database chose, ``{key: (chosen as, stored test F1)}``
    (each feature's best concept, as every surface shows it, and each evaluated concept's best
    feature, chosen on validation), and the evaluated concepts."""
    chosen = {}
    for match in db.best_concepts(range(db.num_features)).values():
        chosen[(match.concept, match.feature, match.threshold)] = ("feature's best concept", match.f1)
    evaluated = [n for n in db.concept_names() if (db.concept_summary(n) or {}).get("evaluated")]
    for name in evaluated:
        for match in db.features_for_concept(name, k=1, min_valid_f1=0.0):
            key = (match.concept, match.feature, match.threshold)
            chosen[key] = ("concept's best feature" if key not in chosen else "both", match.f1)
    index = {c.name for c in halves.concepts}
    missing = sorted({c for c, _, _ in chosen if c not in index})
    if missing:
        raise AssertionError(f"{len(missing)} database concepts are not in the rebuilt halves (first: {missing[0]}): the halves differ from the build's")
    return chosen, evaluated


def half_records(halves, recount_validation: bool, max_test_proteins: int | None) -> dict[str, list]:
    """The proteins of the test half (and of the validation half), as records."""
    from interplm_plugins.core.inputs.sequences import ProteinRecord

    used = ("test", "valid") if recount_validation else ("test",)
    records = {h: [ProteinRecord(p, s) for p, s in halves.labels(h).sequences.items()] for h in used}
    return {h: r[:max_test_proteins] for h, r in records.items()} if max_test_proteins is not None else records


def count_half(halves, half: str, num_features: int, thresholds: tuple[float, ...], activations) -> object:
    """The concept counts (``ConceptCounts``) of one half from ``(record, [L, F] activations)`` pairs."""
    from scipy import sparse

    from interplm_plugins.core.concepts.counts import ConceptMatchCounter

    counter = ConceptMatchCounter(halves.labels(half), num_features, thresholds)
    for record, acts in activations:
        counter.add(record.id, sparse.csr_matrix(acts))
    return counter.result()


def compare_f1(counts: dict, names: tuple[str, str], chosen: dict, evaluated: list[str], halves, thresholds: tuple[float, ...], test_proteins: int) -> dict:
    """The test F1 of each chosen match from ``counts[name, half]`` of the reference ``names[0]`` and of
    ``names[1]``: the changes, the matches moving by more than :data:`F1_TOLERANCE`, the fp32
    recount against the database, and (when the validation half was counted) whether the
    validation choice stays the same."""
    from interplm_plugins.core.concepts.selection import choose_on_validation

    ref, other = names
    index = {c.name: i for i, c in enumerate(halves.concepts)}
    f1 = {n: counts[n, "test"].metrics()["selection_f1"] for n in names}
    rows = []
    for (concept, feature, threshold), (why, stored) in sorted(chosen.items()):
        at = (index[concept], feature, thresholds.index(float(threshold)))
        rows.append({"concept": concept, "feature": feature, "threshold": threshold, "chosen_as": why, "database_test_f1": stored,
                     f"{ref}_test_f1": float(f1[ref][at]), f"{other}_test_f1": float(f1[other][at])})  # fmt: skip
    change = np.array([abs(r[f"{other}_test_f1"] - r[f"{ref}_test_f1"]) for r in rows])
    recount = np.array([abs(r[f"{ref}_test_f1"] - r["database_test_f1"]) for r in rows])
    worst = rows[int(change.argmax())] if rows else {}
    out = {
        "test_proteins_counted": test_proteins, "test_proteins_in_half": len(halves.test.proteins),
        "chosen_matches": len(rows), "concepts_evaluated": len(evaluated),
        "max_abs_f1_change": float(change.max()) if rows else 0.0, "mean_abs_f1_change": float(change.mean()) if rows else 0.0,
        "matches_changed_over_tolerance": int((change > F1_TOLERANCE).sum()),
        "worst_match": worst, f"{ref}_recount_vs_database_max_abs_diff": float(recount.max()) if rows else 0.0,
        "matches": rows,
    }  # fmt: skip
    if all((n, "valid") in counts for n in names):  # would the choice itself change? (the rule of the database build: rank 0 on validation)
        picks = {n: choose_on_validation(counts[n, "valid"]) for n in names}
        concepts = [index[n] for n in evaluated]
        same = [(picks[ref][0][c], picks[ref][1][c]) == (picks[other][0][c], picks[other][1][c]) for c in concepts]
        out["evaluated_concepts_with_the_same_choice"] = float(np.mean(same)) if same else 1.0
    return out


def concept_f1_change(pipelines: dict, halves, max_test_proteins: int | None, recount_validation: bool) -> dict:
    """Test F1 of the features the database chose, recounted from fp32 and from bf16 activations."""
    from interplm_plugins.core.sae.encode import iter_feature_activations

    fp32 = pipelines["fp32"]
    thresholds = database_thresholds(fp32.database)
    chosen, evaluated = chosen_matches(fp32.database, halves)
    records = half_records(halves, recount_validation, max_test_proteins)
    counts = {}
    for precision, pipeline in pipelines.items():
        for half, recs in records.items():
            activations = iter_feature_activations(pipeline.plm, pipeline.sae, pipeline.layer, recs, precision=precision)
            counts[precision, half] = count_half(halves, half, pipeline.num_features, thresholds, activations)
    return compare_f1(counts, ("fp32", "bf16"), chosen, evaluated, halves, thresholds, len(records["test"]))


def main(argv: list[str] | None = None) -> int:
    p = _common.parser(__doc__.splitlines()[0])
    p.add_argument("--proteins", type=int, default=300, help="real Swiss-Prot proteins of <= 1,022 residues (default 300)")
    p.add_argument("--models", default="demo,8M,35M", help="comma-separated: demo (the embedded default), 8M, 35M (default all)")
    p.add_argument("--repeats", type=int, default=2, help="embedding runs per precision, alternating; the best is kept (default 2)")
    p.add_argument("--toks-per-batch", type=int, default=4096)
    p.add_argument("--profile-proteins", type=int, default=100, help="proteins of the profiled embedding pass (default 100)")
    p.add_argument("--profile-passes", type=int, default=2, help="profiled passes per precision, alternating; the least profiled time is kept (default 2)")
    p.add_argument("--train", default="relu:2048,relu:10240,topk:10240", help="SAEs to time, kind:width (default relu:2048,relu:10240,topk:10240)")
    p.add_argument("--batch-size", type=int, default=2048)
    p.add_argument("--steps", type=int, default=20, help="timed training steps per precision (default 20)")
    p.add_argument("--warmup", type=int, default=3, help="untimed first steps (default 3)")
    p.add_argument("--test-proteins", type=int, default=0, help="count only the first N test proteins (default 0: the whole test half)")
    args = p.parse_args(argv)
    if args.quick:
        args.proteins, args.repeats, args.models, args.profile_passes = min(args.proteins, 8), 1, "demo", 1
        args.train, args.batch_size, args.steps, args.warmup, args.test_proteins = "relu:512,topk:512", 256, 3, 1, args.test_proteins or 30

    import torch

    from interplm_plugins.core.interpret.pipeline import load_pipeline
    from interplm_plugins.core.plm.embed import embed_to_store
    from interplm_plugins.core.plm.precision import bf16_is_fast

    start = time.perf_counter()
    records = swissprot_records(args.data, args.proteins)
    residues = sum(len(r.sequence) for r in records)
    fp32 = load_pipeline()
    pipelines = {"fp32": fp32, "bf16": dataclasses.replace(fp32, precision="bf16")}
    print(f"{len(records)} Swiss-Prot proteins, {residues} residues; embedded default {fp32.plm.name} layer {fp32.layer}, "
          f"SAE {fp32.num_features} features; bf16 matrix units on this CPU: {bf16_is_fast('cpu')}")  # fmt: skip

    embed_rows, train_rows = [], []
    with _common.Workdir(args.workdir) as work:
        for name in args.models.split(","):
            plm = fp32.plm if name == "demo" else random_plm(name, work)
            row = embedding_speed(plm, records, args.repeats, args.toks_per_batch)
            row["profile"] = embedding_profile(plm, records[: args.profile_proteins], args.toks_per_batch, args.profile_passes)
            embed_rows.append({"model": "embedded default (4x256)" if name == "demo" else f"ESM-2 {name} ({MODELS[name][0]}x{MODELS[name][1]})", **row})
        error = activation_error(pipelines, records)
        store = embed_to_store(fp32.plm, records, fp32.layer, work / "store", shard_residues=50_000)[fp32.layer]
        for spec in args.train.split(","):
            kind, width = spec.split(":")
            train_rows.append(training_speed(store, kind, int(width), args.batch_size, args.steps, args.warmup))

    halves = demo_halves(args.data)
    concepts = concept_f1_change(pipelines, halves, args.test_proteins or None, recount_validation=not args.quick)

    _common.print_table("Embedding throughput (residues/s, in process, best of the runs)", embed_rows,
                        ["model", "layer", "bf16_attention", "fp32_res_per_s", "bf16_res_per_s", "speedup"]
                        + (["bf16_pytorch_attention_res_per_s", "pytorch_attention_speedup"] if "pytorch_attention_speedup" in embed_rows[0] else []))  # fmt: skip
    profile_rows = [{"model": r["model"], **{f"{p}_{part}": r["profile"][p][part] for p in ("fp32", "bf16") for part in ("attention_s", "matmul_s", "other_s")},
                     "attention_speedup": r["profile"]["attention_speedup"], "matmul_speedup": r["profile"]["matmul_speedup"]} for r in embed_rows]  # fmt: skip
    _common.print_table(f"Where embedding time goes (CPU seconds under torch.profiler, first {min(args.profile_proteins, len(records))} proteins)", profile_rows,
                        list(profile_rows[0]))  # fmt: skip
    _common.print_table(f"SAE training throughput (tokens/s, median of {args.steps} interleaved steps)", train_rows,
                        ["sae", "batch_size", "fp32_tokens_per_s", "bf16_tokens_per_s", "speedup", "fp32_mse_last", "bf16_mse_last"])  # fmt: skip
    error_rows = [{"measure": k, "value": v} for k, v in error.items() if k not in ("proteins", "residues")]
    _common.print_table(f"bf16 against fp32 on the embedded default ({error['proteins']} proteins, {error['residues']} residues)",
                        error_rows, ["measure", "value"])  # fmt: skip
    concept_rows = [{"measure": k, "value": v} for k, v in concepts.items() if k not in ("matches", "worst_match")]
    _common.print_table(f"Concept F1 (test half) of the {concepts['chosen_matches']} matches the database chose, bf16 vs fp32", concept_rows,
                        ["measure", "value"])  # fmt: skip
    worst = concepts["worst_match"]
    if worst:
        print(f"largest change: {worst['concept']} / feature {worst['feature']} at {worst['threshold']:g}: "
              f"F1 {worst['fp32_test_f1']:.4f} (fp32) -> {worst['bf16_test_f1']:.4f} (bf16)")  # fmt: skip
    if not args.quick and concepts["fp32_recount_vs_database_max_abs_diff"] > 1e-6:
        print(f"warning: the fp32 recount differs from the database's stored test F1 by up to {concepts['fp32_recount_vs_database_max_abs_diff']:.2g}")
    changed = concepts["max_abs_f1_change"] > F1_TOLERANCE
    subset = f" (on the first {concepts['test_proteins_counted']} of {concepts['test_proteins_in_half']} test proteins: --quick)" if args.quick else ""
    verdict = (f"verdict: bf16 CHANGES a conclusion: {concepts['matches_changed_over_tolerance']} of {concepts['chosen_matches']} chosen matches "
               f"move by more than {F1_TOLERANCE} in test F1 (max {concepts['max_abs_f1_change']:.4f}){subset}"
               if changed else
               f"verdict: bf16 changes no conclusion: test F1 of all {concepts['chosen_matches']} chosen matches within {F1_TOLERANCE} "
               f"(max change {concepts['max_abs_f1_change']:.4f}){subset}")  # fmt: skip
    speed = (f"speed: embedding {min(r['speedup'] for r in embed_rows):.2f}-{max(r['speedup'] for r in embed_rows):.2f}x (target >= {EMBED_TARGET}x), "
             f"training {min(r['speedup'] for r in train_rows):.2f}-{max(r['speedup'] for r in train_rows):.2f}x (target >= {TRAIN_TARGET}x)"
             f"{'; --quick: timings not meaningful' if args.quick else ''}")  # fmt: skip
    print(f"\n{speed}\n{verdict}")
    _common.write_result(args, "precision", {
        "target": f"bf16 >= {EMBED_TARGET}x fp32 embedding, >= {TRAIN_TARGET}x training; concept F1 change <= {F1_TOLERANCE}",
        "bf16_matrix_units": bool(bf16_is_fast("cpu")), "proteins": len(records), "residues": residues, "torch_threads": torch.get_num_threads(),
        "profile_proteins": min(args.profile_proteins, len(records)), "rows": embed_rows + train_rows, "embedding": embed_rows, "training": train_rows, "error": error, "concepts": concepts,
        "changes_a_conclusion": bool(changed), "verdict": verdict, "speed": speed, "seconds": time.perf_counter() - start,
    })  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
