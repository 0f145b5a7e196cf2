"""How fine bench_precision's conclusion check is: the concept recount from embeddings that differ from fp32's in known ways.

``bench_precision.py`` asks whether bf16 moves the test F1 of any of the database's chosen matches
by more than 0.01. This script asks the same of embeddings whose difference from the fp32 ones is
known, with the same recount (``bench_precision.concept_f1_change``'s pieces: the chosen
matches, ``ConceptMatchCounter``, the validation choice), on the embedded default and its
database, every test protein (and the validation half: would the choice change?):

- ``fair-esm blocks``: fp32 through fair-esm's own ``TransformerLayer.forward`` instead of our
  fused blocks (a second correct fp32 computation; each block carries a no-op forward hook,
  which sends it down that path, as :mod:`~interplm_plugins.core.plm.intervene`'s hooks do);
- ``float16``: the fp32 embeddings rounded to float16, what ``interplm embed --dtype float16``
  keeps in a store;
- ``bfloat16``: the fp32 embeddings rounded to bfloat16 (round to nearest even), nothing else;
- ``bf16 compute``: ``--precision bf16``, as bench_precision measures it.

For each: the embeddings' max absolute and mean relative difference from fp32 (test half), the
matches moving by more than 0.01, the largest and the mean change, and the share of evaluated
concepts whose validation choice stays the same. Nothing is timed. ``--quick``: the first 30 test
proteins, no validation half.
"""

from __future__ import annotations

import contextlib
import sys
import time
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402
import bench_precision  # noqa: E402

EmbeddingSource = Callable[[list], Iterable[tuple[str, np.ndarray]]]


@contextlib.contextmanager
def fair_esm_blocks(plm) -> Iterator[None]:
    """Within the block, every ESM-2 block of ``plm`` runs fair-esm's own ``forward`` (a no-op hook on each)."""
    handles = [block.register_forward_hook(lambda module, args, out: None) for block in plm.model.layers]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def rounded(dtype) -> Callable[[np.ndarray], np.ndarray]:
    """Embeddings rounded to ``dtype`` (``"float16"`` as numpy rounds, ``"bfloat16"`` as torch rounds) and back to float32."""
    import torch

    if dtype == "float16":
        return lambda emb: emb.astype(np.float16).astype(np.float32)  # the store's own cast (core/plm/store.py)
    return lambda emb: torch.from_numpy(emb).to(torch.bfloat16).float().numpy()


def embedding_sources(pipeline, fp32_embeddings: dict[str, np.ndarray]) -> dict[str, EmbeddingSource]:
    """Each source: records -> ``(protein id, [L, D] embeddings)``; the roundings start from the fp32
    embeddings (``{protein id: embeddings}``)."""
    from interplm_plugins.core.plm.embed import embed_sequences

    layer = pipeline.layer

    def computed(precision: str, hooked: bool) -> EmbeddingSource:
        def stream(records):
            with fair_esm_blocks(pipeline.plm) if hooked else contextlib.nullcontext():
                for pid, reps in embed_sequences(pipeline.plm, records, [layer], precision=precision):
                    yield pid, reps[layer]

        return stream

    def of_fp32(transform: Callable[[np.ndarray], np.ndarray]) -> EmbeddingSource:
        def stream(records):
            for record in records:
                yield record.id, transform(fp32_embeddings[record.id])

        return stream

    return {
        "fair-esm blocks": computed("fp32", hooked=True),
        "float16": of_fp32(rounded("float16")),
        "bfloat16": of_fp32(rounded("bfloat16")),
        "bf16 compute": computed("bf16", hooked=False),
    }


def embedding_difference(reference: dict[str, np.ndarray], other: dict[str, np.ndarray]) -> dict[str, float]:
    """Max absolute difference, and the mean over proteins of ``|other - reference| / |reference|`` (Frobenius)."""
    max_abs = max(float(np.abs(other[p] - reference[p]).max()) for p in reference)
    relative = [float(np.linalg.norm(other[p] - reference[p]) / np.linalg.norm(reference[p])) for p in reference]
    return {"embedding_max_abs_diff": max_abs, "embedding_mean_relative_diff": float(np.mean(relative))}


def main(argv: list[str] | None = None) -> int:
    p = _common.parser(__doc__.splitlines()[0])
    args = p.parse_args(argv)

    import torch

    from interplm_plugins.core.interpret.pipeline import load_pipeline
    from interplm_plugins.core.plm.embed import embed_sequences
    from interplm_plugins.core.sae.encode import encode_features

    start = time.perf_counter()
    pipeline = load_pipeline()
    halves = bench_precision.demo_halves(args.data)
    thresholds = bench_precision.database_thresholds(pipeline.database)
    chosen, evaluated = bench_precision.chosen_matches(pipeline.database, halves)
    records = bench_precision.half_records(halves, recount_validation=not args.quick, max_test_proteins=30 if args.quick else None)

    fp32 = {half: {pid: reps[pipeline.layer] for pid, reps in embed_sequences(pipeline.plm, recs, [pipeline.layer])} for half, recs in records.items()}

    def activations(half: str, embeddings: Iterable[tuple[str, np.ndarray]]):
        by_id = {r.id: r for r in records[half]}
        return ((by_id[pid], encode_features(pipeline.sae, emb)) for pid, emb in embeddings)

    counts = {("fp32", half): bench_precision.count_half(halves, half, pipeline.num_features, thresholds, activations(half, fp32[half].items()))
              for half in records}  # fmt: skip
    rows, comparisons = [], {}
    every_fp32 = {pid: emb for half in fp32.values() for pid, emb in half.items()}  # (the halves share no protein)
    for name, source in embedding_sources(pipeline, every_fp32).items():
        test_embeddings = {}
        for half, recs in records.items():
            stream = source(recs)
            if half == "test":
                stream = _kept(stream, test_embeddings)
            counts[name, half] = bench_precision.count_half(halves, half, pipeline.num_features, thresholds, activations(half, stream))
        result = bench_precision.compare_f1(counts, ("fp32", name), chosen, evaluated, halves, thresholds, len(records["test"]))
        comparisons[name] = result
        rows.append({
            "embeddings": name, **embedding_difference(fp32["test"], test_embeddings),
            "matches_changed_over_tolerance": result["matches_changed_over_tolerance"], "max_abs_f1_change": result["max_abs_f1_change"],
            "mean_abs_f1_change": result["mean_abs_f1_change"],
            "evaluated_concepts_with_the_same_choice": result.get("evaluated_concepts_with_the_same_choice"),
            "worst_match": _named(result["worst_match"]) if result["max_abs_f1_change"] > 0 else None,
        })  # fmt: skip
        print(f"{name}: {result['matches_changed_over_tolerance']} of {result['chosen_matches']} matches move by more than "
              f"{bench_precision.F1_TOLERANCE} (max {result['max_abs_f1_change']:.4f})", flush=True)  # fmt: skip

    _common.print_table(f"Test F1 of the {len(chosen)} chosen matches ({len(records['test'])} test proteins) from embeddings that differ from fp32's",
                        rows, ["embeddings", "embedding_max_abs_diff", "embedding_mean_relative_diff", "matches_changed_over_tolerance",
                               "max_abs_f1_change", "mean_abs_f1_change", "evaluated_concepts_with_the_same_choice", "worst_match"])  # fmt: skip
    by_name = {row["embeddings"]: row for row in rows}
    finding = (f"the 0.01 check moves {by_name['float16']['matches_changed_over_tolerance']} match(es) when exact fp32 embeddings are only "
               f"rounded to float16, {by_name['bfloat16']['matches_changed_over_tolerance']} when rounded to bfloat16, "
               f"{by_name['bf16 compute']['matches_changed_over_tolerance']} under bf16 compute, "
               f"{by_name['fair-esm blocks']['matches_changed_over_tolerance']} for fair-esm's own fp32 blocks")  # fmt: skip
    print(f"\n{finding}")
    _common.write_result(args, "rounding", {
        "what": "bench_precision's concept recount from embeddings that differ from fp32's in known ways; nothing timed",
        "tolerance": bench_precision.F1_TOLERANCE, "layer": pipeline.layer, "model": pipeline.plm.name,
        "test_proteins": len(records["test"]), "validation_proteins": len(records.get("valid", [])), "chosen_matches": len(chosen),
        "torch_threads": torch.get_num_threads(), "rows": rows, "comparisons": comparisons, "finding": finding,
        "seconds": time.perf_counter() - start,
    })  # fmt: skip
    return 0


def _named(match: dict) -> str:
    return f"{match['concept']} / feature {match['feature']} at {match['threshold']:g}"


def _kept(stream: Iterable[tuple[str, np.ndarray]], into: dict[str, np.ndarray]) -> Iterator[tuple[str, np.ndarray]]:
    """``stream``, keeping each embedding in ``into`` on the way (for the difference from fp32)."""
    for pid, emb in stream:
        into[pid] = emb
        yield pid, emb


if __name__ == "__main__":
    sys.exit(main())
