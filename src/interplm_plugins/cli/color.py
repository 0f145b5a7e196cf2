"""``interplm color``: a structure coloured by one SAE feature, rendered to PNG by headless PyMOL."""

from __future__ import annotations

import argparse

from interplm_plugins.cli._common import add_pipeline_options, add_precision_option, load_pipeline_from_args
from interplm_plugins.core.interpret.colorscale import DEFAULT_SCALE, SCALES
from interplm_plugins.errors import InterPLMError


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "color",
        help="render a structure coloured by one SAE feature to a PNG (headless PyMOL)",
        description=(
            "Embed every protein chain of the structure with the model, colour each residue by the feature's "
            "normalised activation (0 to 1 along the palette; grey where a residue has no value: ligands, water, "
            "residues that do not align to --uniprot) and ray-trace the picture, with a legend, as PyMOL's "
            "`interplm color` command does."
        ),
    )
    p.add_argument("structure", help="PDB or mmCIF file")
    p.add_argument("--feature", type=int, required=True, help="SAE feature index")
    p.add_argument("--out", required=True, help="PNG file to write")
    p.add_argument("--chain", help="colour only this chain (the others are drawn light grey)")
    p.add_argument("--uniprot", help="full-length sequence(s) to embed: a FASTA file (one record per protein of a complex) or one sequence; "
                   "each chain is aligned to the record it matches, chains matching none stay grey")
    p.add_argument("--palette", default=None, help="PyMOL spectrum palette or colours joined by _ (default white_red)")
    p.add_argument("--scale", choices=SCALES, default=DEFAULT_SCALE, help="colours over 0..1 of the feature (default) or each chain's own maximum")
    p.add_argument("--width", type=int, default=800, help="image width in pixels (default 800)")
    p.add_argument("--height", type=int, default=600, help="image height in pixels, legend included (default 600)")
    p.add_argument("--no-legend", action="store_true", help="picture only, no legend strip")
    add_pipeline_options(p)
    add_precision_option(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    try:
        from interplm_plugins.pymol_plugin.mapping import DEFAULT_PALETTE
        from interplm_plugins.pymol_plugin.render import render_feature_png
    except ImportError as exc:
        if getattr(exc, "name", "") and str(exc.name).startswith(("pymol", "pymol2")):
            raise InterPLMError('PyMOL is not installed: pip install "interplm-plugins[pymol]"') from None
        raise
    pipeline = load_pipeline_from_args(args)
    result = render_feature_png(
        args.structure, args.feature, args.out, chain=args.chain, reference=args.uniprot, palette=args.palette or DEFAULT_PALETTE, scale=args.scale,
        width=args.width, height=args.height, pipeline=pipeline, legend=not args.no_legend,
    )  # fmt: skip
    peak = f", max {result['max']:.3f} at {result['peak']}" if result["mapped"] else ""
    concept = f" [{result['best_concept_label']}]"
    print(f"{result['png']}: feature {result['feature']}{concept} on {result['mapped']} residues{peak}")
    if result["references"]:
        print(f"{args.structure}: {result['references']}")
    return 0
