#!/usr/bin/env python
"""Train the embedded demo protein language model: ESM-2's architecture, trained here on real proteins.

Real ESM-2 weights cannot be downloaded on this project's machines, and a randomly initialised
network holds no biology, so the embedded default is a small ``esm.model.esm2.ESM2`` trained with
ESM's masked-LM objective (15% of residues; 80% <mask>, 10% random, 10% unchanged). It is saved in
fair-esm's own checkpoint format (fp16 weights, ``cfg.model`` an ``argparse.Namespace``) so
``esm.pretrained.load_model_and_alphabet_local`` loads it.

Data: the 111,579 proteins of ``../shared/data/sequences/corpus`` plus the Swiss-Prot FASTA files
and annotated entries, one record per distinct sequence, clustered by MMseqs2 linclust at 50%
identity (UniRef50's line, as ESM-2's validation clusters). Held out whole: every cluster holding a
protein of the concept evaluation's test half (``concept_halves.tsv``), so neither the test proteins
nor their close homologs are trained on, and 1% of the other clusters. Reported: masked-LM
perplexity (``core.sae.evaluate.masked_lm_loss``, 15% masked, seed 0) of the saved checkpoint on up to
1,000 never-seen-cluster proteins and on the concept test half, each beside the unigram baseline
(training amino-acid frequencies); the scored proteins go to ``<name>_held_out.tsv`` so
``tests/test_demo.py`` recomputes both. Resumable: rerun the same command after an interruption.

    python scripts/train_demo_plm.py --precision bf16 --steps 2800 --out src/interplm_plugins/data/demo
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import random
import sys
import time
from collections import Counter
from pathlib import Path

import torch
import torch.nn.functional as F
from esm.data import Alphabet

from interplm_plugins.core.allocator import keep_freed_memory
from interplm_plugins.core.atomic import atomic_path, write_text_atomic
from interplm_plugins.core.inputs.homology import SequenceClusters, cluster_sequences, stable_hash
from interplm_plugins.core.inputs.sequences import ProteinRecord, read_fasta
from interplm_plugins.core.plm.model import PLM, new_esm2, save_esm2_checkpoint
from interplm_plugins.core.sae.evaluate import masked_lm_loss

STANDARD = "ACDEFGHIKLMNPQRSTVWY"


#: Identity and coverage of the PLM's held-out line: UniRef50's 50%, as ESM-2's validation clusters.
PLM_MIN_SEQ_ID, PLM_COVERAGE = 0.5, 0.8
#: Share of the clusters (by a hash of the representative) held out as never-seen clusters.
UNSEEN_CLUSTER_FRACTION = 0.01
#: Held-out proteins scored per set (the first by a hash of their id): enough for a perplexity to 2 decimals.
EVAL_PROTEINS = 1000


def corpus_records(data_dir: Path) -> list[ProteinRecord]:
    """Every protein of ``sequences/corpus/*.fasta.gz``, the Swiss-Prot FASTA files and the annotated entries, one record per distinct sequence."""
    from interplm_plugins.core.inputs.uniprot import read_uniprot

    # Annotated entries first: where the corpus holds the same sequence under another id, the
    # accession the concept halves name is the one kept.
    records: list[ProteinRecord] = []
    more = data_dir / "uniprot" / "more"
    for entries in (data_dir / "uniprot" / "swissprot_train.dat.gz", *sorted(more.glob("*.dat.gz")), *sorted(more.glob("*.json.gz"))):
        records += [ProteinRecord(e.accession, e.sequence) for e in read_uniprot(entries)]
    for fasta in [*sorted((data_dir / "sequences").glob("*.fasta")), *sorted((data_dir / "sequences" / "corpus").glob("*.fasta.gz"))]:
        records += read_fasta(fasta)
    seen_seq: dict[str, str] = {}
    seen_id: set[str] = set()
    unique: list[ProteinRecord] = []
    for rec in records:
        if rec.sequence in seen_seq or rec.id in seen_id:
            continue
        seen_seq[rec.sequence] = rec.id
        seen_id.add(rec.id)
        unique.append(rec)
    return unique


def split_by_clusters(records: list[ProteinRecord], test_half: set[str], work: Path) -> dict[str, str]:
    """Protein id -> ``train``, ``unseen_clusters`` or ``swissprot_test``, by whole MMseqs2 clusters at 50% identity.

    A cluster holding a protein of the concept evaluation's test half (``concept_halves.tsv``) is
    held out whole, so no test protein and no close homolog of one is trained on; 1% of the other
    clusters are held out as clusters the model never saw. The clustering is cached in ``work``.
    """
    cache = work / "clusters_50.tsv"
    if cache.exists():
        clusters = SequenceClusters.load(cache)
    else:
        t = time.time()
        clusters = cluster_sequences(records, min_seq_id=PLM_MIN_SEQ_ID, coverage=PLM_COVERAGE, linear=True)
        clusters.save(cache)
        print(f"clustered {len(records)} proteins into {len(clusters.members())} clusters in {time.time() - t:.0f} s ({clusters.method})", flush=True)
    split: dict[str, str] = {}
    for rep, members in clusters.members().items():
        if any(m in test_half for m in members):
            name = "swissprot_test"
        elif stable_hash(f"plm-unseen\0{rep}") / 2**64 < UNSEEN_CLUSTER_FRACTION:
            name = "unseen_clusters"
        else:
            name = "train"
        split.update(dict.fromkeys(members, name))
    return split


def eval_set(records: list[ProteinRecord], split: dict[str, str], name: str, only: set[str] | None = None) -> list[ProteinRecord]:
    """Up to :data:`EVAL_PROTEINS` proteins of one held-out set (of ``only`` among them, if given), the first by a hash of their id."""
    chosen = sorted((r for r in records if split[r.id] == name and (only is None or r.id in only)), key=lambda r: stable_hash(r.id))
    return chosen[:EVAL_PROTEINS]


def mask_tokens(tokens: torch.Tensor, alphabet: Alphabet, gen: torch.Generator, rate: float = 0.15):
    """ESM's BERT-style corruption; returns (corrupted tokens, targets with -100 where not scored)."""
    residue = (tokens != alphabet.padding_idx) & (tokens != alphabet.cls_idx) & (tokens != alphabet.eos_idx)
    chosen = (torch.rand(tokens.shape, generator=gen) < rate) & residue
    targets = torch.where(chosen, tokens, torch.full_like(tokens, -100))
    roll = torch.rand(tokens.shape, generator=gen)
    corrupted = tokens.clone()
    corrupted[chosen & (roll < 0.8)] = alphabet.mask_idx
    aa_idx = torch.tensor([alphabet.get_idx(a) for a in STANDARD])
    random_tok = aa_idx[torch.randint(len(STANDARD), tokens.shape, generator=gen)]
    swap = chosen & (roll >= 0.8) & (roll < 0.9)
    corrupted[swap] = random_tok[swap]
    return corrupted, targets


def encode(batch: list[str], alphabet: Alphabet) -> torch.Tensor:
    _, _, toks = alphabet.get_batch_converter()([(str(i), s) for i, s in enumerate(batch)])
    return toks


def amino_acid_counts(train: list[str]) -> dict[str, int]:
    """Letter counts of the training sequences, add-one smoothed over the 25 letters ESM reads."""
    counts = Counter(dict.fromkeys(STANDARD + "XUOBZ", 1))
    for seq in train:
        counts.update(seq)
    return dict(sorted(counts.items()))


def unigram_perplexity(counts: dict[str, int], held_out: list[str]) -> float:
    """Perplexity of held-out residues under the training amino-acid frequencies (the no-context baseline)."""
    n = sum(counts.values())
    nll = sum(-math.log(counts.get(a, 1) / n) for seq in held_out for a in seq)
    return math.exp(nll / sum(map(len, held_out)))


def plm_split(data: Path, halves: Path, work: Path) -> tuple[list[ProteinRecord], dict[str, str], dict[str, list[ProteinRecord]]]:
    """The corpus, each protein's PLM split (see :func:`split_by_clusters`) and the scored held-out sets."""
    records = corpus_records(data)
    rows = [line.split("\t") for line in halves.read_text().splitlines()[1:] if line]
    test_half = {pid for pid, half in rows if half == "test"}
    split = split_by_clusters(records, test_half, work)
    # Scored: never-seen clusters, and exactly the concept test half (not its cluster mates).
    eval_sets = {"unseen_clusters": eval_set(records, split, "unseen_clusters"),
                 "swissprot_test": eval_set(records, split, "swissprot_test", only=test_half)}
    return records, split, eval_sets


def measure_held_out(checkpoint: Path, eval_sets: dict[str, list[ProteinRecord]], counts: dict[str, int]) -> dict[str, dict]:
    """Masked-LM perplexity of the saved checkpoint on each held-out set (core.sae.evaluate.masked_lm_loss, seed 0), with the unigram baseline."""
    from interplm_plugins.core.plm.loading import load_plm

    plm = load_plm(checkpoint)
    held_out = {}
    for name, recs in eval_sets.items():
        nll, masked = masked_lm_loss(plm, recs, seed=0)
        held_out[name] = {"proteins": len(recs), "residues": sum(len(r.sequence) for r in recs), "masked_residues": masked,
                          "perplexity": round(math.exp(nll), 3),
                          "unigram_perplexity": round(unigram_perplexity(counts, [r.sequence[:1022] for r in recs]), 3)}
        print(f"{name}: masked-LM perplexity {held_out[name]['perplexity']:.2f} (unigram baseline {held_out[name]['unigram_perplexity']:.2f})", flush=True)
    return held_out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=Path("../shared/data"), help="the shared data folder (sequences/corpus, sequences, uniprot)")
    p.add_argument("--out", type=Path, default=Path("src/interplm_plugins/data/demo"))
    p.add_argument("--halves", type=Path, default=Path("src/interplm_plugins/data/demo/concept_halves.tsv"),
                   help="the concept evaluation's halves: clusters of its test half are never trained on")
    p.add_argument("--name", default="esm2_t4_3M_interplm_demo")
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--heads", type=int, default=16)
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--crop", type=int, default=254, help="residues per training crop")
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                   help="bf16: matmuls under torch.autocast(bfloat16), fp32 master weights and loss (AVX-512 bf16 CPUs, GPUs)")
    p.add_argument("--device", default="cpu", help="cpu (the recipe's budget) or cuda, for recipe studies on a GPU")
    p.add_argument("--eval-every", type=int, default=0, help="also log held-out perplexity every N steps (0: only at the end)")
    p.add_argument("--max-minutes", type=float, default=60.0, help="stop early (and say so) past this")
    p.add_argument("--measure-only", action="store_true", help="only measure the saved checkpoint's held-out perplexities again")
    p.add_argument("--work", type=Path, default=Path("runs/demo_plm"), help="resumable training state")
    args = p.parse_args(argv)

    keep_freed_memory()  # 2x on CPU: without it every step faults its activations' pages in afresh
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    torch.set_num_threads(args.threads)
    alphabet = Alphabet.from_architecture("ESM-1b")
    args.work.mkdir(parents=True, exist_ok=True)
    records, split, eval_sets = plm_split(args.data, args.halves, args.work)
    train = [r.sequence for r in records if split[r.id] == "train"]
    counts = {name: sum(1 for v in split.values() if v == name) for name in ("train", "unseen_clusters", "swissprot_test")}
    if args.measure_only:
        info_file = args.out / f"{args.name}.json"
        info = json.loads(info_file.read_text())
        info["training_amino_acid_counts"] = info.get("training_amino_acid_counts") or amino_acid_counts(train)
        info["held_out"] = measure_held_out(args.out / f"{args.name}.pt", eval_sets, info["training_amino_acid_counts"])
        write_text_atomic(info_file, json.dumps(info, indent=1))
        return 0
    print(f"proteins {counts} ({sum(map(len, train)):,} training residues); scored: "
          + ", ".join(f"{k} {len(v)}" for k, v in eval_sets.items()), flush=True)
    autocast = torch.autocast(args.device.split(":")[0], dtype=torch.bfloat16, enabled=args.precision == "bf16")

    device = torch.device(args.device)
    model = new_esm2(args.layers, args.dim, args.heads, seed=args.seed).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.98), weight_decay=0.01)
    lr_at = lambda s: args.lr * min(1.0, (s + 1) / args.warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, s / args.steps))))
    gen = torch.Generator().manual_seed(args.seed)
    rng = random.Random(args.seed)
    # Proteins drawn in proportion to their length (cumulative weights built once: 111k proteins).
    cum_weights = list(itertools.accumulate(len(s) for s in train))
    start_step = 0
    args.work.mkdir(parents=True, exist_ok=True)
    state_file = args.work / "state.pt"
    st: dict = {}
    if state_file.exists():
        st = torch.load(state_file, weights_only=True, map_location=device)
        model.load_state_dict(st["model"]); opt.load_state_dict(st["opt"])
        gen.set_state(st["gen"]); rng.setstate(st["rng"]); start_step = st["step"]
        print(f"resumed at step {start_step}", flush=True)
    # Minutes and loss log of earlier sittings travel in the state, so the model card reports the
    # whole training, not the last sitting.
    earlier_minutes = float(st.get("minutes", 0.0)) if start_step else 0.0
    log = list(st.get("log", [])) if start_step else []
    t0 = time.time() - 60 * earlier_minutes
    step = start_step
    for step in range(start_step, args.steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        batch = []
        for s in rng.choices(train, cum_weights=cum_weights, k=args.batch):
            if len(s) > args.crop:
                off = rng.randrange(len(s) - args.crop + 1)
                s = s[off : off + args.crop]
            batch.append(s)
        toks = encode(batch, alphabet)
        corrupted, targets = (t.to(device) for t in mask_tokens(toks, alphabet, gen))
        with autocast:
            logits = model(corrupted)["logits"]
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1), ignore_index=-100)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % 50 == 0:
            el = time.time() - t0
            print(f"step {step} loss {loss.item():.3f} lr {lr_at(step):.2e} elapsed {el/60:.2f} min", flush=True)
            log.append({"step": step, "loss": round(loss.item(), 4)})
        if args.eval_every and step % args.eval_every == args.eval_every - 1:
            # The same measure as the final one (core.sae.evaluate.masked_lm_loss), on the training weights.
            nll, _ = masked_lm_loss(PLM(model, alphabet, args.name, str(state_file), "training"), eval_sets["unseen_clusters"], seed=0)
            model.train()  # masked_lm_loss leaves the model in eval mode
            ppl_now = math.exp(nll)
            print(f"step {step + 1} unseen-cluster perplexity {ppl_now:.3f}", flush=True)
            log.append({"step": step + 1, "unseen_clusters_perplexity": round(ppl_now, 3)})
        if step % 250 == 249:
            with atomic_path(state_file) as tmp:
                torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "gen": gen.get_state(),
                            "rng": rng.getstate(), "step": step + 1, "minutes": (time.time() - t0) / 60, "log": log}, tmp)
        if (time.time() - t0) / 60 > args.max_minutes:
            print(f"stopping early at step {step + 1}: --max-minutes {args.max_minutes} reached", flush=True)
            break
    steps_done = step + 1

    args.out.mkdir(parents=True, exist_ok=True)
    path = save_esm2_checkpoint(model.cpu(), args.out / f"{args.name}.pt")
    aa_counts = amino_acid_counts(train)
    held_out = measure_held_out(path, eval_sets, aa_counts)
    # The scored proteins ship, so tests/test_demo.py recomputes both perplexities from the checkpoint.
    write_text_atomic(args.out / f"{args.name}_held_out.tsv",
                      "protein_id\tset\n" + "".join(f"{r.id}\t{name}\n" for name, recs in eval_sets.items() for r in recs))
    metrics = {
        "name": args.name, "architecture": "fair-esm ESM2", "layers": args.layers, "embed_dim": args.dim,
        "attention_heads": args.heads, "parameters": sum(p.numel() for p in model.parameters()),
        "steps": steps_done, "batch": args.batch, "crop": args.crop, "lr": args.lr, "seed": args.seed,
        "precision": args.precision, "device": args.device, "threads": args.threads,
        "training_proteins": len(train), "training_residues": sum(map(len, train)),
        "training_tokens_seen": steps_done * args.batch * args.crop,
        "held_out_clusters_proteins": counts["unseen_clusters"], "held_out_swissprot_test_proteins": counts["swissprot_test"],
        "split": f"MMseqs2 easy-linclust clusters at {PLM_MIN_SEQ_ID:g} identity, {PLM_COVERAGE:g} coverage; clusters with a "
                 f"concept test-half protein and {UNSEEN_CLUSTER_FRACTION:.0%} of the others held out whole",
        "training_amino_acid_counts": aa_counts, "held_out": held_out, "train_minutes": round((time.time() - t0) / 60, 1),
        "data": "../shared/data: sequences/corpus/*.fasta.gz, sequences/*.fasta, uniprot annotated entries; one record per distinct sequence",
        "loss_log": log,
    }
    write_text_atomic(args.out / f"{args.name}.json", json.dumps(metrics, indent=1))
    print(f"wrote {path}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
