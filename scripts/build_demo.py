#!/usr/bin/env python
"""Build the embedded default's feature database and report with the project's own command line.

Run after ``scripts/train_demo_plm.py`` (the PLM) and ``scripts/sweep_demo_sae.py`` (the SAE, chosen
on validation among a small sweep; ``runs/sweep/chosen/``):

    python scripts/build_demo.py --data ../shared/data

Steps (each an ``interplm`` subcommand, so this is also the worked example of the README):
concepts (Swiss-Prot labels of every annotated file, halved by MMseqs2 clusters; the halves must be
the shipped ``concept_halves.tsv``, on whose test half the PLM was held out) -> the chosen SAE into
the package -> build-db (all annotated proteins, concept matches chosen on validation and scored
on test) -> cluster -> report (SAE features vs neurons) -> SAE quality on the test half (proteins
neither the PLM nor the SAE trained on). ``--reuse-sae`` keeps the shipped SAE. Work files go to
runs/demo/; what ships goes to src/interplm_plugins/data/demo/ and the report's numbers to
docs/demo_report.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from interplm_plugins.cli import main as interplm
from interplm_plugins.core.atomic import write_text_atomic
from interplm_plugins.core.inputs.sequences import ProteinRecord
from interplm_plugins.core.plm.model import DEMO_MODEL_NAME

REPO = Path(__file__).resolve().parent.parent
DEMO = REPO / "src" / "interplm_plugins" / "data" / "demo"


def step(*argv: str) -> None:
    print("$ interplm " + " ".join(argv), flush=True)
    status = interplm(list(argv))
    if status != 0:
        sys.exit(f"step failed with status {status}: interplm {' '.join(argv)}")


def concept_step(data: Path, work: Path) -> Path:
    """``interplm concepts`` over every annotated file into ``work/concepts``; its halves must be the shipped ones.

    The PLM held out the clusters of the shipped test half (scripts/train_demo_plm.py), so halves
    that came out differently would put PLM-training proteins into the test half: an error.
    """
    out = work / "concepts"
    if not (out / "splits.tsv").exists():
        step("-q", "concepts", *map(str, annotated_files(data)), "--out", str(out))
    shipped = DEMO / "concept_halves.tsv"
    if not shipped.exists():
        shutil.copyfile(out / "splits.tsv", shipped)
    elif (out / "splits.tsv").read_text() != shipped.read_text():
        sys.exit(f"{out / 'splits.tsv'}: the concept halves differ from the shipped {shipped}, on whose test half the PLM was held out")
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    p.add_argument("--work", type=Path, default=REPO / "runs" / "demo")
    p.add_argument("--sae", type=Path, default=REPO / "runs" / "sweep" / "chosen" / "sae.safetensors",
                   help="the normalised SAE to ship (default: the one scripts/sweep_demo_sae.py chose on validation)")
    p.add_argument("--top-k", type=int, default=8)
    p.add_argument("--reuse-sae", action="store_true", help="keep the shipped SAE: redo concepts, build-db and report")
    p.add_argument("--card-only", action="store_true", help="only write MODEL_CARD.md again from docs/demo_report.json")
    args = p.parse_args()
    if args.card_only:
        shipped = json.loads((REPO / "docs" / "demo_report.json").read_text())
        write_model_card(shipped["summary"], shipped["sae_quality"])
        return 0
    work, model = args.work, str(DEMO / f"{DEMO_MODEL_NAME}.pt")
    work.mkdir(parents=True, exist_ok=True)

    concepts = concept_step(args.data, work)
    if not args.reuse_sae:
        for suffix in (".safetensors", ".json"):
            shutil.copyfile(args.sae.with_suffix(suffix), DEMO / f"sae{suffix}")
    step("-q", "build-db", str(concepts / "proteins.fasta"), "--model", model, "--sae", str(DEMO / "sae.safetensors"),
         "--concepts", str(concepts), "--top-k", str(args.top_k), "--out", str(DEMO / "features.sqlite"))  # fmt: skip
    # The shipped database carries the feature clusters, so the plugins' neighbour lists work out of the box.
    step("-q", "cluster", str(DEMO / "features.sqlite"), "--sae", str(DEMO / "sae.safetensors"), "--out", str(REPO / "docs" / "images" / "demo_feature_map.png"))
    step("-q", "report", "--concepts", str(concepts), "--model", model, "--sae", str(DEMO / "sae.safetensors"), "--out", str(work / "report"))

    report = json.loads((work / "report" / "report.json").read_text())
    quality = sae_quality(model, concepts)
    write_text_atomic(REPO / "docs" / "demo_report.json", json.dumps({**report, "sae_quality": quality}, indent=1))
    (REPO / "docs" / "images").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(work / "report" / "f1_distribution.png", REPO / "docs" / "images" / "demo_f1_distribution.png")
    write_model_card(report["summary"], quality)
    print(json.dumps({**report["summary"], **quality}, indent=1))
    return 0


def annotated_files(data: Path) -> list[Path]:
    """Every annotated Swiss-Prot file of ../shared/data: the 727 training entries, then uniprot/more/."""
    more = data / "uniprot" / "more"
    return [data / "uniprot" / "swissprot_train.dat.gz", *sorted(more.glob("*.dat.gz")), *sorted(more.glob("*.json.gz"))]


def quality_proteins(concepts: Path) -> list[ProteinRecord]:
    """The concept test half's proteins, in the labels' order: held out of the PLM's training (whole 50% clusters) and never in the SAE's."""
    from interplm_plugins.core.concepts import ConceptHalves, ConceptLabels

    halves = ConceptHalves.from_splits(ConceptLabels.load(concepts))
    return [ProteinRecord(pid, seq) for pid, seq in halves.labels("test").sequences.items()]


def sae_quality(model: str, concepts: Path) -> dict:
    """Reconstruction, sparsity and loss recovered on the test half (``tests/test_demo.py`` recomputes them)."""
    from interplm_plugins.core.plm.loading import load_plm
    from interplm_plugins.core.sae.evaluate import held_out_quality
    from interplm_plugins.core.sae.files import load_sae

    work = REPO / "runs" / "demo" / "held_out_emb"
    shutil.rmtree(work, ignore_errors=True)
    quality = held_out_quality(load_plm(model), load_sae(DEMO / "sae.safetensors"), quality_proteins(concepts), work)
    return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in quality.items()}


def sae_setting(sae: dict) -> str:
    """The SAE's sparsity setting in words, by kind."""
    if sae["kind"] == "relu":
        return f"L1 coefficient {sae['l1_coefficient']:g}"
    if sae["kind"] == "jumprelu":
        return f"L0 coefficient {sae['l1_coefficient']:g}"
    prefixes = f", nested prefixes {sae['prefixes']}" if sae.get("prefixes") else ""
    return f"k = {sae['k']}{prefixes}"


def write_model_card(summary: dict, quality: dict) -> None:
    plm = json.loads((DEMO / f"{DEMO_MODEL_NAME}.json").read_text())
    sae = json.loads((DEMO / "sae.json").read_text())
    sweep_file = REPO / "runs" / "sweep" / "results.json"
    sweep = json.loads(sweep_file.read_text()) if sweep_file.exists() else {}
    sae_proteins = sweep.get("sae_training", {}).get("proteins")
    cutoffs = ", ".join(f"F1 > {c['f1_cutoff']}: {c['sae']} / {c['neurons']}" for c in summary["concepts_found_by_cutoff"])
    boot = summary["bootstrap_over_test_proteins"]
    at = next(b for b in boot["sae_minus_neurons_concepts_found"] if b["f1_cutoff"] == summary["f1_cutoff"])
    bootstrap = (
        f"Resampling the test proteins ({boot['resamples']} bootstrap resamples, units fixed), SAE - neurons at "
        f"F1 > {summary['f1_cutoff']} has a 95% interval of {at['ci95'][0]:+g} to {at['ci95'][1]:+g}; the SAE is ahead in "
        f"{at['share_sae_ahead']:.0%} of resamples and tied in {at['share_tied']:.0%}."
    )
    held = plm["held_out"]
    unseen, sp_test = held["unseen_clusters"], held["swissprot_test"]
    passes = plm["training_tokens_seen"] / plm["training_residues"]
    verdict = ("it is met" if max(unseen["perplexity"], sp_test["perplexity"]) <= 12 else
               f"it is **not met**: two CPU cores bought {passes:.2f} of one pass over the corpus, and this is a weak model of proteins")
    trained_on = (f"{sae_proteins:,} proteins of the PLM's training split" if sae_proteins else "proteins of the PLM's training split")
    card = f"""# The embedded default: {DEMO_MODEL_NAME}

**What it is.** A small protein language model with ESM-2's architecture (fair-esm's `ESM2` class,
{plm['layers']} layers, {plm['embed_dim']} dimensions, {plm['attention_heads']} heads, {plm['parameters']:,} parameters), trained
here from scratch with ESM's masked-LM objective on {plm['training_proteins']:,} real proteins
({plm['training_residues']:,} residues: the corpus of `../shared/data/sequences/corpus` (UniProt reference
proteomes, Swiss-Prot subsets, RefSeq proteins) with the Swiss-Prot FASTA files and annotated entries, one
record per distinct sequence) for {plm['steps']:,} steps of {plm['batch']} crops of up to {plm['crop']} residues
({plm['training_tokens_seen'] / 1e6:.1f} M residues seen, {passes:.2f} passes over the data), peak learning rate {plm['lr']},
{plm['precision']} matmuls (fp32 master weights) on {plm['threads']} CPU cores ({plm['train_minutes']} min). It is saved in
fair-esm's checkpoint format, so `esm.pretrained.load_model_and_alphabet_local` loads it.

**What it is not.** It is **not ESM-2**: it has seen a few ten-thousandths of ESM-2's training
tokens, and its contact head is untrained. It exists so that the toolkit works offline and its
demo, plugins and tests have a model with some biology in it. For research, use real ESM-2 weights
(`--model esm2_t6_8M_UR50D` ... `esm2_t33_650M_UR50D`) or InterPLM's published SAEs.

**Held out.** The proteins were clustered by MMseqs2 (linclust, 50% identity, 80% coverage: UniRef50's
line). Held out whole: every cluster holding a protein of the concept evaluation's test half (below),
and 1% of the other clusters. Masked-LM perplexity of the shipped checkpoint (15% of residues masked,
seed 0; the scored proteins are listed in `{DEMO_MODEL_NAME}_held_out.tsv` and `tests/test_demo.py`
recomputes both numbers), beside the unigram baseline (training amino-acid frequencies):

| held-out set | proteins | masked-LM perplexity | unigram baseline |
|---|---|---|---|
| never-seen clusters | {unseen['proteins']:,} | {unseen['perplexity']:.2f} | {unseen['unigram_perplexity']:.2f} |
| concept test half (Swiss-Prot) | {sp_test['proteins']:,} | {sp_test['perplexity']:.2f} | {sp_test['unigram_perplexity']:.2f} |

The target set for this model was a perplexity of 12 or less; {verdict}.
Every scored residue is replaced by `<mask>` (`core.sae.evaluate.masked_lm_loss`); the 14.4 quoted for the previous
model counted BERT-style corruption, where one scored residue in ten stays visible.

**Its SAE** (`sae.safetensors` + `sae.json`): a {sae['kind']} SAE on layer {sae['plm_layer']}, {sae['d_in']} -> {sae['d_hidden']} features,
{sae_setting(sae)}, trained with `interplm train` on the layer embeddings of {trained_on} and normalised
with `interplm normalize` (activations in [0, 1]). It was chosen among the configurations of
`docs/demo_sae_sweep.md` (ReLU, TopK, Matryoshka BatchTopK, JumpReLU; two widths, two layers) by one
validation-only number, the mean best validation F1 over concepts. Measured on the
{quality['num_residues_evaluated']:,} residues of the {quality['num_proteins_evaluated']} proteins of the concept test half (in neither the PLM's
nor the SAE's training data; loss recovered on the first {quality['num_proteins']}); `tests/test_demo.py` recomputes
each number from the shipped files:

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
no concept match. Its UMAP + HDBSCAN feature clusters (`interplm cluster`) are stored with it. Validation-half
sequences may be in the PLM's (unsupervised, label-free) training data, as Swiss-Prot sequences were in
ESM-2's; test-half proteins and their 50%-identity cluster mates are in no training data, and only the choice
of feature per concept sees labels, never those of a test protein.

**Concepts found** (`interplm report`): {summary['sae_concepts_above_cutoff']} concepts have an SAE feature with test
F1 > {summary['f1_cutoff']}, against {summary['neuron_concepts_above_cutoff']} with the best single neuron of the same layer
(both signs; neurons and features scaled on the validation half). At other cutoffs (SAE / neurons):
{cutoffs}. The SAE's best unit is better on {summary['concepts_where_sae_beats_neurons']} concepts, the neurons' on
{summary['concepts_where_neurons_beat_sae']}. {bootstrap}

Rebuild: `python scripts/train_demo_plm.py --precision bf16 --steps {plm['steps']} && python scripts/sweep_demo_sae.py && python scripts/build_demo.py`
(about 2.5 hours on 2 cores); `python scripts/build_demo.py --reuse-sae` redoes only the concepts, database and report.

**The demo structure** (`P32633_AF.pdb`, what `interplm demo` shows): the AlphaFold DB model of MTC7_YEAST
(AlphaFold Protein Structure Database, DeepMind / EMBL-EBI, CC BY 4.0), shipped with its Swiss-Prot entry
(`P32633_MTC7_YEAST.txt`, UniProtKB, CC BY 4.0, UniProt Consortium), so the demo can draw the entry's
transmembrane helices and disordered region under the features that match them. MTC7_YEAST is in the
validation half of the concept evaluation (it helped choose features, it scores none).

Attribution: the Swiss-Prot entries are UniProtKB (CC BY 4.0, UniProt Consortium); the corpus sources are
listed in `../shared/data/SOURCES.md`.
"""
    write_text_atomic(DEMO / "MODEL_CARD.md", card)


if __name__ == "__main__":
    sys.exit(main())
