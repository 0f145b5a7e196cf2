"""``interplm demo``: the embedded default on a real structure, rendered with PyMOL, summarised in HTML."""

from __future__ import annotations

from pathlib import Path

from interplm_plugins.cli._common import add_pipeline_options, load_pipeline_from_args
from interplm_plugins.cli._ranges import parse_ranges


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "demo",
        help="color a real structure by informative SAE features (offline, embedded default)",
        description=(
            "Load the embedded demo model, SAE and feature database (or those given), run them on a real structure "
            "(default: MTC7_YEAST, an AlphaFold model shipped with its Swiss-Prot entry), choose informative features "
            "(first those whose best concept the protein's UniProt entry annotates), render PNG images of the "
            "structure colored by each with headless PyMOL, plot activations along the sequence above the entry's "
            "annotation of the feature's concept, and write an HTML summary."
        ),
    )
    p.add_argument("--structure", help="PDB/mmCIF file (default: the shipped MTC7_YEAST AlphaFold model)")
    p.add_argument("--uniprot", help="UniProt entry of the structure's protein (flat text, XML or JSON; default: the shipped one "
                                     "for the default structure, none otherwise)")  # fmt: skip
    p.add_argument("--chain", help="chain to analyse (default: the first protein chain)")
    p.add_argument("--features", help="features to show, e.g. 12,40 (default: chosen automatically)")
    p.add_argument("-k", type=int, default=3, help="how many features to choose (default 3)")
    p.add_argument("--out", default="interplm_demo", help="output folder (default ./interplm_demo)")
    p.add_argument("--width", type=int, default=900)
    p.add_argument("--height", type=int, default=700)
    add_pipeline_options(p)
    p.set_defaults(run=run)


def run(args) -> int:
    from interplm_plugins.core.database.schema import concept_label
    from interplm_plugins.core.inputs.structure import read_structure
    from interplm_plugins.core.inputs.uniprot import read_uniprot
    from interplm_plugins.core.interpret.chains import chain_activations
    from interplm_plugins.core.interpret.pipeline import DEMO_SHOWCASE_ENTRY, DEMO_SHOWCASE_STRUCTURE
    from interplm_plugins.core.interpret.showcase import (
        FeatureShowcase,
        activation_profile_png,
        annotated_concepts,
        informative_features,
        runs_on_residues,
        write_html_summary,
    )
    from interplm_plugins.errors import InterPLMError
    from interplm_plugins.pymol_plugin.render import render_feature_png

    out = Path(args.out)
    structure = Path(args.structure) if args.structure else DEMO_SHOWCASE_STRUCTURE
    entry_path = args.uniprot or (None if args.structure else DEMO_SHOWCASE_ENTRY)
    entries = read_uniprot(entry_path) if entry_path else []
    if len(entries) > 1:
        raise InterPLMError(f"--uniprot: give one entry, the structure's protein (the file has {len(entries)})", file=entry_path)
    entry = entries[0] if entries else None
    pipeline = load_pipeline_from_args(args)
    chains = read_structure(structure)
    chain = chains[0] if args.chain is None else next((c for c in chains if c.chain_id == args.chain), None)
    if chain is None:
        raise InterPLMError(f"no protein chain {args.chain!r} (chains: {', '.join(c.chain_id for c in chains)})", file=structure)
    print(f"{structure.name}: chain {chain.chain_id}, {len(chain)} residues; model {pipeline.plm.name}, layer {pipeline.layer}, "
          f"{pipeline.num_features} SAE features")  # fmt: skip
    # With the entry, its full sequence is embedded and the chain aligned to it, so annotation and activations share positions.
    mapped = chain_activations(pipeline, chain, reference=entry.sequence if entry else None, source=str(structure))
    annotation = annotated_concepts(entry) if entry else {}
    db = pipeline.database
    features = (
        parse_ranges(args.features, "--features") if args.features
        else informative_features(mapped.activations, k=args.k, database=db, annotated=annotation)
    )  # fmt: skip
    best = db.best_concepts(features) if db is not None else {}
    labels = [f"{r.resn}{r.label}" for r in chain.residues]
    showcases = []
    for feature in features:
        pipeline.check_feature(feature)
        match = best.get(feature)
        show = FeatureShowcase(
            feature, mapped.feature_values(feature), match.concept if match else None, match.f1 if match else None,
            db.description(feature) if db is not None else None, concept_label=concept_label(match),
        )  # fmt: skip
        if match is not None and match.concept in annotation:
            show.annotated = runs_on_residues(annotation[match.concept], mapped.positions)
            numbers = [r.label for r in chain.residues]
            show.annotated_where = ", ".join(numbers[a] if a == b else f"{numbers[a]}-{numbers[b]}" for a, b in show.annotated)
        image = out / f"feature_{feature}_{structure.stem}.png"
        render_feature_png(structure, feature, image, pipeline=pipeline, width=args.width, height=args.height)
        show.images[f"{structure.name} colored by feature {feature} (blue = 0, red = maximum; grey = no value)"] = image
        show.images["activation along the sequence"] = activation_profile_png(show, labels, out / f"feature_{feature}_profile.png")
        showcases.append(show)
        where = f"; annotated in {entry.entry_name} at {show.annotated_where}" if show.annotated else ""
        print(f"  feature {feature:>5}: max {show.max_activation:.2f} on {show.active_residues} residues; best concept {show.concept_label}{where}")
    facts = {**pipeline.describe(), "structure": str(structure), "chain": f"{chain.chain_id} ({len(chain)} residues)"}
    if entry is not None:
        facts["UniProt entry"] = f"{entry.accession} {entry.entry_name} ({entry_path})"
    page = write_html_summary(
        out / "index.html", f"InterPLM features on {structure.name}",
        "Sparse-autoencoder features of a protein language model, on a real structure. The embedded default is a "
        "small demonstration model with ESM-2's architecture trained here on a few hundred real proteins, not ESM-2.",
        showcases, facts,
    )  # fmt: skip
    print(f"wrote {page} and {2 * len(showcases)} images in {out}/")
    return 0
