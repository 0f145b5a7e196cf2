"""``interplm report``: how many Swiss-Prot concepts SAE features find, against the layer's best single neurons."""

from __future__ import annotations

from interplm_plugins.cli._common import add_concept_options, add_pipeline_options, load_concept_halves, load_pipeline_from_args


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "report",
        help="concepts found by SAE features vs single neurons (held-out test F1)",
        description=(
            "For each eligible concept of `interplm concepts`, choose the best SAE feature and the best signed neuron of "
            "the same layer on the validation half and score them on the test half (or, with --test-concepts, choose on "
            "all of --concepts and score on all of --test-concepts). Prints the counts of concepts with test F1 > "
            "--f1-cutoff (InterPLM's count; with a bootstrap interval over test proteins) and writes OUT/report.json, "
            "OUT/concepts.tsv and OUT/f1_distribution.png."
        ),
    )
    add_concept_options(p, required=True, test_set=True)
    p.add_argument("--out", required=True, help="output folder")
    add_pipeline_options(p, database=False)
    p.add_argument("--f1-cutoff", type=float, default=0.5, help="count concepts with test F1 above this (default 0.5)")
    p.set_defaults(run=run)


def run(args) -> int:
    from interplm_plugins.core.concepts.report import compare_with_neurons, write_report

    pipeline = load_pipeline_from_args(args)
    halves, eligibility = load_concept_halves(args)
    comparison = compare_with_neurons(pipeline, halves, eligibility, f1_cutoff=args.f1_cutoff)
    files = write_report(comparison, args.out, provenance={k: v for k, v in pipeline.describe().items()})
    s = comparison.summary()
    print(f"halves: {s['halves']}")
    print(f"{s['concepts_evaluated']} of {s['concepts_in_vocabulary']} concepts evaluated ({s['eligibility']}); "
          f"{s['valid_proteins']} validation / {s['test_proteins']} test proteins")  # fmt: skip
    print(f"concepts with test F1 > {s['f1_cutoff']}: SAE features {s['sae_concepts_above_cutoff']}, "
          f"neurons {s['neuron_concepts_above_cutoff']}")  # fmt: skip
    print("  at other cutoffs (SAE/neurons): " + ", ".join(f"> {c['f1_cutoff']}: {c['sae']}/{c['neurons']}" for c in s["concepts_found_by_cutoff"]))
    print(f"median test F1: SAE {s['sae_median_test_f1']:.3f}, neurons {s['neuron_median_test_f1']:.3f}; "
          f"SAE better on {s['concepts_where_sae_beats_neurons']}, neurons better on {s['concepts_where_neurons_beat_sae']}")  # fmt: skip
    boot = s["bootstrap_over_test_proteins"]
    at_cutoff = next(b for b in boot["sae_minus_neurons_concepts_found"] if b["f1_cutoff"] == s["f1_cutoff"])
    low, high = at_cutoff["ci95"]
    print(f"bootstrap over test proteins ({boot['resamples']} resamples): SAE - neurons at F1 > {s['f1_cutoff']}, "
          f"95% interval {low:+g} to {high:+g}, SAE ahead in {at_cutoff['share_sae_ahead']:.0%} of resamples")  # fmt: skip
    print(f"wrote {files['json']}, {files['tsv']}, {files['png']}")
    return 0
