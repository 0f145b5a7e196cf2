"""``interplm steer``: clamp or scale one SAE feature inside ESM-2 and show how the predictions move."""

from __future__ import annotations

import argparse

from interplm_plugins.cli._ranges import parse_ranges
from interplm_plugins.errors import InterPLMError


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
    p.add_argument("--plm", help="ESM-2 checkpoint path or hub name (default: the embedded demo model)")
    p.add_argument("--sae", help="SAE file (default: the embedded demo SAE)")
    p.add_argument("--layer", type=int, help="layer the SAE reads (default: from the SAE's config)")
    p.add_argument("--top", type=int, default=3, help="tokens shown per column (default 3)")
    p.add_argument("--sample", type=int, default=0, metavar="N", help="also draw N steered sequences")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (default 1.0)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    p.set_defaults(run=run)


def parse_positions(text: str | None) -> list[int] | None:
    """``"10,11,15-17"`` -> ``[10, 11, 15, 16, 17]``; None stays None."""
    return None if text is None else parse_ranges(text, "--positions")


def _load(args: argparse.Namespace):
    from interplm_plugins.core.plm import load_plm
    from interplm_plugins.core.sae import load_sae

    if args.plm is None and args.sae is None:
        from interplm_plugins.core.activations import default_pipeline

        pipeline = default_pipeline()
        return pipeline.plm, pipeline.sae
    plm = load_plm(args.plm or "demo")
    if args.sae is None:
        from interplm_plugins.core.activations import default_pipeline

        return plm, default_pipeline().sae
    return plm, load_sae(args.sae)


def run(args: argparse.Namespace) -> int:
    import torch

    from interplm_plugins.core.steer import sample_steered, steer

    torch.set_grad_enabled(False)
    plm, sae = _load(args)
    layer = args.layer if args.layer is not None else sae.config.plm_layer
    if layer is None:
        raise InterPLMError("the SAE's config does not name its layer; pass --layer")
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
