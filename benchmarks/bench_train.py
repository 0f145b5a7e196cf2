"""SAE training throughput (tokens/s): our ``train_step`` against dictionary-learning's trainers.

ReLU-L1 SAE 320 -> 10,240 on stored embeddings (layer 3 of an ESM-2 8M-architecture model with
random weights, real proteins from ../shared/data/sequences), the same batches, batch size,
learning rate, L1 coefficient and warm-ups for every trainer:

- ours: ``train_step`` (the loop ``train_sae`` runs; ReLU gradients written out by hand), in fp32
  and with ``precision="bf16"`` (bfloat16 matrix products, float32 master weights and Adam state);
- ``dictionary_learning`` 0.1.0 (PyPI ``dictionary-learning``, the code InterPLM trained with):
  ``StandardTrainer`` (ConstrainedAdam, unit-norm decoder, plain L1) and
  ``StandardTrainerAprilUpdate`` (the loss ours optimises: L1 weighted by decoder norms, gradient
  clipping), each called as its training loop does, ``trainer.update(step, batch)``.

Steps are interleaved (ours, theirs, theirs, ours, ...) so that a busy machine slows all alike;
the median step time gives tokens/s. Model FLOPs per token are counted as 6 * d_in * d_hidden
(forward and backward of both matrices) and compared with the float32 and bfloat16 matrix-product
rates of this CPU, measured in the same run. Targets: ours (fp32) >= 1.5x StandardTrainer; ours
(fastest precision) >= 2x StandardTrainerAprilUpdate. Also timed: ``train_sae`` end to end (streaming from the store,
logging, the final checkpoint and SAE file).

These steps start from a fresh SAE, where half of the activations are nonzero. A run spends most
of its steps with far fewer (a trained ReLU SAE has 1-4 %), and there ours runs the products after
the encoder's over the active entries only (``SPARSE_RELU_MAX_DENSITY`` in ``core/sae/train.py``),
which dictionary_learning's dense autograd does not. So a third table times the same four ReLU
trainers resumed from a trained SAE: the embedded default's (256 -> 4,096, trained 2,000 steps;
its weights copied into each trainer, ours at step 2,000), on the demo PLM's layer-3 embeddings of
the same proteins, the same batches, interleaved the same way; the share of nonzero activations
is recorded.

A second table times TopK, BatchTopK and Matryoshka BatchTopK SAEs of the same shape (``--k``
features per token, AuxK weight 1/32; Matryoshka nested at d/8, d/4, d/2) on the same batches:
ours (sparse products: one dense product per step, see ``core/sae/sparse_topk.py``), fp32 and
bf16, against dictionary_learning's ``TopKTrainer``, ``BatchTopKTrainer`` and
``MatryoshkaBatchTopKTrainer`` (dense autograd), interleaved the same way. No target is set for it; the
model-FLOPs fraction is not given because the sparse path does not do the dense path's FLOPs.

Two more tables time JumpReLU SAEs the same way: of the first table's shape from a fresh SAE (about
half fire: dense products on both sides), and from the embedded default's trained weights (so
about as few entries fire as in a trained SAE): ours (ReLU's hand-written products; in fp32 the
sparse ones, over the entries that fire, under ``SPARSE_RELU_MAX_DENSITY``; in bf16 the dense
ones, faster there), fp32 and bf16, against
dictionary_learning's ``JumpReluTrainer`` (dense autograd). No target is set for it.

dictionary-learning's package imports nnsight (for its activation buffer, not used here) at import
time; it is replaced by an empty module so that the package's trainers import without it.
"""

from __future__ import annotations

import dataclasses
import sys
import types
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402


def _dictionary_learning():
    sys.modules.setdefault("nnsight", types.SimpleNamespace(LanguageModel=object))
    from dictionary_learning.trainers.standard import StandardTrainer, StandardTrainerAprilUpdate
    from dictionary_learning.trainers.batch_top_k import BatchTopKTrainer
    from dictionary_learning.trainers.jumprelu import JumpReluTrainer
    from dictionary_learning.trainers.matryoshka_batch_top_k import MatryoshkaBatchTopKTrainer
    from dictionary_learning.trainers.top_k import TopKTrainer

    sparse = {"TopK": ("topk", TopKTrainer), "BatchTopK": ("batchtopk", BatchTopKTrainer), "MatryoshkaBatchTopK": ("matryoshka", MatryoshkaBatchTopKTrainer)}
    return StandardTrainer, StandardTrainerAprilUpdate, sparse, JumpReluTrainer


def matryoshka_settings(d_hidden: int) -> tuple[list[int], list[float]]:
    """Our prefix ends (the default nesting) and the same nesting as dictionary_learning's group fractions."""
    from interplm_plugins.core.sae.matryoshka import default_prefixes

    prefixes = default_prefixes(d_hidden)
    ends = [*prefixes, d_hidden]
    return prefixes, [(end - start) / d_hidden for start, end in zip([0, *prefixes], ends)]


def make_store(args, work: Path):
    from interplm_plugins.core.plm.embed import embed_to_store
    from interplm_plugins.core.plm.loading import load_plm
    from interplm_plugins.core.plm.model import new_esm2, save_esm2_checkpoint

    path = save_esm2_checkpoint(new_esm2(6, 320, 20, seed=0), work / "esm2_t6_8M_random.pt")
    records = _common.benchmark_records(args.data, args.proteins, max_length=200 if args.quick else 1022)
    return embed_to_store(load_plm(path), records, 3, work / "store", shard_residues=50_000)[3]


def demo_batches(args, work: Path):
    """``(pipeline, store, batches)``: the embedded default and its PLM's layer embeddings of the same real proteins."""
    import torch

    from interplm_plugins.core.interpret.pipeline import load_pipeline
    from interplm_plugins.core.plm.embed import embed_to_store

    pipeline = load_pipeline()
    records = _common.benchmark_records(args.data, args.proteins, max_length=200 if args.quick else 1022)
    store = embed_to_store(pipeline.plm, records, pipeline.layer, work / "demo_store", shard_residues=50_000)[pipeline.layer]
    total = args.warmup + args.steps
    batches = [torch.from_numpy(np.ascontiguousarray(b, dtype=np.float32)) for _, b in zip(range(total), store.iter_batches(args.batch_size, seed=0))]
    return pipeline, store, batches


def trained_weights(pipeline) -> dict:
    """The embedded default's trained SAE weights (not its normalisation scale, which training does not use)."""
    return {name: pipeline.sae.state_dict()[name] for name in ("bias", "encoder.weight", "encoder.bias", "decoder.weight")}


def ours_resumed(args, config, weights: dict, name: str, prepare=lambda sae: None) -> tuple[dict, list[float], list]:
    """``(runners, nonzero, states)``: ours in fp32 and bf16 (``name``, ``name bf16``) with ``config``,
    resumed at step :data:`TRAINED_STEPS` from ``weights`` (after ``prepare(sae)``), past the warm-ups
    and ramps as a run spends most of its steps; the fp32 runner appends each timed step's share of
    nonzero activations to ``nonzero`` (the warm-up steps', untimed, are left out)."""
    from interplm_plugins.core.sae.train import TrainConfig, make_training_state, train_step

    total = args.warmup + args.steps
    train_config = TrainConfig(steps=TRAINED_STEPS + total + 1, batch_size=args.batch_size, lr=args.lr, checkpoint_every=10**6, log_every=10**6)
    nonzero: list[float] = []
    runners, states = {}, []
    for precision in ("fp32", "bf16"):
        state = make_training_state(config, dataclasses.replace(train_config, precision=precision))
        state.sae.load_state_dict(weights, strict=False)
        prepare(state.sae)
        state.step = TRAINED_STEPS

        def run(step, x, state=state, precision=precision):
            metrics = train_step(state, x)
            if precision == "fp32" and step >= args.warmup:
                nonzero.append(metrics["l0"] / config.d_hidden)

        runners[f"{name}{' bf16' if precision == 'bf16' else ''}"] = run
        states.append(state)
    return runners, nonzero, states


def trained_relu_times(args, demo, StandardTrainer, StandardTrainerAprilUpdate) -> dict:
    """Step times of ours (fp32, bf16) and both dictionary_learning ReLU trainers resumed from the
    embedded default's trained SAE (its weights, not its normalisation scale, which training does not
    use), on the demo PLM's layer embeddings of the same real proteins; the share of active entries."""
    import torch

    from interplm_plugins.core.sae.model import SAEConfig
    from interplm_plugins.core.sae.train import SPARSE_RELU_MAX_DENSITY

    pipeline, store, batches = demo
    trained = pipeline.sae
    total = args.warmup + args.steps
    config = SAEConfig(d_in=trained.d_in, d_hidden=trained.d_hidden, kind="relu", l1_coefficient=trained.config.l1_coefficient)
    weights = trained_weights(pipeline)
    resumed_at = TRAINED_STEPS  # past the learning-rate warm-up and the L1 ramp, as a run spends most of its steps
    runners, active, _ = ours_resumed(args, config, weights, "ours: train_step")
    for Trainer in (StandardTrainer, StandardTrainerAprilUpdate):
        trainer = Trainer(steps=resumed_at + total + 1, activation_dim=config.d_in, dict_size=config.d_hidden, layer=pipeline.layer, lm_name=pipeline.plm.name,
                          lr=args.lr, l1_penalty=config.l1_coefficient, warmup_steps=1, sparsity_warmup_steps=1, device="cpu", seed=0)  # fmt: skip
        with torch.no_grad():
            for name, value in weights.items():
                trainer.ae.get_parameter(name).copy_(value)
        runners[f"dictionary_learning {Trainer.__name__}"] = lambda step, x, t=trainer: t.update(resumed_at + step, x)
    times = _common.interleaved_step_times(runners, batches, args.warmup)
    return {"sae": f"{config.d_in}->{config.d_hidden} (the embedded default's)", "resumed_at_step": resumed_at,
            "store_residues": store.num_residues, "active_fraction": float(np.mean(active)),
            "sparse_relu_max_density": SPARSE_RELU_MAX_DENSITY, "step_times_s": times}  # fmt: skip


def jumprelu_times(args, demo, JumpReluTrainer) -> dict:
    """Step times of a JumpReLU SAE, ours (fp32, bf16) against dictionary_learning's
    ``JumpReluTrainer``, started from the embedded default's trained weights (its encoder decides
    who fires; thresholds and bandwidth at 0.001 of the first batch's norm, ours' initialisation and
    the paper's; theirs' encoder bias takes in our pre-encoder bias so both compute the same
    pre-activations), on the demo PLM's embeddings: so about as few entries fire as in a trained
    SAE, and ours runs sparse products in fp32 (``SPARSE_RELU_MAX_DENSITY``). Theirs penalises
    ``(L0 / target - 1)^2`` where ours penalises L0; both take the same products."""
    import torch

    from interplm_plugins.core.sae.jumprelu import initialise_thresholds
    from interplm_plugins.core.sae.model import SAEConfig
    from interplm_plugins.core.sae.train import SPARSE_RELU_MAX_DENSITY

    pipeline, store, batches = demo
    trained = pipeline.sae
    total = args.warmup + args.steps
    config = SAEConfig(d_in=trained.d_in, d_hidden=trained.d_hidden, kind="jumprelu", l1_coefficient=args.l1)
    weights = trained_weights(pipeline)
    runners, fired, states = ours_resumed(args, config, weights, "ours: train_step JumpReLU", prepare=lambda sae: initialise_thresholds(sae, batches[0]))
    state = states[0]
    trainer = JumpReluTrainer(steps=TRAINED_STEPS + total + 1, activation_dim=config.d_in, dict_size=config.d_hidden, layer=pipeline.layer, lm_name=pipeline.plm.name,
                              lr=args.lr, bandwidth=float(state.sae.bandwidth), warmup_steps=1, sparsity_warmup_steps=1, device="cpu", seed=0)  # fmt: skip
    with torch.no_grad():
        w_enc, bias = weights["encoder.weight"], weights["bias"]
        trainer.ae.W_enc.copy_(w_enc.t())
        trainer.ae.b_enc.copy_(weights["encoder.bias"] - w_enc @ bias)
        trainer.ae.W_dec.copy_(weights["decoder.weight"].t())
        trainer.ae.b_dec.copy_(bias)
        trainer.ae.threshold.copy_(state.sae.threshold)
    runners["dictionary_learning JumpReluTrainer"] = lambda step, x: trainer.update(TRAINED_STEPS + step, x)
    times = _common.interleaved_step_times(runners, batches, args.warmup)
    return {"sae": f"{config.d_in}->{config.d_hidden} (the embedded default's weights)", "store_residues": store.num_residues,
            "fired_fraction": float(np.mean(fired)), "sparse_max_density": SPARSE_RELU_MAX_DENSITY,
            "step_times_s": times, "rows": speed_rows(times, list(times), args.batch_size)}  # fmt: skip


def speed_rows(times: dict[str, list[float]], names: list[str], batch_size: int, **extra) -> list[dict]:
    """A table row per trainer of ``names`` (ours fp32 and ours bf16 first): tokens/s and each
    speed-up of ours over it, from the median step times."""
    seconds = {name: _common.median(times[name]) for name in names}
    ours, ours_bf16 = seconds[names[0]], seconds[names[1]]
    return [{"trainer": name, **extra, "tokens_per_s": batch_size / s, "ours_speedup": s / ours, "ours_bf16_speedup": s / ours_bf16,
             "ms_per_step": 1e3 * s} for name, s in seconds.items()]  # fmt: skip


#: The step ours resumes the trained SAE at (the embedded default's SAE trained 2,000 steps).
TRAINED_STEPS = 2000


def main(argv: list[str] | None = None) -> int:
    p = _common.parser(__doc__.splitlines()[0])
    p.add_argument("--d-hidden", type=int, default=10_240)
    p.add_argument("--batch-size", type=int, default=2048)
    p.add_argument("--steps", type=int, default=40, help="timed steps per trainer (default 40)")
    p.add_argument("--warmup", type=int, default=3, help="untimed first steps (default 3)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--l1", type=float, default=0.06)
    p.add_argument("--k", type=int, default=32, help="features per token of the TopK SAEs (default 32)")
    p.add_argument("--proteins", type=int, default=300, help="real proteins embedded for the store (default 300)")
    args = p.parse_args(argv)
    if args.quick:
        args.d_hidden, args.batch_size, args.steps, args.warmup, args.proteins = 512, 256, 3, 1, 4

    import torch

    from interplm_plugins.core.sae.model import SAEConfig
    from interplm_plugins.core.sae.train import TrainConfig, make_training_state, train_sae, train_step

    StandardTrainer, StandardTrainerAprilUpdate, sparse_kinds, JumpReluTrainer = _dictionary_learning()
    total = args.warmup + args.steps
    lr_warmup = max(1, total // 10)
    l1_ramp = max(1, total // 5)
    with _common.Workdir(args.workdir) as work:
        store = make_store(args, work)
        print(f"store: {len(store)} proteins, {store.num_residues} residues x {store.dim}")
        batches = [torch.from_numpy(np.ascontiguousarray(b, dtype=np.float32)) for _, b in zip(range(total), store.iter_batches(args.batch_size, seed=0))]
        sae_config = SAEConfig(d_in=store.dim, d_hidden=args.d_hidden, kind="relu", l1_coefficient=args.l1)
        train_config = TrainConfig(steps=total + 1, batch_size=args.batch_size, lr=args.lr, warmup_steps=lr_warmup,
                                   l1_warmup_fraction=l1_ramp / (total + 1), checkpoint_every=10**6, log_every=10**6)  # fmt: skip
        ours = make_training_state(sae_config, train_config)
        ours_bf16 = make_training_state(sae_config, dataclasses.replace(train_config, precision="bf16"))
        common = dict(steps=total + 1, activation_dim=store.dim, dict_size=args.d_hidden, layer=3, lm_name="esm2_t6_8M_random",
                      lr=args.lr, l1_penalty=args.l1, warmup_steps=lr_warmup, sparsity_warmup_steps=l1_ramp, device="cpu", seed=0)  # fmt: skip
        theirs = {"dictionary_learning StandardTrainer": StandardTrainer(**common),
                  "dictionary_learning StandardTrainerAprilUpdate": StandardTrainerAprilUpdate(**common)}  # fmt: skip
        runners = {"ours: train_step": lambda step, x: train_step(ours, x), "ours: train_step bf16": lambda step, x: train_step(ours_bf16, x), **{name: (lambda t: lambda step, x: t.update(step, x))(t) for name, t in theirs.items()}}
        times = _common.interleaved_step_times(runners, batches, args.warmup)
        names = list(runners)
        topk_times = {}
        prefixes, group_fractions = matryoshka_settings(args.d_hidden)
        for label, (kind, Trainer) in sparse_kinds.items():
            nesting = kind == "matryoshka"
            kind_config = SAEConfig(d_in=store.dim, d_hidden=args.d_hidden, kind=kind, k=args.k, prefixes=prefixes if nesting else None)
            fp32_state = make_training_state(kind_config, train_config)
            bf16_state = make_training_state(kind_config, dataclasses.replace(train_config, precision="bf16"))
            theirs_kind = Trainer(steps=total + 1, activation_dim=store.dim, dict_size=args.d_hidden, k=args.k, layer=3, lm_name="esm2_t6_8M_random",
                                  lr=args.lr, warmup_steps=lr_warmup, device="cpu", seed=0, **({"group_fractions": group_fractions} if nesting else {}))  # fmt: skip
            topk_times.update(_common.interleaved_step_times({
                f"ours: train_step {label}": lambda step, x, state=fp32_state: train_step(state, x),
                f"ours: train_step {label} bf16": lambda step, x, state=bf16_state: train_step(state, x),
                f"dictionary_learning {Trainer.__name__}": lambda step, x, t=theirs_kind: t.update(step, x),
            }, batches, args.warmup))  # fmt: skip
        # JumpReLU from a fresh SAE (about half fire: dense products) on the same batches
        jumprelu_config = SAEConfig(d_in=store.dim, d_hidden=args.d_hidden, kind="jumprelu", l1_coefficient=args.l1)
        jumprelu_runners = {f"ours: train_step JumpReLU{' bf16' if p == 'bf16' else ''}": (lambda state: lambda step, x: train_step(state, x))(
            make_training_state(jumprelu_config, dataclasses.replace(train_config, precision=p))) for p in ("fp32", "bf16")}  # fmt: skip
        theirs_jumprelu = JumpReluTrainer(steps=total + 1, activation_dim=store.dim, dict_size=args.d_hidden, layer=3, lm_name="esm2_t6_8M_random",
                                          lr=args.lr, warmup_steps=lr_warmup, sparsity_warmup_steps=l1_ramp, device="cpu", seed=0)  # fmt: skip
        jumprelu_runners["dictionary_learning JumpReluTrainer"] = lambda step, x: theirs_jumprelu.update(step, x)
        fresh_jumprelu_times = _common.interleaved_step_times(jumprelu_runners, batches, args.warmup)
        demo = demo_batches(args, work)
        trained = trained_relu_times(args, demo, StandardTrainer, StandardTrainerAprilUpdate)
        jumprelu = jumprelu_times(args, demo, JumpReluTrainer)
        end_to_end_s, _ = _common.timed(lambda: train_sae(store, sae_config, train_config.__class__(**{**train_config.to_dict(), "steps": total}), work / "sae", resume=False, progress=False))
        peak = _common.matmul_peak_gflops(1024 if args.quick else 4096)
        peak_bf16 = _common.matmul_peak_gflops(1024 if args.quick else 4096, dtype=torch.bfloat16)
    flops_per_token = 6 * store.dim * args.d_hidden
    rows = []
    ours_rate = args.batch_size / _common.median(times[names[0]])
    ours_bf16_rate = args.batch_size / _common.median(times[names[1]])
    for name in names:
        rate = args.batch_size / _common.median(times[name])
        rows.append({
            "trainer": name, "tokens_per_s": rate, "ours_speedup": ours_rate / rate, "ours_bf16_speedup": ours_bf16_rate / rate,
            "ms_per_step": 1e3 * _common.median(times[name]),
            "model_gflops": rate * flops_per_token / 1e9,
            "fraction_of_peak": rate * flops_per_token / 1e9 / (peak_bf16 if "bf16" in name else peak),
        })  # fmt: skip
    rows.append({"trainer": "ours: train_sae end to end", "tokens_per_s": total * args.batch_size / end_to_end_s,
                 "ours_speedup": None, "ours_bf16_speedup": None, "ms_per_step": 1e3 * end_to_end_s / total,
                 "model_gflops": total * args.batch_size / end_to_end_s * flops_per_token / 1e9,
                 "fraction_of_peak": total * args.batch_size / end_to_end_s * flops_per_token / 1e9 / peak})  # fmt: skip
    _common.print_table(
        f"SAE training, ReLU {store.dim} -> {args.d_hidden}, batch {args.batch_size} (median of {args.steps} steps; "
        f"matmul peak {peak:.0f} GFLOP/s fp32, {peak_bf16:.0f} bf16 (the bf16 row's fraction); model FLOPs = 6*d_in*d_hidden per token)",
        rows, ["trainer", "tokens_per_s", "ours_speedup", "ours_bf16_speedup", "ms_per_step", "model_gflops", "fraction_of_peak"],
    )  # fmt: skip
    topk_rows = []
    for label, (kind, Trainer) in sparse_kinds.items():
        names = [f"ours: train_step {label}", f"ours: train_step {label} bf16", f"dictionary_learning {Trainer.__name__}"]
        topk_rows += speed_rows(topk_times, names, args.batch_size, sae=kind)
    _common.print_table(f"SAE training, TopK, BatchTopK and Matryoshka BatchTopK (k = {args.k}) {store.dim} -> {args.d_hidden}, batch {args.batch_size}, the same batches (median of {args.steps} steps)",
                        topk_rows, ["trainer", "tokens_per_s", "ours_speedup", "ours_bf16_speedup", "ms_per_step"])  # fmt: skip
    trained_rows = speed_rows(trained["step_times_s"], list(trained["step_times_s"]), args.batch_size)
    _common.print_table(f"SAE training, ReLU from a trained SAE: {trained['sae']}, resumed at step {trained['resumed_at_step']}, "
                        f"{trained['active_fraction']:.1%} of its activations nonzero, batch {args.batch_size} (median of {args.steps} steps)",
                        trained_rows, ["trainer", "tokens_per_s", "ours_speedup", "ours_bf16_speedup", "ms_per_step"])  # fmt: skip
    fresh_jumprelu = {"step_times_s": fresh_jumprelu_times, "rows": speed_rows(fresh_jumprelu_times, list(fresh_jumprelu_times), args.batch_size)}
    _common.print_table(f"SAE training, JumpReLU {store.dim} -> {args.d_hidden} from a fresh SAE, batch {args.batch_size}, the same batches (median of {args.steps} steps)",
                        fresh_jumprelu["rows"], ["trainer", "tokens_per_s", "ours_speedup", "ours_bf16_speedup", "ms_per_step"])  # fmt: skip
    _common.print_table(f"SAE training, JumpReLU from the trained weights: {jumprelu['sae']}, {jumprelu['fired_fraction']:.1%} of its activations nonzero, "
                        f"batch {args.batch_size} (median of {args.steps} steps)", jumprelu["rows"], ["trainer", "tokens_per_s", "ours_speedup", "ours_bf16_speedup", "ms_per_step"])  # fmt: skip
    _common.write_result(args, "train", {
        "target": "ours_speedup >= 1.5 over dictionary_learning's StandardTrainer; ours_bf16_speedup >= 2 over StandardTrainerAprilUpdate",
        "d_in": store.dim, "d_hidden": args.d_hidden, "batch_size": args.batch_size, "lr": args.lr, "l1": args.l1,
        "timed_steps": args.steps, "store_residues": store.num_residues, "matmul_peak_gflops": peak, "matmul_peak_gflops_bf16": peak_bf16,
        "flops_per_token": flops_per_token, "rows": rows,
        "step_times_s": times, "topk_k": args.k, "matryoshka_prefixes": prefixes, "topk_rows": topk_rows, "topk_step_times_s": topk_times,
        "trained": {**trained, "rows": trained_rows}, "jumprelu": {"fresh": fresh_jumprelu, "trained": jumprelu},
    })  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
