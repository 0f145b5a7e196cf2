"""In-silico mutation scan: ``core.interpret.mutate.mutation_scan`` with the embedded default.

A real 300-residue Swiss-Prot protein, 100 positions x 19 mutants (1,900 mutant chains), the
embedded demo PLM (4 layers x 256) and its 2,048-feature SAE on layer 3:

- *cold*: empty caches, every position's 19 mutants one forward batch from one tokenisation;
- *warm*: the same scan for another feature (the per-position effects on every feature are
  cached, so it is a lookup);
- *one at a time*: what a loop over ``Pipeline.activations(mutant)`` costs (one forward and one
  tokenisation per mutant, as a user script would do), timed on 5 positions and scaled to 100.

Target: the cold scan well under a minute on 2 CPU cores. Each timing also records the process's
CPU seconds and the load average: on a shared machine the wall time grows with the other load,
while CPU seconds / threads is what the scan takes on its own cores. The matmul peak measured in
the same run (``_common.matmul_peak_gflops``) gives the scan's efficiency: its model FLOPs over its
wall time, as a fraction of what the cores delivered to a plain matmul at that moment.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

LENGTH, POSITIONS, LOOP_POSITIONS = 300, 100, 5


def scan_gflop(pipeline, length: int, mutants: int) -> float:
    """Multiply-adds x 2 of a scan: the PLM's blocks up to the SAE's layer and the SAE encoder."""
    model = pipeline.plm.model
    d, ffn, tokens = model.embed_dim, model.layers[0].fc1.out_features, mutants * (length + 2)
    per_token_layer = 2 * (4 * d * d + 2 * d * ffn) + 4 * (length + 2) * d  # projections, feed-forward, attention
    return (tokens * pipeline.layer * per_token_layer + 2 * mutants * length * d * pipeline.num_features) / 1e9


def main(argv: list[str] | None = None) -> int:
    args = _common.parser(__doc__.splitlines()[0]).parse_args(argv)
    import torch

    torch.set_num_threads(min(2, os.cpu_count() or 1))
    positions, loop_positions = (10, 2) if args.quick else (POSITIONS, LOOP_POSITIONS)
    with _common.Workdir(args.workdir) as work:
        os.environ["INTERPLM_CACHE_DIR"] = str(work / "cache")
        from interplm_plugins.core.inputs.sequences import read_fasta
        from interplm_plugins.core.interpret.mutate import AMINO_ACIDS, mutation_scan
        from interplm_plugins.core.interpret.pipeline import load_pipeline

        pipeline = load_pipeline()
        record = next(r for r in read_fasta(args.data / "sequences" / "swissprot_train.fasta") if len(r.sequence) == LENGTH) \
            if not args.quick else read_fasta(args.data / "sequences" / "swissprot_train.fasta")[0]  # fmt: skip
        sequence = record.sequence[:LENGTH]
        scanned = list(range(0, len(sequence), max(1, len(sequence) // positions)))[:positions]
        wild = pipeline.activations(sequence)
        feature = int(wild.max(axis=0).argmax())
        load_before, cpu_start = os.getloadavg()[0], time.process_time()
        cold, table = _common.timed(lambda: mutation_scan(pipeline, sequence, feature, scanned))
        cold_cpu = time.process_time() - cpu_start
        other = int(wild.sum(axis=0).argsort()[-2])
        warm, _ = _common.timed(lambda: mutation_scan(pipeline, sequence, other, scanned))

        def one_at_a_time() -> None:
            for p in scanned[:loop_positions]:
                for a in AMINO_ACIDS:
                    if a != sequence[p]:
                        pipeline.activations(sequence[:p] + a + sequence[p + 1 :])

        pipeline.cache.directory = None  # each mutant a forward pass, no disk writes timed

        cpu_start = time.process_time()
        loop, _ = _common.timed(one_at_a_time)
        loop_scaled, loop_cpu_scaled = loop * len(scanned) / loop_positions, (time.process_time() - cpu_start) * len(scanned) / loop_positions
        load_after = os.getloadavg()[0]
        gflop = scan_gflop(pipeline, len(sequence), len(table))
    threads = torch.get_num_threads()
    peak = _common.matmul_peak_gflops(2048 if args.quick else 4096)
    efficiency = gflop / cold / peak
    rows = [
        {"measure": f"mutation scan, cold ({len(scanned)} positions x 19 = {len(table)} mutants)", "value": cold, "unit": "s", "target": "< 60"},
        {"measure": "  CPU seconds / threads (the scan alone on its cores)", "value": cold_cpu / threads, "unit": "s", "target": "< 60"},
        {"measure": "  per position (one batch of 19), wall", "value": cold / len(scanned), "unit": "s", "target": ""},
        {"measure": "same scan, another feature (cached effects)", "value": warm, "unit": "s", "target": ""},
        {"measure": f"one mutant at a time (Pipeline.activations), scaled from {loop_positions} positions", "value": loop_scaled, "unit": "s", "target": ""},
        {"measure": "speed-up of the batched scan over one at a time (CPU seconds)", "value": loop_cpu_scaled / cold_cpu, "unit": "x", "target": ""},
        {"measure": "load average (1 min) before / after", "value": f"{load_before:.1f} / {load_after:.1f}", "unit": "", "target": ""},
        {"measure": f"scan: {gflop:,.0f} GFLOP at {gflop / cold:.1f} GFLOP/s = fraction of this run's matmul peak ({peak:.0f} GFLOP/s)",
         "value": efficiency, "unit": "", "target": ""},
    ]  # fmt: skip
    _common.print_table(f"Mutation scan of {record.id} ({len(sequence)} residues), embedded default, {threads} threads", rows,
                        ["measure", "value", "unit", "target"])  # fmt: skip
    _common.write_result(args, "mutate", {
        "target": "100 positions x 19 of a 300-residue chain well under a minute on 2 CPU cores",
        "protein": record.id, "residues": len(sequence), "positions": len(scanned), "mutants": len(table), "feature": feature,
        "threads": threads, "cold_s": cold, "cold_cpu_per_thread_s": cold_cpu / threads, "warm_s": warm,
        "one_at_a_time_scaled_s": loop_scaled, "speedup": loop_cpu_scaled / cold_cpu, "load_average": [load_before, load_after],
        "gflop": gflop, "matmul_peak_gflops": peak, "efficiency": efficiency, "rows": rows,
    })  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
