"""The embedded default: a real fair-esm checkpoint with biology in it, its SAE and database, and `interplm demo`."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from interplm_plugins.core.interpret.pipeline import DEMO_DATABASE, DEMO_DIR, DEMO_SAE, load_pipeline
from interplm_plugins.core.plm.loading import load_plm
from interplm_plugins.core.plm.model import demo_model_path

REPO = Path(__file__).resolve().parent.parent


def test_embedded_files_are_shipped_and_small():
    files = [demo_model_path(), demo_model_path().with_name(demo_model_path().stem + "-contact-regression.pt"), DEMO_SAE,
             DEMO_SAE.with_suffix(".json"), DEMO_DATABASE, DEMO_DIR / "MODEL_CARD.md"]  # fmt: skip
    for f in files:
        assert f.is_file(), f
    assert sum(f.stat().st_size for f in files) < 40 * 2**20  # the package limit of the embedded default
    card = (DEMO_DIR / "MODEL_CARD.md").read_text()
    assert "not ESM-2" in card and "perplexity" in card


def test_fair_esm_own_loader_reads_the_demo_checkpoint():
    """fair-esm's load_model_and_alphabet_local loads it (with argparse.Namespace allowlisted, never weights_only=False)."""
    import esm.pretrained

    torch.serialization.add_safe_globals([argparse.Namespace])
    model, alphabet = esm.pretrained.load_model_and_alphabet_local(str(demo_model_path()))
    ours = load_plm("demo")
    assert model.num_layers == ours.num_layers == 4 and model.embed_dim == ours.embed_dim
    _, _, toks = alphabet.get_batch_converter()([("p", "MKTAYIAKQRQISFVKSHFSRQ")])
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(toks)["logits"], ours.model(toks)["logits"])


def _train_demo_plm():
    """scripts/train_demo_plm.py as a module: the tests read the held-out proteins with its own reader."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("train_demo_plm", REPO / "scripts" / "train_demo_plm.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_demo_model_perplexities_are_recomputed_from_the_shipped_checkpoint(shared_data, tmp_path):
    """Masked-LM perplexity of the shipped checkpoint on its two held-out sets (listed beside it) equals the model
    card's, and beats the unigram baseline of the training amino-acid frequencies."""
    from interplm_plugins.core.sae.evaluate import masked_lm_loss

    trainer = _train_demo_plm()
    metrics = json.loads((DEMO_DIR / "esm2_t4_3M_interplm_demo.json").read_text())
    listed: dict[str, list[str]] = {}
    for line in (DEMO_DIR / "esm2_t4_3M_interplm_demo_held_out.tsv").read_text().splitlines()[1:]:
        pid, name = line.split("\t")
        listed.setdefault(name, []).append(pid)
    assert set(listed) == {"unseen_clusters", "swissprot_test"}
    halves = dict(line.split("\t") for line in (DEMO_DIR / "concept_halves.tsv").read_text().splitlines()[1:])
    assert set(listed["swissprot_test"]) == {pid for pid, half in halves.items() if half == "test"}
    # The split is made again (MMseqs2 linclust of the corpus, ~15 s): it gives the listed proteins and the card's counts.
    records, split, eval_sets = trainer.plm_split(shared_data, DEMO_DIR / "concept_halves.tsv", tmp_path)
    assert {name: [r.id for r in recs] for name, recs in eval_sets.items()} == listed
    train = [r.sequence for r in records if split[r.id] == "train"]
    assert trainer.amino_acid_counts(train) == metrics["training_amino_acid_counts"]
    card_words = " ".join((DEMO_DIR / "MODEL_CARD.md").read_text().split())
    assert f"on {len(train):,} real proteins ({sum(map(len, train)):,} residues:" in card_words
    sequences = {r.id: r for r in records}
    plm = load_plm("demo")
    card = (DEMO_DIR / "MODEL_CARD.md").read_text()
    measured = {}
    for name, label in (("unseen_clusters", "never-seen clusters"), ("swissprot_test", "concept test half (Swiss-Prot)")):
        records = [sequences[pid] for pid in listed[name]]
        nll, _ = masked_lm_loss(plm, records, seed=0)
        unigram = trainer.unigram_perplexity(metrics["training_amino_acid_counts"], [r.sequence[:1022] for r in records])
        assert np.exp(nll) < unigram - 1.0, name
        assert f"| {label} | {len(records):,} | {np.exp(nll):.2f} | {unigram:.2f} |" in card
        measured[name] = (len(records), np.exp(nll), unigram)
    (n_u, ppl_u, uni_u), (n_t, ppl_t, uni_t) = measured["unseen_clusters"], measured["swissprot_test"]
    readme = " ".join((REPO / "README.md").read_text().split())
    assert (f"masked-LM perplexity **{ppl_u:.2f}** on {n_u:,} proteins of never-seen clusters and **{ppl_t:.2f}** on the {n_t} "
            f"proteins of the concept test half (amino-acid frequencies: {uni_u:.2f} and {uni_t:.2f})") in readme  # fmt: skip


def _annotated_files(shared: Path) -> list[Path]:
    """What scripts/build_demo.py reads: the 727 training entries, then uniprot/more/."""
    more = shared / "uniprot" / "more"
    return [shared / "uniprot" / "swissprot_train.dat.gz", *sorted(more.glob("*.dat.gz")), *sorted(more.glob("*.json.gz"))]


@pytest.fixture(scope="module")
def demo_halves(shared_data):
    """The demo's concept halves, rebuilt from the real entries and the shipped halves (MMseqs2 clusters at build time)."""
    from interplm_plugins.core.concepts import ConceptHalves, ConceptLabels, build_concept_labels, read_halves
    from interplm_plugins.core.inputs.uniprot import read_uniprot_files

    entries, _ = read_uniprot_files(_annotated_files(shared_data))
    labels = build_concept_labels(entries)
    halves = read_halves(DEMO_DIR / "concept_halves.tsv", labels.sequences)
    return ConceptHalves.from_splits(ConceptLabels(labels.concepts, labels.sequences, {p: labels.matrix(p) for p in labels.proteins}, halves))


@pytest.fixture(scope="module")
def shipped_report():
    return json.loads((REPO / "docs" / "demo_report.json").read_text())


@pytest.fixture(scope="module")
def recomputed_comparison(demo_halves):
    from interplm_plugins.core.concepts.report import compare_with_neurons

    return compare_with_neurons(load_pipeline(), demo_halves)


@pytest.fixture(scope="module")
def recomputed_summary(recomputed_comparison):
    return recomputed_comparison.summary()


def test_readme_words_on_the_concepts_found_are_the_recomputed_ones(recomputed_comparison, recomputed_summary):
    """The README's paragraph on what holds: counts, the neurons' F1 on the SAE's concepts, the share of tied resamples."""
    joined = recomputed_comparison.joined()
    found = joined[joined["sae_test_f1"] > 0.5]  # sorted by the SAE's test F1
    at = {c["f1_cutoff"]: c for c in recomputed_summary["concepts_found_by_cutoff"]}
    boot = {b["f1_cutoff"]: b for b in recomputed_summary["bootstrap_over_test_proteins"]["sae_minus_neurons_concepts_found"]}
    words = " ".join((REPO / "README.md").read_text().split())
    assert f"At InterPLM's F1 > 0.5 the SAE finds {len(found)} concepts" in words
    assert f"against {at[0.5]['neurons']} for single neurons" in words
    assert "the neurons' best F1 on the same concepts: " + ", ".join(f"{f:.2f}" for f in found["neuron_test_f1"]) + ")" in words
    assert f"and as many in {boot[0.5]['share_tied']:.0%}".replace("%", " %") in words
    assert f"At F1 > 0.3 the two are close ({at[0.3]['sae']} against {at[0.3]['neurons']})" in words
    assert (f"better on {recomputed_summary['concepts_where_sae_beats_neurons']} concepts, the neurons' on "
            f"{recomputed_summary['concepts_where_neurons_beat_sae']}") in words  # fmt: skip


def test_demo_database_matches_its_sae_and_evaluates_the_reports_concepts(shipped_report):
    pipeline = load_pipeline()
    db = pipeline.database
    assert db.provenance["sae_hash"] == pipeline.sae_hash and db.num_features == pipeline.num_features
    assert db.concept_floor == 0.2 and db.provenance["concept_selection"] == "validation"
    assert "mmseqs2" in db.provenance["concept_halves"] and "whole sequence clusters" in db.provenance["concept_halves"]
    evaluated = {name for name in db.concept_names() if db.concept_summary(name)["evaluated"]}
    assert evaluated == {row["concept"] for row in shipped_report["concepts"]}
    for name in evaluated:
        summary = db.concept_summary(name)
        assert summary["valid_proteins"] >= 3 and summary["test_proteins"] >= 3
    # Clusters ship with it, so the plugins' neighbour lists are filled.
    assert db.feature_info(0)["cluster"] is not None and len(db.cluster_neighbours(0, 5)) > 0 or db.feature_info(0)["cluster"] == -1


def test_shipped_report_covers_every_annotated_protein(shipped_report, demo_halves):
    """The README's SAE-vs-neuron numbers (docs/demo_report.json) use every annotated entry of ../shared/data, halved by clusters."""
    summary = shipped_report["summary"]
    assert summary["valid_proteins"] == len(demo_halves.valid.proteins) and summary["test_proteins"] == len(demo_halves.test.proteins)
    assert summary["valid_proteins"] + summary["test_proteins"] == 856
    assert summary["eligibility"] == ">= 3 proteins and >= 3 instances in each half" and "mmseqs2" in summary["halves"]
    assert summary["concepts_where_sae_beats_neurons"] + summary["concepts_where_neurons_beat_sae"] <= summary["concepts_evaluated"]


def test_shipped_report_is_reproduced(recomputed_summary, shipped_report):
    """Recomputed from the shipped pipeline and halves, the comparison equals docs/demo_report.json."""
    shipped = shipped_report["summary"]
    assert recomputed_summary.keys() == shipped.keys()
    for key, value in shipped.items():
        if key == "halves":  # the clustering's words; the halves themselves are the shipped file
            continue
        assert recomputed_summary[key] == (pytest.approx(value, abs=1e-3) if isinstance(value, float) else value), key


def _readme_table(title: str) -> dict[str, list[str]]:
    """The README's table whose header line contains ``title``: first cell -> the other cells."""
    lines = (REPO / "README.md").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|") and title in line)
    rows = {}
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        cells = [c.strip().strip("*") for c in line.strip("|").split("|")]
        rows[cells[0]] = cells[1:]
    return rows


def test_readme_concept_numbers_are_the_recomputed_ones(recomputed_summary):
    table = _readme_table("SAE features | best single neurons")
    at = {c["f1_cutoff"]: c for c in recomputed_summary["concepts_found_by_cutoff"]}
    for cutoff in (0.3, 0.4, 0.5, 0.6):
        row = next(cells for key, cells in table.items() if key.startswith(f"concepts with test F1 > {cutoff}"))
        assert row[:2] == [str(at[cutoff]["sae"]), str(at[cutoff]["neurons"])], cutoff
    wins = table["concepts where this unit type is better"]
    assert wins[:2] == [str(recomputed_summary["concepts_where_sae_beats_neurons"]), str(recomputed_summary["concepts_where_neurons_beat_sae"])]
    boot = {b["f1_cutoff"]: b for b in recomputed_summary["bootstrap_over_test_proteins"]["sae_minus_neurons_concepts_found"]}
    low, high = boot[0.5]["ci95"]
    readme = (REPO / "README.md").read_text()
    assert f"95 % interval of the difference is {low:+g} to {high:+g}" in readme
    assert f"finds more concepts at 0.5 in {boot[0.5]['share_sae_ahead']:.0%}" in readme.replace(" %", "%")
    words = " ".join(readme.split())
    assert f"in each half**: {recomputed_summary['concepts_evaluated']} of {recomputed_summary['concepts_in_vocabulary']}." in words
    assert f"all **{recomputed_summary['valid_proteins'] + recomputed_summary['test_proteins']}** annotated Swiss-Prot entries" in words
    db = load_pipeline().database
    assert f'"no concept match" ({len(db.best_concepts(range(db.num_features)))} of the {db.num_features:,} features have one)' in words


def test_sae_quality_numbers_are_recomputed_from_the_shipped_files(demo_halves, tmp_path):
    """FVE, L0, dead fraction and loss recovered on the concept test half (in neither the PLM's nor the SAE's training
    data), from the shipped PLM and SAE alone, equal what the model card and README state."""
    from interplm_plugins.core.inputs.sequences import ProteinRecord
    from interplm_plugins.core.sae.evaluate import held_out_quality
    from interplm_plugins.core.sae.files import load_sae

    held_out = [ProteinRecord(pid, seq) for pid, seq in demo_halves.labels("test").sequences.items()]
    quality = held_out_quality(load_plm("demo"), load_sae(DEMO_SAE), held_out, tmp_path / "emb")
    card = (DEMO_DIR / "MODEL_CARD.md").read_text()
    readme = (REPO / "README.md").read_text()
    fve, l0 = f"{quality['fraction_variance_explained']:.3f}", f"{quality['l0']:.0f}"
    dead, fidelity = f"{quality['dead_fraction']:.0%}", f"{quality['fidelity']:.3f}"
    for row in (f"| fraction of variance explained | {fve} |", f"| mean active features per residue (L0) | {l0} |",
                f"| dead features | {dead} |", f"| masked-LM loss recovered (1 = perfect, 0 = zero-ablation) | {fidelity} |"):
        assert row in card, row
    assert (f"fraction of variance explained {fve}, L0 {l0} features per residue, {dead.replace('%', ' %')} dead, "
            f"masked-LM loss recovered **{fidelity}**") in readme  # fmt: skip
    proteins, residues = quality["num_proteins_evaluated"], quality["num_residues_evaluated"]
    assert f"the {proteins} proteins of the concept test half ({residues:,} residues)" in " ".join(readme.split())
    assert f"Measured on the {residues:,} residues of the {proteins} proteins of the concept test half" in " ".join(card.split())


def test_fidelity_of_a_non_identity_sae_is_computed_by_hand(tiny_plm, tiny_sae_path, swissprot_fasta):
    """loss_recovered's fidelity equals (CE_zero - CE_sae) / (CE_zero - CE_clean) from three forward passes written out here."""
    from interplm_plugins.core.inputs.sequences import read_fasta
    from interplm_plugins.core.sae.evaluate import loss_recovered
    from interplm_plugins.core.sae.files import load_sae

    sae = load_sae(tiny_sae_path).eval()
    records = [r for r in read_fasta(swissprot_fasta) if len(r.sequence) < 300][:4]
    model, alphabet, layer = tiny_plm.model.eval(), tiny_plm.alphabet, sae.config.plm_layer
    got = loss_recovered(tiny_plm, sae, records, layer, max_proteins=None)
    rng = np.random.default_rng(0)  # loss_recovered's masking: 15% of each protein's residues, the same draws
    losses = {"clean": [], "sae": [], "zero": []}
    for record in records:
        _, _, tokens = alphabet.get_batch_converter()([(record.id, record.sequence)])
        n_mask = max(1, round(0.15 * len(record.sequence)))
        masked_at = torch.from_numpy(np.sort(rng.choice(len(record.sequence), size=n_mask, replace=False)) + 1)
        inputs = tokens.clone()
        inputs[0, masked_at] = alphabet.mask_idx
        for name, replace in (("clean", None), ("sae", lambda x: sae(x)[0]), ("zero", torch.zeros_like)):
            handle = None
            if replace is not None:
                def hook(module, args, output, replace=replace):
                    hidden = output[0] if isinstance(output, tuple) else output
                    new = hidden.clone()  # [T, B, D] inside fair-esm's layers; residues are rows 1..L
                    new[1:-1] = replace(hidden[1:-1].reshape(-1, hidden.shape[-1])).reshape(hidden[1:-1].shape)
                    return (new, *output[1:]) if isinstance(output, tuple) else new
                # the last layer's representation is the one after the final layer norm (fair-esm's repr_layers)
                module = model.emb_layer_norm_after if layer == model.num_layers else model.layers[layer - 1]
                handle = module.register_forward_hook(hook)
            with torch.no_grad():
                logits = model(inputs)["logits"][0, masked_at]
            if handle is not None:
                handle.remove()
            losses[name].append(torch.nn.functional.cross_entropy(logits, tokens[0, masked_at], reduction="sum").item())
    assert abs(got["fidelity"] - 1.0) > 0.01  # a real, imperfect SAE: this is no identity check
    assert got["fidelity"] == pytest.approx((sum(losses["zero"]) - sum(losses["sae"])) / (sum(losses["zero"]) - sum(losses["clean"])), rel=1e-4)


def _run_demo(tmp_path: Path, *args: str) -> tuple[str, Path]:
    """``interplm demo ARGS`` in a fresh process, as a user runs it: (its output, the page it wrote)."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "INTERPLM_CACHE_DIR": str(tmp_path / "cache")}
    result = subprocess.run([sys.executable, "-m", "interplm_plugins.cli", "-q", "demo", *args], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=900)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "interplm_demo/index.html" in result.stdout and "best concept" in result.stdout
    return result.stdout, tmp_path / "interplm_demo" / "index.html"


def _swissprot_entry_text(shared: Path, accession: str) -> str:
    """One entry of ../shared/data's Swiss-Prot flat file, as its own text."""
    import gzip

    entries = gzip.open(shared / "uniprot" / "swissprot_train.dat.gz", "rt").read().split("//\n")
    (entry,) = [e.lstrip("\n") for e in entries if f"\nAC   {accession};" in "\n" + e.lstrip("\n")]
    return entry + "//\n"


def test_shipped_demo_protein_is_the_shared_data_one(shared_data):
    """The structure and entry `interplm demo` ships are exactly ../shared/data's (attributed in the model card)."""
    from interplm_plugins.core.interpret.pipeline import DEMO_SHOWCASE_ENTRY, DEMO_SHOWCASE_STRUCTURE

    assert DEMO_SHOWCASE_STRUCTURE.read_bytes() == (shared_data / "structures" / "P32633_AF.pdb").read_bytes()
    assert DEMO_SHOWCASE_ENTRY.read_text() == _swissprot_entry_text(shared_data, "P32633")
    assert "CC BY 4.0" in (DEMO_DIR / "MODEL_CARD.md").read_text() and "MTC7_YEAST" in (DEMO_DIR / "MODEL_CARD.md").read_text()


def test_demo_shows_features_where_the_entry_annotates_their_concept(shared_data, tmp_path):
    """On ../shared/data's MTC7_YEAST model and entry, at least one shown feature's best concept is annotated there, and said so."""
    entry = tmp_path / "P32633.txt"
    entry.write_text(_swissprot_entry_text(shared_data, "P32633"))
    out, page = _run_demo(tmp_path, "--structure", str(shared_data / "structures" / "P32633_AF.pdb"), "--uniprot", str(entry))
    assert "annotated in MTC7_YEAST at 13-33, 42-62" in out or "annotated in MTC7_YEAST at 94-121" in out
    html = page.read_text()
    assert "the protein's UniProt entry annotates it at residues" in html and "P32633 MTC7_YEAST" in html


def test_interplm_demo_with_no_arguments(tmp_path):
    """What the README's first command runs, as a user runs it: a fresh process, no arguments."""
    _, page = _run_demo(tmp_path)
    html = page.read_text()
    images = re.findall(r'src="([^"]+\.png)"', html)
    assert len(images) >= 4
    assert "best Swiss-Prot concept match" in html
    import matplotlib.image as mpimg

    structure_pngs = [p for p in images if "profile" not in p]
    for name in structure_pngs:
        pixels = mpimg.imread(page.parent / name)[..., :3]
        colours = np.unique((pixels * 255).astype(np.uint8).reshape(-1, 3), axis=0)
        assert len(colours) > 100, name  # shaded, coloured structure, not a blank frame
        red = (pixels[..., 0] > 0.7) & (pixels[..., 1] < 0.4) & (pixels[..., 2] < 0.4)
        assert red.sum() > 50, name  # the feature's strongest residues are drawn red
