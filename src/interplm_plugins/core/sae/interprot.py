"""InterProt's TopK SAEs (``liambai/InterProt-ESM2-SAEs``) as this toolkit's ``kind="topk"`` SAE.

InterProt (github.com/etowahadams/interprot, ``interprot/sae_model.py``) publishes safetensors files named
``esm2_plm1280_l{layer}_sae{width}.safetensors`` with four tensors: ``w_enc`` [d_model, d_hidden],
``w_dec`` [d_hidden, d_model], ``b_enc`` [d_hidden], ``b_pre`` [d_model] (plus the training statistic
``stats_last_nonzero``, ignored). Its encoder standardises each residue vector first (subtract the mean,
divide by the unbiased standard deviation + 1e-5), subtracts ``b_pre``, projects, and keeps the top ``k``
pre-activations (ReLU). ``k`` is not stored: it is read from a ``_kN`` in the file name, else InterProt's
default and what its inference code uses, 128. The AuxK term only shapes training; it plays no part here.

Two differences from InterPLM's inputs are part of the SAE's contract, not of its weights:

* the standardisation, done by :class:`StandardizedTopKSAE` (a ``SparseAutoencoder`` whose
  ``pre_activations`` standardises; ``decode`` returns standardised units, ``forward`` undoes it);
* InterProt embeds with ESM-2's token-dropout rescaling switched off (its ``ESM2Model`` is built with
  ``token_dropout=False``), so :func:`plm_without_token_dropout` gives the PLM view these SAEs must read.
  Its layer-33 SAE reads the last block *before* ESM-2's final layer norm, which this toolkit's
  embeddings do not expose, so layer 33 is not offered.
"""

from __future__ import annotations

import copy
import os
import re
from pathlib import Path

import torch

from interplm_plugins.core.sae.model import SAEConfig, SparseAutoencoder
from interplm_plugins.errors import InterPLMError

DEFAULT_K = 128
STANDARDIZE_EPS = 1e-5
_KEYS = ("w_enc", "w_dec", "b_enc", "b_pre")


def standardize(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """InterProt's per-residue input normalisation: ``((x - mean) / (std + eps), mean, std)``, unbiased std."""
    mean = x.mean(dim=-1, keepdim=True)
    centred = x - mean
    std = centred.std(dim=-1, keepdim=True)
    return centred / (std + STANDARDIZE_EPS), mean, std


class StandardizedTopKSAE(SparseAutoencoder):
    """A TopK :class:`SparseAutoencoder` that standardises each input vector before encoding (InterProt)."""

    def pre_activations(self, x: torch.Tensor) -> torch.Tensor:
        return super().pre_activations(standardize(x)[0])

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        _, mean, std = standardize(x)
        f = self.encode(x)
        return self.decode(f) * (std + STANDARDIZE_EPS) + mean, f


def k_from_filename(path: str | os.PathLike) -> int:
    """``..._k64...`` in the file name -> 64; otherwise :data:`DEFAULT_K`."""
    found = re.search(r"_k(\d+)(?:_|\.|$)", Path(path).name)
    return int(found.group(1)) if found else DEFAULT_K


def load_interprot_sae(path: str | os.PathLike, plm_name: str | None = None, layer: int | None = None, k: int | None = None) -> StandardizedTopKSAE:
    """Read an InterProt safetensors SAE into a :class:`StandardizedTopKSAE` (eval mode)."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as handle:
            state = {key.removeprefix("sae_model."): handle.get_tensor(key) for key in handle.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise InterPLMError(f"not a readable safetensors file ({exc})", file=path) from None
    missing = [key for key in _KEYS if key not in state]
    if missing:
        raise InterPLMError(f"not an InterProt SAE: lacks {', '.join(missing)} (has {', '.join(sorted(state)[:6])})", file=path)
    w_enc, w_dec, b_enc, b_pre = (state[key] for key in _KEYS)
    if w_enc.ndim != 2:
        raise InterPLMError(f"InterProt w_enc must be 2-D, not of shape {tuple(w_enc.shape)}", file=path)
    d_in, d_hidden = (int(n) for n in w_enc.shape)
    expected = {"w_dec": (d_hidden, d_in), "b_enc": (d_hidden,), "b_pre": (d_in,)}
    for key, shape in expected.items():
        if tuple(state[key].shape) != shape:
            raise InterPLMError(f"InterProt {key} has shape {tuple(state[key].shape)}, expected {shape}", file=path)
    try:
        config = SAEConfig(d_in=d_in, d_hidden=d_hidden, kind="topk", k=k or k_from_filename(path), plm=plm_name, plm_layer=layer)
    except InterPLMError as err:
        raise InterPLMError(err.reason, file=path) from None
    sae = StandardizedTopKSAE(config)
    converted = {
        "bias": b_pre, "encoder.weight": w_enc.T, "encoder.bias": b_enc, "decoder.weight": w_dec.T,
        "activation_scale": torch.ones(d_hidden),
    }  # fmt: skip
    for key, value in converted.items():
        if not value.is_floating_point() or not bool(torch.isfinite(value).all()):
            raise InterPLMError(f"InterProt weight for {key} is not finite floating point", file=path)
    sae.load_state_dict({key: value.to(torch.float32).contiguous() for key, value in converted.items()})
    return sae.eval()


def plm_without_token_dropout(plm):
    """The same weights seen as InterProt embeds them: ESM-2's token-dropout rescaling off.

    A shallow copy of the model (parameters shared, no memory cost) with ``token_dropout = False``, and
    an identity that says so, so cached activations of the two views never mix.
    """
    if not plm.model.token_dropout:
        return plm
    model = copy.copy(plm.model)  # shares parameters and submodules; only the flag differs
    model.token_dropout = False
    return type(plm)(model=model, alphabet=plm.alphabet, name=plm.name, source=plm.source, identity=f"{plm.identity}:no-token-dropout")
