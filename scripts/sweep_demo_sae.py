#!/usr/bin/env python
"""Choose the embedded default's SAE: a small sweep of kinds, widths, sparsities and layers, chosen on validation only.

Run after ``scripts/train_demo_plm.py`` and before ``scripts/build_demo.py --sae runs/sweep/chosen/sae.safetensors``:

    python scripts/sweep_demo_sae.py --data ../shared/data

Every configuration of :data:`CONFIGS` is trained with ``interplm train`` (the same 2,000 steps of
1,024 residues, warm-up 300, seed 0) on one embedding store: layer embeddings of proteins of the
PLM's own training split (never a concept-evaluation test protein or a 50%-identity homolog of one)
and normalised with ``interplm normalize``. Each is then scored as ``interplm report`` scores it,
by :func:`interplm_plugins.core.concepts.report.compare_units`: per Swiss-Prot concept, feature and
threshold chosen on the validation half, scored on the test half, against the layer's signed
neurons. Reconstruction (FVE, L0, dead features) is measured on the validation half.

The choice is one validation-only number: the mean over evaluated concepts of the best validation
F1. The test columns are written for every configuration so the choice can be checked, not to
make it. Sparsity settings are given relative to the embeddings' scale, measured on the training
store: the ReLU L1 coefficient as a multiple of the mean residue norm (the previous demo's 10 at a
norm of 82 is 0.12), the JumpReLU L0 coefficient as a fraction of the per-residue variance (the
squared error a feature must remove to be worth firing). Results go to ``runs/sweep/results.json``
(resumable: finished configurations are kept) and ``docs/demo_sae_sweep.md``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from build_demo import DEMO, REPO, annotated_files, concept_step, step  # noqa: E402
from train_demo_plm import plm_split  # noqa: E402

from interplm_plugins.core.atomic import write_text_atomic  # noqa: E402
from interplm_plugins.core.inputs.homology import stable_hash  # noqa: E402
from interplm_plugins.core.plm.model import DEMO_MODEL_NAME  # noqa: E402
from interplm_plugins.core.inputs.sequences import ProteinRecord, write_fasta  # noqa: E402


@dataclass(frozen=True)
class SweepConfig:
    """One SAE to train: ``sparsity`` is ``l1_x_norm`` (relu), ``k`` (topk, matryoshka) or ``l0_x_variance`` (jumprelu)."""

    name: str
    layer: int
    kind: str
    width: int
    sparsity: str
    value: float
    lr: float = 1e-3


CONFIGS = [
    SweepConfig("relu-l3-2048-a", 3, "relu", 2048, "l1_x_norm", 0.12),
    SweepConfig("topk-l3-2048-k32", 3, "topk", 2048, "k", 32),
    SweepConfig("matryoshka-l3-2048-k32", 3, "matryoshka", 2048, "k", 32),
    SweepConfig("jumprelu-l3-2048", 3, "jumprelu", 2048, "l0_x_variance", 0.002),
    SweepConfig("relu-l3-4096-a", 3, "relu", 4096, "l1_x_norm", 0.12),
    SweepConfig("relu-l2-2048-a", 2, "relu", 2048, "l1_x_norm", 0.12),
]
LAYERS = sorted({c.layer for c in CONFIGS})
STEPS, BATCH, WARMUP = 2000, 1024, 300


def embedding_scale(store_dir: Path) -> dict[str, float]:
    """Mean residue norm and per-residue variance (squared distance to the mean) of up to 200,000 stored residues."""
    from interplm_plugins.core.plm.store import EmbeddingStore, iter_store_sample

    x = np.concatenate([b.numpy().astype(np.float64) for b in iter_store_sample(EmbeddingStore(store_dir), 200_000, 8192)])
    return {"mean_norm": float(np.linalg.norm(x, axis=1).mean()), "variance": float(((x - x.mean(axis=0)) ** 2).sum(axis=1).mean())}


def train_options(config: SweepConfig, scale: dict[str, float]) -> list[str]:
    if config.sparsity == "l1_x_norm":
        return ["--l1", f"{config.value * scale['mean_norm']:.3g}"]
    if config.sparsity == "l0_x_variance":
        return ["--l0", f"{config.value * scale['variance']:.3g}"]
    return ["--k", str(int(config.value))]


def score(config: SweepConfig, sae_path: Path, halves, eligibility, stores: dict[str, Path]) -> dict:
    """The report's comparison on the halves, the validation-only choice number, and reconstruction on the validation half."""
    from interplm_plugins.core.concepts.report import compare_units
    from interplm_plugins.core.plm.store import EmbeddingStore
    from interplm_plugins.core.sae.encode import encode_features
    from interplm_plugins.core.sae.evaluate import evaluate_sae
    from interplm_plugins.core.sae.files import load_sae

    sae = load_sae(sae_path)
    opened = {half: EmbeddingStore(path) for half, path in stores.items()}

    def embeddings(records):
        for rec in records:
            store = opened["valid"] if rec.id in opened["valid"] else opened["test"]
            yield rec.id, np.array(store.get(rec.id), dtype=np.float32)  # a writable copy of the memory map

    comparison = compare_units(halves, embeddings, lambda emb: encode_features(sae, emb), sae.d_hidden, sae.d_in, eligibility)
    quality = evaluate_sae(sae, opened["valid"], max_residues=None)
    return {
        "mean_valid_f1": round(float(comparison.sae["valid_f1"].mean()), 4),
        "neuron_mean_valid_f1": round(float(comparison.neurons["valid_f1"].mean()), 4),
        "valid_fve": round(quality["fraction_variance_explained"], 4), "valid_l0": round(quality["l0"], 1),
        "valid_dead_fraction": round(quality["dead_fraction"], 4),
        "test": comparison.summary(),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    p.add_argument("--work", type=Path, default=REPO / "runs" / "sweep")
    p.add_argument("--plm-work", type=Path, default=REPO / "runs" / "demo_plm", help="train_demo_plm.py's --work (its cached clusters)")
    p.add_argument("--proteins", type=int, default=4000, help="PLM-training proteins the SAEs are trained on")
    p.add_argument("--steps", type=int, default=STEPS, help=f"training steps of every configuration (default {STEPS})")
    p.add_argument("--only", nargs="*", help="names of CONFIGS to run (default: all)")
    args = p.parse_args()
    work, model = args.work, str(DEMO / f"{DEMO_MODEL_NAME}.pt")
    work.mkdir(parents=True, exist_ok=True)
    from interplm_plugins.cli._common import load_concept_halves

    concepts = concept_step(args.data, work)
    halves, eligibility = load_concept_halves(argparse.Namespace(concepts=str(concepts)))

    records, split, _ = plm_split(args.data, DEMO / "concept_halves.tsv", args.plm_work)
    sae_train = sorted((r for r in records if split[r.id] == "train"), key=lambda r: stable_hash(f"sae\0{r.id}"))[: args.proteins]
    layer_flags = [flag for layer in LAYERS for flag in ("--layer", str(layer))]
    if not (work / "emb_train").exists():
        write_fasta(sae_train, work / "sae_train.fasta")
        step("-q", "embed", str(work / "sae_train.fasta"), "--model", model, *layer_flags, "--dtype", "float16", "--out", str(work / "emb_train"))
    for half in ("valid", "test"):
        if not (work / f"emb_{half}").exists():
            sequences = halves.labels(half).sequences
            write_fasta([ProteinRecord(pid, seq) for pid, seq in sequences.items()], work / f"{half}.fasta")
            step("-q", "embed", str(work / f"{half}.fasta"), "--model", model, *layer_flags, "--out", str(work / f"emb_{half}"))

    results_file = work / "results.json"
    results = json.loads(results_file.read_text()) if results_file.exists() else {"configs": []}
    done = {r["config"]["name"] for r in results["configs"]}
    scales = {layer: embedding_scale(work / "emb_train" / f"layer_{layer}") for layer in LAYERS}
    results["scales"] = {str(k): v for k, v in scales.items()}
    results["sae_training"] = {"proteins": len(sae_train), "residues": sum(len(r.sequence) for r in sae_train),
                               "steps": args.steps, "batch": BATCH, "warmup": WARMUP}  # fmt: skip
    for config in CONFIGS:
        if config.name in done or (args.only and config.name not in args.only):
            continue
        t0 = time.time()
        out = work / "sae" / config.name
        store = work / "emb_train" / f"layer_{config.layer}"
        step("-q", "train", str(store), "--out", str(out), "--kind", config.kind, "--width", str(config.width),
             *train_options(config, scales[config.layer]), "--steps", str(args.steps), "--batch-size", str(BATCH),
             "--warmup", str(WARMUP), "--lr", f"{config.lr:g}")  # fmt: skip
        step("-q", "normalize", str(out / "sae.safetensors"), "--store", str(store), "--out", str(out / "normalized.safetensors"))
        stores = {half: work / f"emb_{half}" / f"layer_{config.layer}" for half in ("valid", "test")}
        row = {"config": asdict(config), "train_options": train_options(config, scales[config.layer]),
               **score(config, out / "normalized.safetensors", halves, eligibility, stores), "minutes": round((time.time() - t0) / 60, 1)}  # fmt: skip
        print(json.dumps({k: v for k, v in row.items() if k != "test"}), flush=True)
        results["configs"].append(row)
        write_text_atomic(results_file, json.dumps(results, indent=1))

    chosen = max(results["configs"], key=lambda r: r["mean_valid_f1"])
    results["chosen"] = chosen["config"]["name"]
    write_text_atomic(results_file, json.dumps(results, indent=1))
    target = work / "chosen"
    target.mkdir(exist_ok=True)
    source = work / "sae" / results["chosen"] / "normalized"
    for suffix in (".safetensors", ".json"):
        shutil.copyfile(source.with_suffix(suffix), target / f"sae{suffix}")
    write_text_atomic(REPO / "docs" / "demo_sae_sweep.md", sweep_markdown(results))
    print(f"chosen on validation: {results['chosen']} -> {target / 'sae.safetensors'}")
    return 0


def sweep_markdown(results: dict) -> str:
    plm = json.loads((DEMO / f"{DEMO_MODEL_NAME}.json").read_text())
    training = results["sae_training"]
    rows = []
    for r in results["configs"]:
        c, t = r["config"], r["test"]
        at = {x["f1_cutoff"]: x for x in t["concepts_found_by_cutoff"]}
        mark = "**" if c["name"] == results["chosen"] else ""
        setting = " ".join(r["train_options"])
        rows.append(
            f"| {mark}{c['name']}{mark} | {c['layer']} | {c['kind']} | {c['width']:,} | `{setting}` | {r['valid_fve']:.3f} | {r['valid_l0']:.0f} | "
            f"{r['valid_dead_fraction']:.0%} | {mark}{r['mean_valid_f1']:.3f}{mark} | {r['neuron_mean_valid_f1']:.3f} | "
            f"{at[0.5]['sae']} / {at[0.5]['neurons']} | {at[0.3]['sae']} / {at[0.3]['neurons']} | "
            f"{t['concepts_where_sae_beats_neurons']} / {t['concepts_where_neurons_beat_sae']} |"
        )
    scales = ", ".join(f"layer {k}: mean norm {v['mean_norm']:.1f}, variance {v['variance']:.0f}" for k, v in results["scales"].items())
    return f"""# How the demo SAE was chosen

Written by `scripts/sweep_demo_sae.py` (its docstring has the method). The PLM is the shipped
`{plm['name']}` ({plm['layers']} layers x {plm['embed_dim']}). Every SAE is trained with `interplm train` for
{training['steps']:,} steps of {training['batch']:,} residues (warm-up {training['warmup']}, learning rate 1e-3, seed 0) on the
layer embeddings of {training['proteins']:,} proteins ({training['residues']:,} residues) of the PLM's training split, and
normalised with `interplm normalize`. Scale of the training embeddings ({scales}); sparsity settings
are multiples of it (see the docstring).

**The choice is one validation-only number**: the mean, over the concepts evaluated, of the best
validation F1 (feature and threshold chosen on the validation half of the concept halves). The
chosen configuration is in bold and ships as `sae.safetensors`. The test columns (concepts whose
chosen unit has test F1 > 0.5 or > 0.3, SAE / signed neurons of the same layer; concepts where
each is better) are there so the choice can be checked; they chose nothing. FVE, L0 and dead
features are measured on the validation half's residues.

| configuration | layer | kind | width | setting | FVE | L0 | dead | mean validation F1 | neurons' mean validation F1 | test: F1 > 0.5, SAE / neurons | F1 > 0.3 | SAE / neurons better |
|---|---|---|---|---|---|---|---|---|---|---|---|---|
{chr(10).join(rows)}

Earlier sweeps, for the previous demo PLM (trained on 872 proteins), are in this file's git history.
"""


if __name__ == "__main__":
    sys.exit(main())
