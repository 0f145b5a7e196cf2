"""``interplm steer``: clamp or scale one SAE feature inside ESM-2 and show how the predictions move."""

from __future__ import annotations

import argparse

from interplm_plugins.cli._common import add_pipeline_options, load_pipeline_from_args
from interplm_plugins.cli._ranges import parse_ranges


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "steer",
        help="clamp or scale an SAE feature inside ESM-2 and compare masked-token predictions",
        description=(
            "At the SAE's layer, encode the residual stream, set (--value) or scale (--scale) one feature at the "
            "chosen residues, and add the decoder-direction change; print, per residue, the predicted tokens "
            "before and after, the largest probability gains and the KL divergence. --sample draws sequences by "
            "iterative masked resampling of those residues while steering."
        ),
    )
    p.add_argument("sequence", help="protein sequence (one-letter codes)")
    p.add_argument("--feature", type=int, required=True, help="SAE feature index")
    how = p.add_mutually_exclusive_group(required=True)
    how.add_argument("--value", type=float, help="clamp the feature to this activation")
    how.add_argument("--scale", type=float, help="multiply the feature's activation by this factor")
    p.add_argument("--positions", help="1-based residues to steer, e.g. 10,11,12 or 10-12 (default: all)")
    p.add_argument("--mask", action="store_true", help="mask the steered residues, so the model predicts them from context")
    add_pipeline_options(p, database=False, normalize=False)
    p.add_argument("--top", type=int, default=3, help="tokens shown per column (default 3)")
    p.add_argument("--sample", type=int, default=0, metavar="N", help="also draw N steered sequences")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (default 1.0)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    p.set_defaults(run=run)


def parse_positions(text: str | None) -> list[int] | None:
    """``"10,11,15-17"`` -> ``[10, 11, 15, 16, 17]``; None stays None."""
    return None if text is None else parse_ranges(text, "--positions")


def run(args: argparse.Namespace) -> int:
    import torch

    # Scoped, not torch.set_grad_enabled(False): the CLI also runs in-process (tests, scripts).
    with torch.no_grad():
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    from interplm_plugins.core.interpret.steer import sample_steered, steer

    pipeline = load_pipeline_from_args(args, require_normalized=False)  # steering reads any SAE's units
    plm, sae, layer = pipeline.plm, pipeline.sae, pipeline.layer
    positions = parse_positions(args.positions)
    result = steer(plm, sae, layer, args.sequence, args.feature, value=args.value, scale=args.scale, positions=positions, mask=args.mask)
    how = f"clamped to {args.value:g}" if args.value is not None else f"scaled by {args.scale:g}"
    print(f"feature {result.feature} {how} at layer {layer} of {plm.name}{' (residues masked)' if args.mask else ''}")
    print(result.table(k=args.top))
    if args.sample > 0:
        samples = sample_steered(
            plm, sae, layer, args.sequence, args.feature, result.positions,
            value=args.value, scale=args.scale, n=args.sample, temperature=args.temperature, seed=args.seed,
        )  # fmt: skip
        print()
        for i, seq in enumerate(samples, 1):
            print(f"sample {i} {seq}")
    return 0
