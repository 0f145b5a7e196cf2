"""fair-esm's ``esm-extract`` (``scripts/extract.py``), run as a user would, for the embedding benchmark.

Usage (the script's own arguments)::

    python benchmarks/esm_extract_ref.py MODEL.pt FASTA OUT_DIR --repr_layers L --include per_tok [--toks_per_batch 4096]

fair-esm loads a local checkpoint with ``torch.load`` under torch's ``weights_only`` default,
which refuses the ``argparse.Namespace`` in fair-esm checkpoints; allowlisting it is the one
change made here. When ``esm.scripts.extract`` is installed (fair-esm from its git repository,
which has the ``esm-extract`` console script) it is called unchanged. The PyPI wheel of fair-esm
2.0.0 does not ship the script, so otherwise :func:`run` follows its procedure step by step with
fair-esm's own pieces: ``pretrained.load_model_and_alphabet``, ``FastaBatchedDataset`` with
``get_batch_indices(toks_per_batch, extra_toks_per_seq=1)``, a ``DataLoader`` with
``alphabet.get_batch_converter(truncation_seq_length)``, the full ``model(toks, repr_layers=...)``
forward pass under ``torch.no_grad``, and one ``torch.save`` per protein of
``{"label": ..., "representations": {layer: tensor[1 : len + 1].clone()}}``.

Prints one JSON line ``{"load_s": ..., "extract_s": ..., "implementation": ...}`` at the end.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

import torch

torch.serialization.add_safe_globals([argparse.Namespace])


def create_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="esm-extract's procedure (see the module docstring)")
    p.add_argument("model_location")
    p.add_argument("fasta_file", type=pathlib.Path)
    p.add_argument("output_dir", type=pathlib.Path)
    p.add_argument("--toks_per_batch", type=int, default=4096)
    p.add_argument("--repr_layers", type=int, default=[-1], nargs="+")
    p.add_argument("--include", type=str, nargs="+", choices=["mean", "per_tok", "bos", "contacts"], required=True)
    p.add_argument("--truncation_seq_length", type=int, default=1022)
    p.add_argument("--nogpu", action="store_true")
    return p


def run(args: argparse.Namespace) -> dict[str, float]:
    from esm import FastaBatchedDataset, pretrained

    start = time.perf_counter()
    model, alphabet = pretrained.load_model_and_alphabet(args.model_location)
    model.eval()
    use_gpu = torch.cuda.is_available() and not args.nogpu
    if use_gpu:
        model = model.cuda()
    loaded = time.perf_counter()
    dataset = FastaBatchedDataset.from_file(args.fasta_file)
    batches = dataset.get_batch_indices(args.toks_per_batch, extra_toks_per_seq=1)
    loader = torch.utils.data.DataLoader(
        dataset, collate_fn=alphabet.get_batch_converter(args.truncation_seq_length), batch_sampler=batches
    )
    args.output_dir.mkdir(parents=True, exist_ok=True)
    return_contacts = "contacts" in args.include
    layers = [(i + model.num_layers + 1) % (model.num_layers + 1) for i in args.repr_layers]
    with torch.no_grad():
        for labels, strs, toks in loader:
            if use_gpu:
                toks = toks.to(device="cuda", non_blocking=True)
            out = model(toks, repr_layers=layers, return_contacts=return_contacts)
            out["logits"].to(device="cpu")
            reps = {layer: t.to(device="cpu") for layer, t in out["representations"].items()}
            for i, label in enumerate(labels):
                n = min(args.truncation_seq_length, len(strs[i]))
                result: dict = {"label": label}
                if "per_tok" in args.include:
                    result["representations"] = {layer: t[i, 1 : n + 1].clone() for layer, t in reps.items()}
                if "mean" in args.include:
                    result["mean_representations"] = {layer: t[i, 1 : n + 1].mean(0).clone() for layer, t in reps.items()}
                if "bos" in args.include:
                    result["bos_representations"] = {layer: t[i, 0].clone() for layer, t in reps.items()}
                if return_contacts:
                    result["contacts"] = out["contacts"][i, :n, :n].cpu().clone()
                torch.save(result, args.output_dir / f"{label}.pt")
    return {"load_s": loaded - start, "extract_s": time.perf_counter() - loaded}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        from esm.scripts import extract as upstream  # fair-esm installed from git: the script itself
    except ImportError:
        upstream = None
    if upstream is not None:
        start = time.perf_counter()
        upstream.run(upstream.create_parser().parse_args(argv))
        timing = {"load_s": 0.0, "extract_s": time.perf_counter() - start, "implementation": "esm.scripts.extract"}
    else:
        timing = {**run(create_parser().parse_args(argv)), "implementation": "fair-esm 2.0.0 pieces, esm-extract's procedure"}
    print(json.dumps(timing))
    return 0


if __name__ == "__main__":
    sys.exit(main())
