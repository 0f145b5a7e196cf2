"""Steering ESM-2 with an SAE feature: clamp or scale it inside the forward pass, watch the predictions.

At the SAE's layer, for the chosen residues, the residual stream ``x`` is encoded (``f =
encode(x)``), the feature is set (``f'[j] = value``) or scaled (``f'[j] = scale * f[j]``), and
``decode(f') - decode(f)`` (``= (f'[j] - f[j]) * decoder column j``) is added to ``x``. Adding the
difference, rather than replacing ``x`` by ``decode(f')``, leaves the SAE's reconstruction error
in the stream, so a feature left at its own value changes nothing at all. The rest of the model
then runs as usual and the masked-LM head's distribution at each chosen position is compared with
the unsteered one.

Positions are 1-based residue numbers (token index = position, after ESM's BOS token).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from interplm_plugins.core.inputs.sequences import clean_sequence
from interplm_plugins.core.plm.intervene import replace_layer_output
from interplm_plugins.core.sae.model import SparseAutoencoder, check_fits
from interplm_plugins.errors import InterPLMError

#: The residues masked resampling may choose from.
STANDARD_RESIDUES = "ACDEFGHIKLMNPQRSTVWY"
#: Longest sequence steered in one forward pass (ESM-2's training context without BOS/EOS).
MAX_STEER_LENGTH = 1022


@dataclass
class SteeringResult:
    """Predictions at ``positions`` (1-based) with and without steering ``feature`` at ``layer``.

    ``logits_*`` are ``[P, V]`` over the model's vocabulary ``tokens``; ``activation_before`` is
    the feature's activation there in the unsteered pass, ``activation_after`` the value set.
    """

    sequence: str
    feature: int
    layer: int
    positions: list[int]
    masked: bool
    tokens: list[str]
    activation_before: np.ndarray
    activation_after: np.ndarray
    logits_before: np.ndarray
    logits_after: np.ndarray

    @property
    def probs_before(self) -> np.ndarray:
        return _softmax(self.logits_before)

    @property
    def probs_after(self) -> np.ndarray:
        return _softmax(self.logits_after)

    @property
    def kl(self) -> np.ndarray:
        """KL(after ‖ before) in nats at each position: how far steering moved the prediction."""
        log_after = _log_softmax(self.logits_after)
        log_before = _log_softmax(self.logits_before)
        return (np.exp(log_after) * (log_after - log_before)).sum(axis=-1)

    def probability_change(self, token: str) -> np.ndarray:
        """``p_after - p_before`` of ``token`` (e.g. ``"C"``) at each position."""
        if token not in self.tokens:
            raise InterPLMError(f"{token!r} is not a token of the model's vocabulary")
        i = self.tokens.index(token)
        return self.probs_after[:, i] - self.probs_before[:, i]

    def table(self, k: int = 3) -> str:
        """A plain-text table: per position, activation, top tokens before/after, largest gains, KL."""
        before, after, kl = self.probs_before, self.probs_after, self.kl
        header = f"{'pos':>5} {'res':>3} {'act':>11}  {'top before':<26} {'top after':<26} {'largest gains':<30} {'KL':>7}"
        lines = [header, "-" * len(header)]
        for i, pos in enumerate(self.positions):
            top_b = " ".join(f"{self.tokens[t]}:{before[i, t]:.2f}" for t in np.argsort(-before[i])[:k])
            top_a = " ".join(f"{self.tokens[t]}:{after[i, t]:.2f}" for t in np.argsort(-after[i])[:k])
            delta = after[i] - before[i]
            gains = " ".join(f"{self.tokens[t]}:{delta[t]:+.2f}" for t in np.argsort(-delta)[:k] if delta[t] > 0)
            act = f"{self.activation_before[i]:.2f}->{self.activation_after[i]:.2f}"
            lines.append(
                f"{pos:>5} {self.sequence[pos - 1]:>3} {act:>11}  {top_b:<26} {top_a:<26} {gains or '-':<30} {kl[i]:>7.4f}"
            )
        return "\n".join(lines)


def _softmax(logits: np.ndarray) -> np.ndarray:
    return np.exp(_log_softmax(logits))


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def _check_inputs(plm, sae: SparseAutoencoder, layer: int, sequence: str, feature: int, positions) -> tuple[str, list[int]]:
    check_fits(sae, plm, layer)
    sequence = clean_sequence(sequence, record="steered sequence")
    if len(sequence) > MAX_STEER_LENGTH:
        raise InterPLMError(
            f"sequence of {len(sequence)} residues is longer than the {MAX_STEER_LENGTH} steered in one pass; steer a window of it",
            record="steered sequence",
        )
    if isinstance(feature, bool) or not 0 <= int(feature) < sae.d_hidden:
        raise InterPLMError(f"feature {feature} does not exist (the SAE has features 0..{sae.d_hidden - 1})")
    positions = list(range(1, len(sequence) + 1)) if positions is None else [int(p) for p in positions]
    if not positions:
        raise InterPLMError("no positions to steer")
    bad = [p for p in positions if not 1 <= p <= len(sequence)]
    if bad:
        raise InterPLMError(f"position {bad[0]} is outside the sequence (1..{len(sequence)})", record="steered sequence")
    if len(set(positions)) != len(positions):
        raise InterPLMError("positions are listed more than once", record="steered sequence")
    return sequence, positions


def _tokenize(plm, sequence: str) -> torch.Tensor:
    _, _, tokens = plm.alphabet.get_batch_converter()([("steered", sequence)])
    return tokens


def _steering_fn(sae: SparseAutoencoder, token_index: torch.Tensor, feature: int, value, scale, record: dict):
    """The layer replacement: add ``decode(f') - decode(f)`` at ``token_index`` (batch row 0)."""

    def fn(x: torch.Tensor) -> torch.Tensor:
        x = x.clone()
        r = x[token_index, 0, :].to(sae.decoder.weight.dtype)
        f = sae.encode(r)
        f_new = f.clone()
        f_new[:, feature] = float(value) if value is not None else f[:, feature] * float(scale)
        record["before"] = f[:, feature].detach().cpu().numpy().astype(np.float64)
        record["after"] = f_new[:, feature].detach().cpu().numpy().astype(np.float64)
        x[token_index, 0, :] = (r + (sae.decode(f_new) - sae.decode(f))).to(x.dtype)
        return x

    return fn


def _check_setting(value: float | None, scale: float | None) -> None:
    if (value is None) == (scale is None):
        raise InterPLMError("give exactly one of value (clamp the feature to it) or scale (multiply it)")
    for name, number in (("value", value), ("scale", scale)):
        if number is not None and not np.isfinite(float(number)):
            raise InterPLMError(f"{name} must be a finite number, got {number}")


@torch.no_grad()
def steer(
    plm,
    sae: SparseAutoencoder,
    layer: int,
    sequence: str,
    feature: int,
    value: float | None = None,
    scale: float | None = None,
    positions: Sequence[int] | None = None,
    *,
    mask: bool = False,
) -> SteeringResult:
    """Clamp (``value``) or scale (``scale``) ``feature`` at ``positions`` (1-based; default all residues)
    inside ``plm``'s forward pass at ``layer`` and compare the masked-LM predictions there.

    With ``mask=True`` the residues at ``positions`` are replaced by ``<mask>`` in both passes, so
    the model predicts them from context (and the steered feature).
    """
    _check_setting(value, scale)
    sequence, positions = _check_inputs(plm, sae, layer, sequence, feature, positions)
    tokens = _tokenize(plm, sequence)
    token_index = torch.tensor(positions, dtype=torch.long)
    if mask:
        tokens[0, token_index] = plm.alphabet.mask_idx
    before = plm.model(tokens)["logits"][0, token_index].double().cpu().numpy()
    record: dict = {}
    with replace_layer_output(plm, layer, _steering_fn(sae, token_index, int(feature), value, scale, record)):
        after = plm.model(tokens)["logits"][0, token_index].double().cpu().numpy()
    return SteeringResult(
        sequence=sequence,
        feature=int(feature),
        layer=int(layer),
        positions=positions,
        masked=mask,
        tokens=list(plm.alphabet.all_toks),
        activation_before=record["before"],
        activation_after=record["after"],
        logits_before=before,
        logits_after=after,
    )


@torch.no_grad()
def sample_steered(
    plm,
    sae: SparseAutoencoder,
    layer: int,
    sequence: str,
    feature: int,
    positions: Sequence[int],
    *,
    value: float | None = None,
    scale: float | None = None,
    n: int = 5,
    temperature: float = 1.0,
    seed: int = 0,
    steered: bool = True,
) -> list[str]:
    """``n`` sequences resampled at ``positions`` by iterative masked prediction while steering.

    Each sample visits the positions in a random order; at each, the residue is masked, the model
    (steered at all ``positions`` when ``steered``) predicts it, and a standard residue is drawn
    from ``softmax(logits / temperature)``. ``steered=False`` gives the unsteered baseline.
    """
    if steered:
        _check_setting(value, scale)
    if not temperature > 0:
        raise InterPLMError(f"temperature must be > 0, got {temperature}")
    if int(n) < 1:
        raise InterPLMError(f"the number of samples must be >= 1, got {n}")
    sequence, positions = _check_inputs(plm, sae, layer, sequence, feature, positions)
    residue_ids = torch.tensor([plm.alphabet.get_idx(aa) for aa in STANDARD_RESIDUES])
    token_index = torch.tensor(positions, dtype=torch.long)
    generator = torch.Generator().manual_seed(int(seed))
    samples = []
    for _ in range(int(n)):
        tokens = _tokenize(plm, sequence)
        for k in torch.randperm(len(positions), generator=generator).tolist():
            pos = positions[k]
            tokens[0, pos] = plm.alphabet.mask_idx
            if steered:
                with replace_layer_output(plm, layer, _steering_fn(sae, token_index, int(feature), value, scale, {})):
                    logits = plm.model(tokens)["logits"][0, pos]
            else:
                logits = plm.model(tokens)["logits"][0, pos]
            probs = torch.softmax(logits[residue_ids].double() / float(temperature), dim=-1)
            tokens[0, pos] = residue_ids[torch.multinomial(probs, 1, generator=generator)].item()
        samples.append("".join(plm.alphabet.get_tok(int(t)) for t in tokens[0, 1 : len(sequence) + 1]))
    return samples


def feature_logit_gradients(plm, sae: SparseAutoencoder, layer: int, sequence: str, position: int, *, mask: bool = True) -> np.ndarray:
    """``[F, V]``: first-order change of each token's logit at ``position`` per unit of each feature there.

    The Jacobian of the logits at ``position`` with respect to the layer's representation at that
    residue, times the decoder columns: which features would most raise (or lower) which residues
    if clamped higher. A linear estimate; :func:`steer` measures the real effect.
    """
    sequence, _ = _check_inputs(plm, sae, layer, sequence, 0, [position])
    tokens = _tokenize(plm, sequence)
    if mask:
        tokens[0, position] = plm.alphabet.mask_idx
    captured: dict = {}

    def fn(x: torch.Tensor) -> torch.Tensor:
        leaf = x[position, 0, :].detach().clone().requires_grad_(True)
        captured["x"] = leaf
        x = x.clone()
        x[position, 0, :] = leaf
        return x

    with torch.enable_grad(), replace_layer_output(plm, layer, fn):
        logits = plm.model(tokens)["logits"][0, position]
        rows = [torch.autograd.grad(logits[v], captured["x"], retain_graph=True)[0] for v in range(logits.shape[0])]
    jacobian = torch.stack(rows).to(sae.decoder.weight.dtype)  # [V, E]
    return (sae.decoder.weight.detach().T @ jacobian.T).double().cpu().numpy()  # [F, V]
