#!/usr/bin/env python
"""Build the embedded default's SAE, feature database and report with the project's own command line.

Run after ``scripts/train_demo_plm.py`` (which writes the demo PLM into the package):

    python scripts/build_demo.py --data ../shared/data

Steps (each an ``interplm`` subcommand, so this is also the worked example of the README):
concepts (Swiss-Prot labels of every annotated file, halved by MMseqs2 clusters) -> embed
(training-split proteins of both FASTA files) -> train (ReLU SAE) -> normalize -> build-db (all
annotated proteins, concept matches chosen on validation and scored on test) -> report (SAE
features vs neurons). ``--reuse-sae`` keeps the shipped SAE and redoes concepts, build-db and
report only. Work files go to runs/demo/; what ships goes to src/interplm_plugins/data/demo/ (with
the halves, ``concept_halves.tsv``, so the tests recompute the report exactly) and the report's
numbers to docs/demo_report.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from interplm_plugins.cli import main as interplm
from interplm_plugins.core.atomic import write_text_atomic
from interplm_plugins.core.plm import DEMO_MODEL_NAME
from interplm_plugins.core.sequences import protein_split, read_fasta, write_fasta

REPO = Path(__file__).resolve().parent.parent
DEMO = REPO / "src" / "interplm_plugins" / "data" / "demo"


def step(*argv: str) -> None:
    print("$ interplm " + " ".join(argv), flush=True)
    status = interplm(list(argv))
    if status != 0:
        sys.exit(f"step failed with status {status}: interplm {' '.join(argv)}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    p.add_argument("--work", type=Path, default=REPO / "runs" / "demo")
    p.add_argument("--layer", type=int, default=3)
    p.add_argument("--width", type=int, default=2048)
    # Layer-3 embeddings of the demo model have norms near 80 (no input normalisation), and the L1
    # coefficient scales with them. Chosen by mean validation F1 over concepts among the
    # configurations in docs/demo_sae_sweep.md.
    p.add_argument("--l1", type=float, default=10.0)
    p.add_argument("--steps", type=int, default=5000)
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--top-k", type=int, default=8)
    p.add_argument("--reuse-sae", action="store_true", help="keep the shipped SAE: redo concepts, build-db and report")
    p.add_argument("--card-only", action="store_true", help="only write MODEL_CARD.md again from docs/demo_report.json")
    args = p.parse_args()
    if args.card_only:
        shipped = json.loads((REPO / "docs" / "demo_report.json").read_text())
        write_model_card(shipped["summary"], shipped["sae_quality"], args)
        return 0
    work, model = args.work, str(DEMO / f"{DEMO_MODEL_NAME}.pt")
    work.mkdir(parents=True, exist_ok=True)

    annotated = annotated_files(args.data)
    fastas = [args.data / "sequences" / "swissprot_train.fasta", args.data / "sequences" / "mmseqs2_examples_QUERY_500.fasta"]
    records = [r for f in fastas for r in read_fasta(f)]
    write_fasta([r for r in records if protein_split(r.id) == "train"], work / "train.fasta")

    step("-q", "concepts", *map(str, annotated), "--out", str(work / "concepts"))
    shutil.copyfile(work / "concepts" / "splits.tsv", DEMO / "concept_halves.tsv")
    if not args.reuse_sae:
        step("-q", "embed", str(work / "train.fasta"), "--model", model, "--layer", str(args.layer), "--out", str(work / "emb"))
        step("-q", "train", str(work / "emb"), "--out", str(work / "sae"), "--width", str(args.width), "--l1", str(args.l1),
             "--steps", str(args.steps), "--batch-size", str(args.batch_size), "--warmup", "300")  # fmt: skip
        step("-q", "normalize", str(work / "sae" / "sae.safetensors"), "--store", str(work / "emb"), "--out", str(DEMO / "sae.safetensors"))
    step("-q", "build-db", str(work / "concepts" / "proteins.fasta"), "--model", model, "--sae", str(DEMO / "sae.safetensors"),
         "--concepts", str(work / "concepts"), "--top-k", str(args.top_k), "--out", str(DEMO / "features.sqlite"))  # fmt: skip
    # The shipped database carries the feature clusters, so the plugins' neighbour lists work out of the box.
    step("-q", "cluster", str(DEMO / "features.sqlite"), "--sae", str(DEMO / "sae.safetensors"), "--out", str(REPO / "docs" / "images" / "demo_feature_map.png"))
    step("-q", "report", "--concepts", str(work / "concepts"), "--model", model, "--sae", str(DEMO / "sae.safetensors"), "--out", str(work / "report"))

    report = json.loads((work / "report" / "report.json").read_text())
    quality = sae_quality(model, args.data)
    write_text_atomic(REPO / "docs" / "demo_report.json", json.dumps({**report, "sae_quality": quality}, indent=1))
    (REPO / "docs" / "images").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(work / "report" / "f1_distribution.png", REPO / "docs" / "images" / "demo_f1_distribution.png")
    write_model_card(report["summary"], quality, args)
    print(json.dumps({**report["summary"], **quality}, indent=1))
    return 0


def annotated_files(data: Path) -> list[Path]:
    """Every annotated Swiss-Prot file of ../shared/data: the 727 training entries, then uniprot/more/."""
    more = data / "uniprot" / "more"
    return [data / "uniprot" / "swissprot_train.dat.gz", *sorted(more.glob("*.dat.gz")), *sorted(more.glob("*.json.gz"))]


def sae_quality(model: str, data: Path) -> dict:
    """Reconstruction, sparsity and loss recovered on held-out Swiss-Prot proteins (``tests/test_demo.py`` recomputes them)."""
    from interplm_plugins.core.plm import load_plm
    from interplm_plugins.core.sae import load_sae
    from interplm_plugins.core.evaluate import held_out_quality

    held_out = [r for r in read_fasta(data / "sequences" / "swissprot_train.fasta") if protein_split(r.id) == "test"]
    quality = held_out_quality(load_plm(model), load_sae(DEMO / "sae.safetensors"), held_out, REPO / "runs" / "demo" / "held_out_emb")
    return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in quality.items()}


def write_model_card(summary: dict, quality: dict, args) -> None:
    plm = json.loads((DEMO / f"{DEMO_MODEL_NAME}.json").read_text())
    sae = json.loads((DEMO / "sae.json").read_text())
    cutoffs = ", ".join(f"F1 > {c['f1_cutoff']}: {c['sae']} / {c['neurons']}" for c in summary["concepts_found_by_cutoff"])
    boot = summary["bootstrap_over_test_proteins"]
    at = next(b for b in boot["sae_minus_neurons_concepts_found"] if b["f1_cutoff"] == summary["f1_cutoff"])
    bootstrap = (
        f"Resampling the test proteins ({boot['resamples']} bootstrap resamples, units fixed), SAE - neurons at "
        f"F1 > {summary['f1_cutoff']} has a 95% interval of {at['ci95'][0]:+g} to {at['ci95'][1]:+g}; the SAE is ahead in "
        f"{at['share_sae_ahead']:.0%} of resamples and tied in {at['share_tied']:.0%}."
    )
    card = f"""# The embedded default: {DEMO_MODEL_NAME}

**What it is.** A small protein language model with ESM-2's architecture (fair-esm's `ESM2` class,
{plm['layers']} layers, {plm['embed_dim']} dimensions, {plm['attention_heads']} heads, {plm['parameters']:,} parameters), trained
here from scratch with ESM's masked-LM objective on {plm['training_proteins']} real proteins
({plm['training_residues']:,} residues: the training split of the Swiss-Prot and UniProt FASTA files in
`../shared/data/sequences`) for {plm['steps']} steps of {plm['batch']} crops, peak learning rate {plm['lr']}, on two CPU
cores ({plm['train_minutes']} min). It is saved in
fair-esm's checkpoint format, so `esm.pretrained.load_model_and_alphabet_local` loads it.

**What it is not.** It is **not ESM-2**: it has seen about a millionth of ESM-2's training data,
and its contact head is untrained. It exists so that the toolkit works offline and its demo,
plugins and tests have a model with some biology in it. For research, use real ESM-2 weights
(`--model esm2_t6_8M_UR50D` ... `esm2_t33_650M_UR50D`) or InterPLM's published SAEs.

| measure | value |
|---|---|
| held-out masked-LM perplexity ({plm['held_out_proteins']} proteins of the valid+test splits) | {plm['held_out_perplexity']} |
| unigram (amino-acid frequency) baseline perplexity | {plm['unigram_perplexity']} |

**Its SAE** (`sae.safetensors` + `sae.json`): a {sae['kind']} SAE on layer {sae['plm_layer']}, {sae['d_in']} -> {sae['d_hidden']} features,
L1 coefficient {sae['l1_coefficient']}, trained with `interplm train` and normalised with `interplm normalize`
(activations in [0, 1]). Measured on the {quality['num_residues_evaluated']:,} residues of {quality['num_proteins_evaluated']} held-out Swiss-Prot proteins
(the test split of `protein_split`, in no training data; loss recovered on the first {quality['num_proteins']}); `tests/test_demo.py`
recomputes each number from the shipped files:

| measure | value |
|---|---|
| fraction of variance explained | {quality['fraction_variance_explained']:.3f} |
| mean active features per residue (L0) | {quality['l0']:.0f} |
| dead features | {quality['dead_fraction']:.0%} |
| masked-LM loss recovered (1 = perfect, 0 = zero-ablation) | {quality['fidelity']:.3f} |

**Its feature database** (`features.sqlite`): built with `interplm build-db` over the
{summary['valid_proteins'] + summary['test_proteins']} annotated Swiss-Prot entries of `../shared/data/uniprot` (the 727 of
`swissprot_train.dat.gz` and the new ones of `uniprot/more/`). The entries are halved by MMseqs2 clusters
(30% identity, 80% coverage; whole clusters to one half, `concept_halves.tsv`): each concept's features and
thresholds are chosen on the validation half ({summary['valid_proteins']} proteins) and scored on the test half
({summary['test_proteins']}). A concept is evaluated with {summary['eligibility']} ({summary['concepts_evaluated']} of
{summary['concepts_in_vocabulary']}). Queries rank by validation F1 and show test F1; a feature under validation F1 0.2 has
no concept match. Its UMAP + HDBSCAN feature clusters (`interplm cluster`) are stored with it. About 70% of these
sequences were in the PLM's and the SAE's (unsupervised, label-free) training data, as Swiss-Prot sequences
were in ESM-2's; only the choice of feature per concept sees labels, and it never sees a test protein.

**Concepts found** (`interplm report`): {summary['sae_concepts_above_cutoff']} concepts have an SAE feature with test
F1 > {summary['f1_cutoff']}, against {summary['neuron_concepts_above_cutoff']} with the best single neuron of the same layer
(both signs; neurons and features scaled on the validation half). At other cutoffs (SAE / neurons):
{cutoffs}. The SAE's best unit is better on {summary['concepts_where_sae_beats_neurons']} concepts, the neurons' on
{summary['concepts_where_neurons_beat_sae']}. {bootstrap}

Rebuild: `python scripts/train_demo_plm.py && python scripts/build_demo.py` (about 75 min on 2 cores);
`python scripts/build_demo.py --reuse-sae` redoes only the concepts, database and report.

**The demo structure** (`P32633_AF.pdb`, what `interplm demo` shows): the AlphaFold DB model of MTC7_YEAST
(AlphaFold Protein Structure Database, DeepMind / EMBL-EBI, CC BY 4.0), shipped with its Swiss-Prot entry
(`P32633_MTC7_YEAST.txt`, UniProtKB, CC BY 4.0, UniProt Consortium), so the demo can draw the entry's
transmembrane helices and disordered region under the features that match them. MTC7_YEAST is in the
validation half of the concept evaluation (it helped choose features, it scores none).

Attribution: the Swiss-Prot entries are UniProtKB (CC BY 4.0, UniProt Consortium); see
`../shared/data/SOURCES.md` for where each file came from.
"""
    write_text_atomic(DEMO / "MODEL_CARD.md", card)


if __name__ == "__main__":
    sys.exit(main())
