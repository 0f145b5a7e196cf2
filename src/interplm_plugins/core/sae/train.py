"""Training sparse autoencoders on an embedding store, with exact resume after a crash.

Losses (per residue, averaged over the batch):
- ReLU: ``|x - x_hat|^2 + l1 * sum_i f_i |W_dec[:, i]|`` (L1 weighted by decoder column norms,
  Anthropic's April 2024 update), the L1 coefficient ramped up linearly over the first
  ``l1_warmup_fraction`` of the steps. Dead features are *resampled* every ``resample_every``
  steps (Anthropic / dictionary_learning): re-initialised towards inputs the SAE reconstructs badly;
  not once the learning rate decays (:func:`resampling_allowed`), since a feature re-initialised
  then, or at the last step, would be left untrained in the final weights. The gradients are
  written out by hand (:func:`relu_loss_and_grads`); on the CPU, once few features fire (under
  :data:`SPARSE_RELU_MAX_DENSITY`, as through most of a run), the products after the encoder's
  run over the active entries only: 2x faster at 2 % active.
- TopK / BatchTopK: ``|x - x_hat|^2 + auxk_alpha * AuxK`` with unit-norm decoder columns. AuxK
  (Gao et al. 2024) asks the top ``auxk_k`` *dead* features to reconstruct the residual, so they
  get gradient again. BatchTopK's inference threshold is the mean over the last steps
  (:func:`threshold_estimate_start`: from the learning-rate decay on, when the weights barely
  move) of the smallest activation each batch keeps. An exponential average from early in
  training (dictionary_learning's) remembers cut-offs of weights long gone: on the demo PLM after
  1,500 steps it left the threshold at 3x the final cut-off, 42 instead of 60 features per
  residue and 362 features ever active instead of 1,272. An SAE always leaves training with a
  threshold, so inference never depends on the batch. On the CPU, TopK, BatchTopK and Matryoshka
  train through sparse products (:mod:`~interplm_plugins.core.sae.sparse_topk`): only the
  encoder's forward product is dense, the gradients are the dense path's, several times faster
  at realistic widths (``benchmarks/bench_train.py``).
- Matryoshka BatchTopK (:mod:`~interplm_plugins.core.sae.matryoshka`): as BatchTopK, with the
  reconstruction error averaged over the nested prefixes of the dictionary.
- JumpReLU (:mod:`~interplm_plugins.core.sae.jumprelu`): ``|x - x_hat|^2 + l1 * L0`` with
  straight-through gradients for the per-feature thresholds, unit-norm decoder columns, the
  sparsity coefficient ramped up as ReLU's L1; thresholds and bandwidth set from the first batch.
  Its gradients are written out by hand with ReLU's products (:func:`jumprelu_loss_and_grads`),
  sparse ones too once few entries fire (under :data:`SPARSE_RELU_MAX_DENSITY`, as ReLU).

A feature is dead when it has not fired on the last ``dead_after_tokens`` training residues.
Adam; learning rate warmed up linearly over ``warmup_steps`` and decayed linearly to 0 over the
last ``decay_fraction`` of the steps; gradients clipped to norm ``grad_clip``.

Checkpoints (``out_dir/checkpoint.pt``, atomic, every ``checkpoint_every`` steps) hold the
weights, the Adam state, the random generator, the dead-feature counters, the step and the log;
the learning rate and L1 ramps are functions of the step and the data position is the step
(``store.iter_batches(..., start_batch=step)``), so resuming after a SIGKILL reproduces the
uninterrupted run bit for bit (on the same machine and thread count).

The model/optimizer construction (:func:`make_training_state`) and the update
(:func:`train_step`) are separate from the loop so that a distributed (DDP) driver can wrap them.

Compute precision (``TrainConfig.precision``, ``interplm train --precision``): ``"fp32"`` (the
default) or ``"bf16"``, bfloat16 matrix products with float32 master weights, Adam state,
reconstruction error and loss; the saved SAE is float32 either way
(:mod:`~interplm_plugins.core.plm.precision` says what runs in which). The ReLU SAE's hand-written
products are cast explicitly (:func:`relu_loss_and_grads`); the TopK kinds' one dense product
(the encoder's forward; TopK, BatchTopK, Matryoshka) runs in the precision, their sparse products
in float32; JumpReLU's hand-written products are ReLU's, cast the same way. The
precision is part of the training settings, so the checkpoint records it and a run resumes only
in the precision it started in.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from interplm_plugins.core.atomic import atomic_path, write_text_atomic
from interplm_plugins.core.plm.precision import DEFAULT_PRECISION, check_precision, compute_precision, matmul_dtype
from interplm_plugins.core.sae.files import save_sae
from interplm_plugins.core.sae.jumprelu import initialise_thresholds
from interplm_plugins.core.sae.kinds import BATCH_KINDS
from interplm_plugins.core.sae.matryoshka import nested_losses, nested_reconstruction_losses, prefix_segments
from interplm_plugins.core.sae.model import SAEConfig, SparseAutoencoder
from interplm_plugins.core.sae.sparse_topk import KeptEntries, SparseForward, jumprelu_band, kept_reconstruction, rows_of_indices, rows_of_mask, sparse_forward, topk_forward
from interplm_plugins.errors import InterPLMError

CHECKPOINT_NAME = "checkpoint.pt"
CHECKPOINT_FORMAT = "interplm-plugins-train-checkpoint/1"
SAE_NAME = "sae.safetensors"
LOG_NAME = "train_log.jsonl"
#: TrainConfig fields that may differ between a checkpoint and the run resuming it.
RESUMABLE_CHANGES = ("checkpoint_every", "log_every")


@dataclass
class TrainConfig:
    """Optimisation settings; see the module docstring for what each part does."""

    steps: int = 20_000
    batch_size: int = 2048
    lr: float = 1e-3
    warmup_steps: int = 500
    decay_fraction: float = 0.2
    l1_warmup_fraction: float = 0.05
    dead_feature_remedy: bool = True
    dead_after_tokens: int = 1_000_000
    resample_every: int = 2_000
    auxk_alpha: float = 1 / 32
    auxk_k: int | None = None  # default d_in // 2
    threshold_start_step: int = 100
    grad_clip: float = 1.0
    checkpoint_every: int = 500
    log_every: int = 50
    seed: int = 0
    #: Compute precision of the SAE's matrix products: "fp32" or "bf16" (see the module docstring).
    precision: str = DEFAULT_PRECISION

    def __post_init__(self) -> None:
        check_precision(self.precision)
        positive = ("steps", "batch_size", "resample_every", "dead_after_tokens", "checkpoint_every", "log_every")
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise InterPLMError(f"training {name} must be a positive integer, not {value!r}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise InterPLMError(f"learning rate must be positive, not {self.lr!r}")
        if self.warmup_steps < 0 or not 0 <= self.decay_fraction <= 1 or not 0 <= self.l1_warmup_fraction <= 1:
            raise InterPLMError("warmup_steps must be >= 0 and decay_fraction, l1_warmup_fraction in [0, 1]")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def learning_rate(config: TrainConfig, step: int) -> float:
    """Learning rate at ``step`` (0-based): linear warm-up, constant, linear decay to 0."""
    factor = min(1.0, (step + 1) / config.warmup_steps) if config.warmup_steps else 1.0
    decay_start = config.steps * (1 - config.decay_fraction)
    if config.decay_fraction > 0 and step >= decay_start:
        factor *= max(0.0, (config.steps - step) / (config.steps - decay_start))
    return config.lr * factor


def resampling_allowed(config: TrainConfig, step: int) -> bool:
    """Whether dead features are resampled after step ``step`` (0-based): every ``resample_every``
    steps, and only before the learning-rate decay starts."""
    return (step + 1) % config.resample_every == 0 and step + 1 < config.steps * (1 - config.decay_fraction)


def threshold_estimate_start(config: TrainConfig) -> int:
    """First step (0-based) whose batch cut-off enters the BatchTopK / Matryoshka inference threshold:
    where the learning-rate decay starts, not before ``threshold_start_step``, at the latest the last step."""
    decay_start = math.ceil(config.steps * (1 - config.decay_fraction))
    return min(max(config.threshold_start_step, decay_start), config.steps - 1)


def l1_scale(config: TrainConfig, step: int) -> float:
    """Fraction of the L1 coefficient applied at ``step`` (linear ramp)."""
    ramp = math.ceil(config.l1_warmup_fraction * config.steps)
    return min(1.0, (step + 1) / ramp) if ramp else 1.0


def weighted_l1(f: torch.Tensor, decoder_weight: torch.Tensor) -> torch.Tensor:
    """Mean over residues of ``sum_i f_i * |decoder_weight[:, i]|``."""
    return (f * decoder_weight.norm(dim=0)).sum(dim=-1).mean()


def auxk_loss(
    sae: SparseAutoencoder, pre: torch.Tensor, residual: torch.Tensor, dead: torch.Tensor, k_aux: int, sync: "StepSync | None" = None
) -> torch.Tensor:
    """Gao et al.'s auxiliary loss: reconstruct ``residual`` from the top ``k_aux`` dead features,
    normalised by the residual's variance (over the global batch under a data-parallel ``sync``);
    0 when nothing is dead."""
    n_dead = int(dead.sum())
    if n_dead == 0:
        return pre.new_zeros(())
    masked = torch.where(dead[None, :], torch.relu(pre), torch.full_like(pre, -math.inf))
    top = masked.topk(min(k_aux, n_dead), dim=-1, sorted=False)
    acts = torch.zeros_like(pre).scatter_(-1, top.indices, top.values)
    return _normalised_error(sae.decoder(acts), residual, sync)


def sparse_auxk_loss(sae: SparseAutoencoder, forward: SparseForward, residual: torch.Tensor, dead: torch.Tensor, k_aux: int, sync: "StepSync | None" = None) -> torch.Tensor:
    """:func:`auxk_loss` for the sparse path: the dead features ranked within the dead columns
    only, their reconstruction from those entries (:func:`kept_reconstruction`)."""
    dead_ids = dead.nonzero().squeeze(1)
    if len(dead_ids) == 0:
        return residual.new_zeros(())
    local = torch.relu(forward.pre.index_select(1, dead_ids)).topk(min(k_aux, len(dead_ids)), dim=-1, sorted=False).indices
    reconstruction, _ = kept_reconstruction(sae, forward.centred, forward.pre, *rows_of_indices(dead_ids[local]))
    return _normalised_error(reconstruction, residual, sync)


def _normalised_error(reconstruction: torch.Tensor, residual: torch.Tensor, sync: "StepSync | None") -> torch.Tensor:
    """AuxK's squared error of ``reconstruction`` against ``residual`` over the residual's variance (0 if it is 0)."""
    error = (reconstruction - residual).pow(2).sum(dim=-1).mean()
    if sync is None or sync.single:
        variance = (residual - residual.mean(dim=0, keepdim=True)).pow(2).sum(dim=-1).mean()
    else:  # the whole batch's variance (a constant here: the residual is detached)
        n = sync.global_size(residual)
        centre = sync.batch_sum(residual.sum(dim=0)) / n
        variance = sync.batch_sum((residual - centre).pow(2).sum()) / n
    return torch.nan_to_num(error / variance, nan=0.0, posinf=0.0)


def global_batch_topk(sae: SparseAutoencoder, pre: torch.Tensor, sync: "StepSync") -> torch.Tensor:
    """BatchTopK over the global batch when each process holds a slice of it: the ``k * B`` largest
    activations of all slices together (the slices' own top values are gathered to find the
    cut-off), as :meth:`SparseAutoencoder.sparsify` selects them on one process."""
    ranking = pre * sae.activation_scale
    n_keep = min(sae.config.k * sync.global_size(pre), sync.global_size(pre) * sae.d_hidden)
    local = ranking.reshape(-1).detach()
    top = local.topk(min(n_keep, local.numel()), sorted=False).values
    if len(top) < n_keep:  # every process sends n_keep values
        top = torch.cat([top, top.new_full((n_keep - len(top),), -math.inf)])
    cut = sync.gather(top).topk(n_keep, sorted=False).values.min()
    return torch.where(ranking >= cut, torch.relu(pre), torch.zeros_like(pre))


@dataclass
class TrainingState:
    """Everything a training run needs to continue exactly: see :func:`train_step`."""

    sae: SparseAutoencoder
    optimizer: torch.optim.Optimizer
    generator: torch.Generator
    config: TrainConfig
    tokens_since_fired: torch.Tensor
    step: int = 0
    log: list = dataclasses.field(default_factory=list)
    #: Scratch tensors reused between steps (not part of the state).
    workspace: dict = dataclasses.field(default_factory=dict, repr=False)

    def dead_mask(self) -> torch.Tensor:
        return self.tokens_since_fired >= self.config.dead_after_tokens

    def state_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "sae": self.sae.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "generator": self.generator.get_state(),
            "tokens_since_fired": self.tokens_since_fired.clone(),
            "log": list(self.log),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sae.load_state_dict(state["sae"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])
        self.tokens_since_fired.copy_(state["tokens_since_fired"])
        self.step = int(state["step"])
        self.log = list(state["log"])


def _fused_adam_ok(module: torch.nn.Module) -> bool:
    """Fused Adam (one pass over each parameter instead of several) where this torch has it."""
    try:
        torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], fused=True)
    except (RuntimeError, TypeError, ValueError):
        return False
    return True


def make_training_state(sae_config: SAEConfig, config: TrainConfig) -> TrainingState:
    """A fresh SAE (initialised from ``config.seed``), its Adam optimiser and counters."""
    generator = torch.Generator().manual_seed(config.seed)
    sae = SparseAutoencoder(sae_config, generator=generator).train()
    optimizer = torch.optim.Adam(sae.parameters(), lr=config.lr, betas=(0.9, 0.999), fused=_fused_adam_ok(sae))
    return TrainingState(sae, optimizer, generator, config, torch.zeros(sae_config.d_hidden, dtype=torch.int64))


@torch.no_grad()
def _unit_norm_decoder(sae: SparseAutoencoder) -> None:
    w = sae.decoder.weight
    w.div_(w.norm(dim=0, keepdim=True).clamp_min(torch.finfo(w.dtype).eps))


@torch.no_grad()
def _remove_parallel_gradient(sae: SparseAutoencoder) -> None:
    """Project out the gradient component that would change decoder column norms."""
    w, grad = sae.decoder.weight, sae.decoder.weight.grad
    if grad is None:
        return
    unit = w / w.norm(dim=0, keepdim=True).clamp_min(1e-6)
    grad.sub_((grad * unit).sum(dim=0, keepdim=True) * unit)


@torch.no_grad()
def resample_dead_features(state: TrainingState, x: torch.Tensor) -> int:
    """Re-initialise dead features towards badly reconstructed inputs of ``x``; return how many.

    Inputs are drawn with probability proportional to their squared reconstruction error;
    feature ``i`` gets decoder column ``v`` (unit) and encoder row ``0.2 * mean alive encoder
    norm * v``, zero encoder bias, and fresh Adam moments.
    """
    sae, dead = state.sae, state.dead_mask()
    n = min(int(dead.sum()), len(x))
    if n == 0:
        return 0
    x_hat, _ = sae(x)
    weights = (x - x_hat).pow(2).sum(dim=-1).double() + 1e-12
    # The generator lives on the CPU (it is checkpointed), so draw there whatever the device.
    picks = torch.multinomial(weights.cpu(), n, replacement=False, generator=state.generator).to(x.device)
    features = dead.nonzero().flatten()[:n]
    directions = x[picks] - sae.bias
    directions = directions / directions.norm(dim=-1, keepdim=True).clamp_min(1e-8)
    alive = ~dead
    alive_norm = sae.encoder.weight[alive].norm(dim=-1).mean() if alive.any() else torch.tensor(1.0)
    sae.encoder.weight[features] = directions * alive_norm * 0.2
    sae.encoder.bias[features] = 0.0
    sae.decoder.weight[:, features] = directions.T
    for param, index in ((sae.encoder.weight, (features,)), (sae.encoder.bias, (features,)), (sae.decoder.weight, (slice(None), features))):
        moments = state.optimizer.state.get(param, {})
        for key in ("exp_avg", "exp_avg_sq"):
            if key in moments:
                moments[key][index] = 0.0
    state.tokens_since_fired[features] = 0
    return n


class StepSync:
    """How :func:`train_step` combines its work with other processes; this one is a single process.

    A data-parallel driver (:mod:`interplm_plugins.core.sae.distributed`) passes a subclass: each
    process then steps on its own slice ``x`` of a global batch and the hooks below make the
    update the one the whole batch would give (gradients summed with weights ``len(x) / global
    batch``, dead-feature counters, BatchTopK threshold and logged metrics made global).
    """

    #: True for the one-process default (no communication).
    single = True

    def global_batch(self, x: torch.Tensor) -> torch.Tensor:
        """The whole batch (used for the starting bias and for resampling dead features)."""
        return x

    def batch_sum(self, value: torch.Tensor) -> torch.Tensor:
        """``value`` summed over the processes."""
        return value

    def gather(self, values: torch.Tensor) -> torch.Tensor:
        """The 1-D ``values`` of every process, concatenated (each process sends as many)."""
        return values

    def global_size(self, x: torch.Tensor) -> int:
        return len(x)

    def reduce_gradients(self, parameters: list[torch.nn.Parameter], weight: float) -> None:
        """Make each ``.grad`` the global batch's gradient from this slice's (scaled by ``weight``)."""

    def reduce_any(self, mask: torch.Tensor) -> torch.Tensor:
        return mask

    def reduce_min(self, value: torch.Tensor) -> torch.Tensor:
        return value

    def reduce_mean(self, values: torch.Tensor, weight: float) -> torch.Tensor:
        """Per-row means of this slice -> means over the global batch."""
        return values


_SINGLE_PROCESS = StepSync()


def _buffer(workspace: dict | None, name: str, shape: tuple[int, ...], like: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """A scratch tensor kept in ``workspace`` between steps (a fresh one each step costs page faults)."""
    dtype = dtype or like.dtype
    key = (name, shape, dtype, like.device)
    if workspace is None:
        return torch.empty(shape, dtype=dtype, device=like.device)
    if key not in workspace:
        for old in [k for k in workspace if k[0] == name]:
            del workspace[old]
        workspace[key] = torch.empty(shape, dtype=dtype, device=like.device)
    return workspace[key]


#: The integer type of each float's width, to count nonzero floats by their bits.
_SAME_WIDTH_INT = {torch.float32: torch.int32, torch.bfloat16: torch.int16, torch.float16: torch.int16, torch.float64: torch.int64}


#: Per compute precision, the share of active entries in ``f`` under which a CPU ReLU step runs
#: its four products with ``f`` (or its gradient) as sparse ones
#: (:class:`~interplm_plugins.core.sae.sparse_topk.KeptEntries`). Measured at 320 -> 10,240, batch
#: 2,048, 2 threads (Zen 4): the step's time sparse / dense is, fp32, 0.38x at 0.5 % active, 0.49x
#: at 2 %, 0.68x at 5 %, 1.02x at 10 %; bf16 (its dense products twice as fast) 0.62x at 0.5 %,
#: 0.82x at 2 %, 1.16x at 5 %. A trained ReLU SAE has 1-4 % active (the demo's 3.7 %).
#: JumpReLU's step (:func:`jumprelu_loss_and_grads`, the same products) uses it too (its band's
#: sampled product runs on either path, so only the entries that fire count); measured the same way: fp32
#: 0.42x at 0.5 %, 0.73x at 5 %, 0.89x at 8 %, 1.21x at 12 %; bf16 0.70x at 0.5 %, 0.83x at 2 %,
#: 1.13x at 5 %.
SPARSE_RELU_MAX_DENSITY = {"fp32": 0.08, "bf16": 0.03}


def _sparse_products_pay(f: torch.Tensor, active: torch.Tensor, precision: str) -> bool:
    """Whether a hand-written step on ``f`` (``active`` of its entries nonzero) runs the sparse
    products: on a CPU, under :data:`SPARSE_RELU_MAX_DENSITY` of the entries."""
    return f.device.type == "cpu" and int(active) < SPARSE_RELU_MAX_DENSITY[check_precision(precision)] * f.numel()


@torch.no_grad()
def relu_loss_and_grads(
    sae: SparseAutoencoder,
    x: torch.Tensor,
    l1_coefficient: float,
    workspace: dict | None = None,
    precision: str = DEFAULT_PRECISION,
    sparse: bool | None = None,
) -> dict[str, torch.Tensor]:
    """The ReLU SAE's loss and its exact gradients, written out by hand; sets each parameter's ``.grad``.

    Loss = ``mean_b |x - x_hat|^2 + l1_coefficient * mean_b sum_i f_i |W_dec[:, i]|``, what autograd
    would differentiate, with the same result but less work: no matrix product for the encoder's
    input gradient (only its batch sum is needed, for the pre-encoder bias), and after the dense
    encoder product either four dense products, biases and batch sums folded in as an extra row or
    column of ones, the ``[B, d_hidden]`` scratch tensors reused from ``workspace`` between steps;
    or, ``sparse`` (default: on a CPU, when under :data:`SPARSE_RELU_MAX_DENSITY` of ``f`` is
    nonzero for the precision), the same four products over ``f``'s nonzero entries only (the
    ReLU's gradient is zero elsewhere), in float32. Both give the same numbers up to the order of
    float32 sums.
    Returns 0-d ``loss``, ``mse``, ``l1``, ``l0`` (mean active features per row) and ``f_sum``
    ``[d_hidden]`` (activations summed over rows).

    ``precision="bf16"``: the matrix products take bfloat16 operands (float32 accumulation in
    the kernels; the sparse ones stay float32), and ``f`` and its gradient ``[n, d_hidden]`` are
    held in bfloat16; the reconstruction error, the loss, the decoder norms and every gradient
    written to ``.grad`` are in the parameters' dtype. (autocast does not apply to products with
    ``out=``, so the casts are written out; with ``"fp32"`` they are no-ops and the arithmetic is
    exactly the float32 one.)
    """
    n = len(x)
    low = matmul_dtype(precision, x)  # the products' dtype: x's own for fp32
    w_enc, w_dec = sae.encoder.weight, sae.decoder.weight
    centred, f = _encoder_product(sae, x, low, workspace)
    torch.threshold_(f, 0.0, 0.0)  # the ReLU, writing +0.0 where relu_ would keep a -0.0
    # Active = nonzero bits: with no -0.0 left, counting f's bits as integers is the exact count
    # (several times faster than comparing floats, or than count_nonzero on them).
    active = torch.count_nonzero(f.view(_SAME_WIDTH_INT[f.dtype]))
    if sparse is None:
        sparse = _sparse_products_pay(f, active, precision)
    norms = (w_dec * w_dec).sum(dim=0).sqrt_()  # the columns' norms (norm(dim=0) is 7x slower on a row-major matrix)
    l1_grad = norms * (l1_coefficient / n)  # d loss / d f_i of the L1 term, at every active entry
    products = _relu_sparse_products if sparse else _relu_dense_products
    mse, f_sum, grad_w_dec, grad_w_enc, grad_b_enc, grad_x_hat = products(f, centred, x, sae, l1_grad, low, workspace)
    l1 = f_sum.dot(norms) / n
    grad_w_dec.addcmul_(w_dec, (f_sum * (l1_coefficient / n) / norms.clamp_min(torch.finfo(norms.dtype).tiny))[None, :])
    _set_gradients(sae, grad_w_enc, grad_b_enc, grad_w_dec, grad_x_hat)
    return {"loss": mse + l1_coefficient * l1, "mse": mse, "l1": l1, "l0": active.to(x.dtype) / n, "f_sum": f_sum.clone()}


def _encoder_product(sae: SparseAutoencoder, x: torch.Tensor, low: torch.dtype, workspace: dict | None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(centred, pre)`` of a hand-written step: ``[x - bias, 1]`` ``[n, d_in + 1]`` and the encoder's
    output ``[n, d_hidden]`` in ``low`` (the bias as the column of ones' weight), in the workspace."""
    n, (d_hidden, d_in) = len(x), sae.encoder.weight.shape
    centred = torch.cat([x - sae.bias, x.new_ones(n, 1)], dim=1)
    encoder = torch.cat([sae.encoder.weight, sae.encoder.bias[:, None]], dim=1, out=_buffer(workspace, "encoder", (d_hidden, d_in + 1), x))
    return centred, torch.mm(centred.to(low), encoder.t().to(low), out=_buffer(workspace, "f", (n, d_hidden), x, low))


def _set_gradients(sae: SparseAutoencoder, grad_w_enc, grad_b_enc, grad_w_dec, grad_x_hat, **others: torch.Tensor) -> None:
    """Writes a hand-written step's gradients to ``.grad``: the pre-encoder bias's from ``d loss / d x_hat``
    ``[n, d_in]`` and the encoder bias's (``x - bias`` feeds the encoder); ``others`` by parameter name."""
    grad_b_pre = grad_x_hat.sum(dim=0) - grad_b_enc @ sae.encoder.weight
    pairs = [(sae.encoder.weight, grad_w_enc), (sae.encoder.bias, grad_b_enc), (sae.decoder.weight, grad_w_dec), (sae.bias, grad_b_pre)]
    for param, grad in pairs + [(sae.get_parameter(name), grad) for name, grad in others.items()]:
        if param.grad is None or param.grad.shape != param.shape:
            param.grad = torch.empty_like(param)
        param.grad.copy_(grad)  # (never an alias of the workspace, which the next step overwrites)


@torch.no_grad()
def jumprelu_loss_and_grads(
    sae: SparseAutoencoder,
    x: torch.Tensor,
    l0_coefficient: float,
    workspace: dict | None = None,
    precision: str = DEFAULT_PRECISION,
    sparse: bool | None = None,
) -> dict[str, torch.Tensor]:
    """The JumpReLU SAE's loss ``mean_b |x - x_hat|^2 + l0_coefficient * L0`` and the gradients
    autograd takes through :func:`~interplm_plugins.core.sae.jumprelu.jumprelu_training` (the
    straight-through ones for the thresholds), written out by hand as :func:`relu_loss_and_grads`
    writes ReLU's, with its products (no L1 term; the activations ``relu(pre)`` above their
    thresholds, whose gradient is zero where they are zero, as the ReLU's): dense, or ``sparse``
    (default: on a CPU, when under :data:`SPARSE_RELU_MAX_DENSITY` of the entries fire) over the
    fired entries only. The thresholds' gradient needs ``d loss / d f`` only in the band, a
    product sampled there on either path.
    Returns 0-d ``loss``, ``mse``, ``l0`` (mean active features per row) and ``f_sum`` ``[d_hidden]``."""
    n = len(x)
    low = matmul_dtype(precision, x)
    w_dec, threshold, bandwidth = sae.decoder.weight, sae.threshold, sae.bandwidth
    centred, f = _encoder_product(sae, x, low, workspace)
    band = jumprelu_band(f, threshold, bandwidth, _buffer(workspace, "band", tuple(f.shape), x))
    f.masked_fill_(f <= threshold.clamp_min(0), 0.0)  # the JumpReLU of relu(pre); +0.0 where it is zero
    active = torch.count_nonzero(f.view(_SAME_WIDTH_INT[f.dtype]))
    if sparse is None:
        sparse = _sparse_products_pay(f, active, precision)
    products = _relu_sparse_products if sparse else _relu_dense_products
    mse, f_sum, grad_w_dec, grad_w_enc, grad_b_enc, grad_x_hat = products(f, centred, x, sae, x.new_zeros(f.shape[1]), low, workspace)
    grad_f_band = band.entries.sampled(grad_x_hat, w_dec)  # d loss / d f in the band, fired or not
    grad_threshold = band.entries.column_sums(grad_f_band).mul_(-threshold / bandwidth).sub_(band.counts * (l0_coefficient / (n * bandwidth)))
    _set_gradients(sae, grad_w_enc, grad_b_enc, grad_w_dec, grad_x_hat, threshold=grad_threshold)
    l0 = (active if band.above is None else band.above).to(x.dtype) / n
    return {"loss": mse + l0_coefficient * l0, "mse": mse, "l0": active.to(x.dtype) / n, "f_sum": f_sum.clone()}


#: What a ReLU step's products after the encoder's give back: ``(mse, f_sum, grad_w_dec`` (the
#: reconstruction term only), ``grad_w_enc, grad_b_enc, d loss / d x_hat`` ``[n, d_in]``).
_ReluProducts = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def _relu_dense_products(f, centred, x, sae, l1_grad, low, workspace) -> _ReluProducts:
    """Four dense products in ``low``, biases and batch sums as a row or column of ones."""
    n, (d_in_1, d_hidden) = len(x), (centred.shape[1], f.shape[1])
    w_dec, b_pre = sae.decoder.weight, sae.bias
    if low == x.dtype:
        error = torch.addmm(b_pre, f, w_dec.t()).sub_(x)  # x_hat - x
    else:  # the product in bf16, the bias and the error in x's dtype
        error = torch.mm(f, w_dec.t().to(low)).to(x.dtype).add_(b_pre).sub_(x)
    mse = error.pow(2).sum() / n
    grad_out = torch.cat([error.mul_(2.0 / n), centred[:, -1:]], dim=1)  # [d loss / d x_hat, 1]
    grad_out_low = grad_out.to(low)
    # The decoder's gradient and, in the row of ones, f summed over the batch.
    product = torch.mm(grad_out_low.t(), f, out=_buffer(workspace, "decoder_product", (d_in_1, d_hidden), x, low)).to(x.dtype)
    # d loss / d f (the L1 term enters through the row of ones), then back through the ReLU in place.
    decoder = torch.cat([w_dec, l1_grad[None, :]], out=_buffer(workspace, "decoder", (d_in_1, d_hidden), x))
    grad_pre = torch.mm(grad_out_low, decoder.to(low), out=_buffer(workspace, "grad", (n, d_hidden), x, low))
    torch.ops.aten.threshold_backward.grad_input(grad_pre, f, 0.0, grad_input=grad_pre)
    # The encoder's gradient and, in the column of ones, the encoder bias gradient.
    encoder_product = torch.mm(grad_pre.t(), centred.to(low), out=_buffer(workspace, "encoder_product", (d_hidden, d_in_1), x, low)).to(x.dtype)
    return mse, product[-1], product[:-1], encoder_product[:, :-1], encoder_product[:, -1], grad_out[:, :-1]


def _relu_sparse_products(f, centred, x, sae, l1_grad, low, workspace) -> _ReluProducts:  # noqa: ARG001 (low, workspace: the dense path's)
    """The same four products over ``f``'s nonzero entries, in float32 (CSR, :class:`KeptEntries`)."""
    n = len(x)
    w_dec, b_pre = sae.decoder.weight, sae.bias
    kept = KeptEntries.nonzero(f)
    values = kept.read(f).to(x.dtype)
    error = kept.times(values, w_dec.t()).add_(b_pre).sub_(x)  # x_hat - x
    mse = error.pow(2).sum() / n
    grad_x_hat = error.mul_(2.0 / n)
    grad_kept = kept.sampled(grad_x_hat, w_dec).add_(l1_grad[kept.cols])  # d loss / d f where f > 0
    return (mse, kept.column_sums(values), kept.transpose_times(values, grad_x_hat).t(),
            kept.transpose_times(grad_kept, centred[:, :-1]), kept.column_sums(grad_kept), grad_x_hat)  # fmt: skip


def _clip_gradients(module: torch.nn.Module, max_norm: float) -> None:
    """``clip_grad_norm_``, skipping its multiplication by exactly 1 when the norm is within bounds
    (a pass over every gradient that changes nothing; the result is the same bit for bit)."""
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    get_total_norm = getattr(torch.nn.utils, "get_total_norm", None)
    clip_with_norm = getattr(torch.nn.utils, "clip_grads_with_norm_", None)
    if get_total_norm is None or clip_with_norm is None:  # older torch
        torch.nn.utils.clip_grad_norm_(module.parameters(), max_norm)
        return
    total = get_total_norm(grads)
    if float(max_norm / (total + 1e-6)) < 1.0:
        clip_with_norm(module.parameters(), max_norm, total)


#: Kinds whose gradients are written out by hand (:func:`relu_loss_and_grads`, :func:`jumprelu_loss_and_grads`).
HAND_WRITTEN_KINDS = ("relu", "jumprelu")

#: Kinds trained with Gao et al.'s AuxK loss for dead features.
AUXK_KINDS = ("topk", *BATCH_KINDS)


def _sparse_loss_and_backward(
    state: TrainingState, x: torch.Tensor, sync: StepSync, dead: torch.Tensor, extra: dict[str, torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The loss of a TopK, BatchTopK or Matryoshka SAE on ``x``, backpropagated (autograd);
    returns the detached ``(loss, mse, l0, fired, kept)`` (``kept``: the positive activations, for
    BatchTopK's threshold) and adds extra metrics to ``extra``.

    On the CPU, TopK, BatchTopK and Matryoshka run the sparse products of
    :mod:`~interplm_plugins.core.sae.sparse_topk` (which keeps the precision to its one dense
    product). On a GPU they run their forward pass in ``config.precision``
    (bf16: the encoder and decoder products under autocast; pre-activations cast to float32 before
    the selection; the error against the float32 ``x`` and the loss in float32), the backward pass
    outside the autocast block, as autocast asks.
    """
    if state.sae.kind in SPARSE_KINDS and x.device.type in SPARSE_DEVICES:
        loss, mse, forward, extra_terms = _kept_loss(state, x, sync, dead)
        extra.update(extra_terms)
        loss.backward()
        active = forward.activations > 0
        fired = torch.zeros(state.sae.d_hidden, dtype=torch.bool, device=x.device)
        fired[forward.cols[active]] = True
        return loss.detach(), mse.detach(), active.sum().to(mse.dtype) / len(x), fired, forward.activations[active]
    with compute_precision(state.config.precision, x):
        loss, mse, f, extra_terms = _sparse_loss(state, x, sync, dead)
    extra.update(extra_terms)
    loss.backward()
    f = f.detach()
    l0 = (f > 0).sum(dim=-1).to(mse.dtype).mean()
    return loss.detach(), mse.detach(), l0, (f > 0).any(dim=0), f[f > 0]


#: Kinds trained through sparse products (:mod:`~interplm_plugins.core.sae.sparse_topk`), and the
#: devices where: measured on CPUs only; elsewhere (CUDA) the dense products, until measured there.
SPARSE_KINDS = ("topk", "batchtopk", "matryoshka")
SPARSE_DEVICES = ("cpu",)


def _kept_loss(
    state: TrainingState, x: torch.Tensor, sync: StepSync, dead: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, SparseForward, dict[str, torch.Tensor]]:
    """A TopK, BatchTopK or Matryoshka SAE's ``(loss, mse, forward pass, extra metrics)``:
    :func:`_sparse_loss`'s loss, from sparse products."""
    sae, config = state.sae, state.config
    if sae.kind == "topk":
        forward = topk_forward(sae, x, config.precision)
    else:
        segments = prefix_segments(sae) if sae.kind == "matryoshka" else None
        forward = sparse_forward(sae, x, config.precision, lambda pre: _batch_kept(sae, pre, sync), segments)
    if sae.kind == "matryoshka":
        loss, mse, x_hat = nested_losses(x, sae.bias, forward.pieces)
    else:
        (piece,) = forward.pieces
        x_hat = piece + sae.bias
        mse = (x - x_hat).pow(2).sum(dim=-1).mean()
        loss = mse
    extra = {}
    if config.dead_feature_remedy and config.auxk_alpha > 0:
        residual = (x - x_hat).detach()
        aux = sparse_auxk_loss(sae, forward, residual, dead, config.auxk_k or max(1, sae.d_in // 2), sync)
        loss = loss + config.auxk_alpha * aux
        extra["auxk"] = aux.detach()
    return loss, mse, forward, extra


def _batch_kept(sae: SparseAutoencoder, pre: torch.Tensor, sync: StepSync) -> tuple[torch.Tensor, torch.Tensor]:
    """The entries of ``pre`` that BatchTopK keeps with a positive activation, as CSR ``(crow, cols)``:
    :func:`_batch_selection`'s, found in one pass over ``pre`` on one process."""
    if not sync.single:
        return rows_of_mask(_batch_selection(sae, pre.to(torch.float32), sync) > 0)
    ranking = sae.ranking_of(pre)
    cut = sae.batch_cut(ranking)
    kept = ranking >= cut
    if ranking is not pre or cut <= 0:  # (ranking is pre and cut > 0: every kept entry is positive)
        kept &= pre > 0
    return rows_of_mask(kept)


def _batch_selection(sae: SparseAutoencoder, pre: torch.Tensor, sync: StepSync) -> torch.Tensor:
    """BatchTopK's training activations of ``pre``: over the global batch when ``sync`` has several processes."""
    return global_batch_topk(sae, pre, sync) if not sync.single else sae.sparsify(pre)


def _sparse_loss(
    state: TrainingState, x: torch.Tensor, sync: StepSync, dead: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """The dense forward pass of :func:`_sparse_loss_and_backward`: ``(loss, mse, activations, extra metrics)``
    (TopK, BatchTopK and Matryoshka train through :func:`_kept_loss`; this dense form of theirs is the reference the tests compare with)."""
    sae, config = state.sae, state.config
    extra: dict[str, torch.Tensor] = {}
    pre = sae.pre_activations(x).to(x.dtype)  # (a bf16 product's output: selection in float32)
    if sae.kind in BATCH_KINDS:
        f = _batch_selection(sae, pre, sync)
    else:
        f = sae.sparsify(pre)
    if sae.kind == "matryoshka":
        loss, mse, x_hat = nested_reconstruction_losses(sae, x, f)
    else:
        x_hat = sae.decode(f)
        mse = (x - x_hat).pow(2).sum(dim=-1).mean()
        loss = mse
    if sae.kind in AUXK_KINDS and config.dead_feature_remedy and config.auxk_alpha > 0:
        aux = auxk_loss(sae, pre, (x - x_hat).detach(), dead, config.auxk_k or max(1, sae.d_in // 2), sync)
        loss = loss + config.auxk_alpha * aux
        extra["auxk"] = aux.detach()
    return loss, mse, f, extra


def train_step(state: TrainingState, x: torch.Tensor, sync: StepSync | None = None) -> dict[str, float]:
    """One optimisation step on the batch ``x`` ``[B, d_in]``; returns the step's metrics.

    ``sync`` (a data-parallel driver's :class:`StepSync`) makes ``x`` one process's slice of a
    global batch; by default ``x`` is the whole batch.
    """
    sync = sync or _SINGLE_PROCESS
    sae, config, step = state.sae, state.config, state.step
    sae.train()
    n_global = sync.global_size(x)
    weight = len(x) / n_global
    if step == 0:
        with torch.no_grad():
            sae.bias.copy_(sync.global_batch(x).mean(dim=0))  # start the pre-encoder bias at the data's centre
    lr = learning_rate(config, step)
    for group in state.optimizer.param_groups:
        group["lr"] = lr
    dead_before = state.dead_mask()
    if sae.kind not in HAND_WRITTEN_KINDS:  # the hand-written steps overwrite every gradient (in place: no new buffers)
        state.optimizer.zero_grad(set_to_none=True)

    extra: dict[str, torch.Tensor] = {}
    if sae.kind in HAND_WRITTEN_KINDS:
        coefficient = sae.config.l1_coefficient * l1_scale(config, step)
        if sae.kind == "relu":
            parts = relu_loss_and_grads(sae, x, coefficient, state.workspace, config.precision)
            extra["l1"] = parts["l1"]
        else:
            if step == 0:
                initialise_thresholds(sae, sync.global_batch(x))
            parts = jumprelu_loss_and_grads(sae, x, coefficient, state.workspace, config.precision)
            _remove_parallel_gradient(sae)
        loss, mse, l0 = parts["loss"], parts["mse"], parts["l0"]
        fired = parts["f_sum"] > 0
    else:
        loss, mse, l0, fired, kept = _sparse_loss_and_backward(state, x, sync, dead_before, extra)
        _remove_parallel_gradient(sae)  # linear in the gradient: may precede the reduction
    sync.reduce_gradients([p for p in sae.parameters() if p.grad is not None], weight)
    if config.grad_clip > 0:
        _clip_gradients(sae, config.grad_clip)
    state.optimizer.step()
    if sae.kind != "relu":
        _unit_norm_decoder(sae)

    metrics: dict[str, float] = {}
    with torch.no_grad():
        fired = sync.reduce_any(fired)
        state.tokens_since_fired += n_global
        state.tokens_since_fired[fired] = 0
        start = threshold_estimate_start(config)
        if sae.kind in BATCH_KINDS and step >= start:
            smallest = sync.reduce_min(kept.min() if kept.numel() else kept.new_zeros(()))
            # the running mean of the cut-offs since ``start`` (a function of the step: exact on resume)
            sae.threshold.copy_(smallest if step == start else sae.threshold + (smallest - sae.threshold) / (step - start + 1))
        if sae.kind == "relu" and config.dead_feature_remedy and resampling_allowed(config, step):
            metrics["resampled"] = resample_dead_features(state, sync.global_batch(x))
        names = ["loss", "mse", "l0", *extra]
        values = sync.reduce_mean(torch.stack([loss, mse, l0, *extra.values()]).double(), weight).tolist()
    state.step += 1
    metrics.update(step=state.step, **dict(zip(names, values)))
    metrics.update(dead_fraction=float(state.dead_mask().float().mean()), lr=lr)
    return metrics


# ------------------------------------------------------------------------------------ the loop


def _store_identity(store) -> dict[str, Any]:
    meta = getattr(store, "metadata", {}) or {}
    return {"dim": int(store.dim), "num_residues": int(store.num_residues), "plm_identity": meta.get("plm_identity"), "layer": meta.get("layer")}


def _save_checkpoint(state: TrainingState, out_dir: Path, sae_config: SAEConfig, store_id: dict[str, Any]) -> None:
    payload = {
        "format": CHECKPOINT_FORMAT,
        "sae_config": sae_config.to_dict(),
        "train_config": state.config.to_dict(),
        "store": store_id,
        **state.state_dict(),
    }
    with atomic_path(out_dir / CHECKPOINT_NAME) as tmp:
        torch.save(payload, tmp)
    write_text_atomic(out_dir / LOG_NAME, "".join(json.dumps(entry) + "\n" for entry in state.log))


def _load_checkpoint(path: Path, sae_config: SAEConfig, config: TrainConfig, store_id: dict[str, Any]) -> dict[str, Any]:
    try:
        payload = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # a foreign or damaged file; atomic writes make a torn one unlikely
        reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise InterPLMError(f"cannot read training checkpoint ({reason}); rerun with --no-resume", file=path) from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise InterPLMError("not a training checkpoint of this toolkit; rerun with --no-resume", file=path)
    differences = []
    saved_sae = payload["sae_config"]
    for key, value in sae_config.to_dict().items():
        if saved_sae.get(key) != value:
            differences.append(f"{key}: {saved_sae.get(key)!r} -> {value!r}")
    # A setting a checkpoint predates was its default then (precision: fp32).
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig) if f.default is not dataclasses.MISSING}
    for key, value in config.to_dict().items():
        saved = payload["train_config"].get(key, defaults.get(key))
        if key not in RESUMABLE_CHANGES and saved != value:
            differences.append(f"{key}: {saved!r} -> {value!r}")
    for key, value in store_id.items():
        if payload["store"].get(key) != value:
            differences.append(f"store {key}: {payload['store'].get(key)!r} -> {value!r}")
    if differences:
        raise InterPLMError(
            f"checkpoint was made with different settings ({'; '.join(differences)}); rerun with --no-resume or another output folder",
            file=path,
        )
    return payload


def _batches(store, config: TrainConfig, start_batch: int):
    """Training batches from ``start_batch`` on, as float32 tensors, cycling through the store."""
    for batch in store.iter_batches(config.batch_size, seed=config.seed, start_batch=start_batch):
        yield torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))


def prepared_sae_config(store, sae_config: SAEConfig) -> SAEConfig:
    """``sae_config`` checked against ``store`` (width), its PLM fields filled from the store's metadata."""
    meta = getattr(store, "metadata", {}) or {}
    if getattr(store, "complete", True) is False:
        # An embed that was killed and not rerun: training on part of the data would be silent bias.
        raise InterPLMError("the embedding store is incomplete (its `interplm embed` was interrupted); rerun that command to finish it",
                            file=getattr(store, "path", None))  # fmt: skip
    if sae_config.d_in != store.dim:
        raise InterPLMError(
            f"SAE of width {sae_config.d_in} does not fit the store's {meta.get('plm', 'PLM')} layer {meta.get('layer', '?')} (dim {store.dim})",
            file=getattr(store, "path", None),
        )
    return dataclasses.replace(
        sae_config,
        plm=sae_config.plm if sae_config.plm is not None else meta.get("plm"),
        plm_identity=sae_config.plm_identity if sae_config.plm_identity is not None else meta.get("plm_identity"),
        plm_layer=sae_config.plm_layer if sae_config.plm_layer is not None else meta.get("layer"),
        normalized=False,
    )


def train_sae(
    store,
    sae_config: SAEConfig,
    train_config: TrainConfig,
    out_dir: str | os.PathLike,
    resume: bool = True,
    progress: bool = True,
) -> SparseAutoencoder:
    """Train an SAE on ``store``'s residues; write ``out_dir/sae.safetensors`` (+ ``.json``), ``train_log.jsonl``.

    ``sae_config``'s PLM fields default to the store's metadata. With ``resume`` (default) an
    existing ``out_dir/checkpoint.pt`` of the same settings is continued; otherwise it is removed.
    """
    out_dir = Path(out_dir)
    sae_config = prepared_sae_config(store, sae_config)
    store_id = _store_identity(store)
    out_dir.mkdir(parents=True, exist_ok=True)
    checkpoint = out_dir / CHECKPOINT_NAME
    state = make_training_state(sae_config, train_config)
    if resume and checkpoint.exists():
        state.load_state_dict(_load_checkpoint(checkpoint, sae_config, train_config, store_id))
    elif checkpoint.exists():
        checkpoint.unlink()

    with tqdm(total=train_config.steps, initial=state.step, unit="step", desc="train SAE", disable=not progress) as bar:
        if state.step < train_config.steps:
            for x in _batches(store, train_config, state.step):
                metrics = train_step(state, x)
                bar.update(1)
                if state.step % train_config.log_every == 0 or state.step == train_config.steps:
                    state.log.append(metrics)
                    bar.set_postfix(loss=f"{metrics['loss']:.4g}", l0=f"{metrics['l0']:.1f}", dead=f"{metrics['dead_fraction']:.2f}")
                if state.step % train_config.checkpoint_every == 0 or state.step == train_config.steps:
                    _save_checkpoint(state, out_dir, sae_config, store_id)
                if state.step >= train_config.steps:
                    break
    if state.step < train_config.steps:
        raise InterPLMError(f"the store ran out of batches after step {state.step}", file=getattr(store, "path", None))
    sae = state.sae.eval()
    save_sae(sae, out_dir / SAE_NAME)
    return sae
