#!/usr/bin/env python
"""Build the embedded default's SAE, feature database and report with the project's own command line.

Run after ``scripts/train_demo_plm.py`` (which writes the demo PLM into the package):

    python scripts/build_demo.py --data ../shared/data

Steps (each an ``interplm`` subcommand, so this is also the worked example of the README):
concepts (Swiss-Prot labels) -> embed (training-split proteins of both FASTA files) -> train (ReLU
SAE) -> normalize -> build-db (all Swiss-Prot proteins, concept matches chosen on validation and
scored on test) -> report (SAE features vs neurons). Work files go to runs/demo/; what ships goes
to src/interplm_plugins/data/demo/ and the report's numbers to docs/demo_report.json.
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
    p.add_argument("--l1", type=float, default=0.06)
    p.add_argument("--steps", type=int, default=6000)
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--top-k", type=int, default=8)
    args = p.parse_args()
    work, model = args.work, str(DEMO / f"{DEMO_MODEL_NAME}.pt")
    work.mkdir(parents=True, exist_ok=True)

    swissprot_dat = args.data / "uniprot" / "swissprot_train.dat.gz"
    fastas = [args.data / "sequences" / "swissprot_train.fasta", args.data / "sequences" / "mmseqs2_examples_QUERY_500.fasta"]
    records = [r for f in fastas for r in read_fasta(f)]
    write_fasta([r for r in records if protein_split(r.id) == "train"], work / "train.fasta")

    step("-q", "concepts", str(swissprot_dat), "--out", str(work / "concepts"))
    step("-q", "embed", str(work / "train.fasta"), "--model", model, "--layer", str(args.layer), "--out", str(work / "emb"))
    step("-q", "train", str(work / "emb"), "--out", str(work / "sae"), "--width", str(args.width), "--l1", str(args.l1),
         "--steps", str(args.steps), "--batch-size", str(args.batch_size), "--warmup", "300")  # fmt: skip
    step("-q", "normalize", str(work / "sae" / "sae.safetensors"), "--store", str(work / "emb"), "--out", str(DEMO / "sae.safetensors"))
    step("-q", "evaluate", str(DEMO / "sae.safetensors"), "--store", str(work / "emb"), "--fasta", str(work / "concepts" / "proteins.fasta"),
         "--model", model, "--json")  # fmt: skip
    step("-q", "build-db", str(work / "concepts" / "proteins.fasta"), "--model", model, "--sae", str(DEMO / "sae.safetensors"),
         "--concepts", str(work / "concepts"), "--top-k", str(args.top_k), "--out", str(DEMO / "features.sqlite"))  # fmt: skip
    step("-q", "report", "--concepts", str(work / "concepts"), "--model", model, "--sae", str(DEMO / "sae.safetensors"), "--out", str(work / "report"))

    report = json.loads((work / "report" / "report.json").read_text())
    write_text_atomic(REPO / "docs" / "demo_report.json", json.dumps(report, indent=1))
    shutil.copyfile(work / "report" / "f1_distribution.png", REPO / "docs" / "images" / "demo_f1_distribution.png") if (REPO / "docs" / "images").is_dir() else None
    print(json.dumps(report["summary"], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
