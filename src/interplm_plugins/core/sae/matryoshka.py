"""Matryoshka BatchTopK sparse autoencoders (Bussmann et al. 2025; Parsan et al. on ESM-2 3B).

A BatchTopK SAE whose dictionary is split into nested prefixes ``m_1 < m_2 < ... < d_hidden``:
each prefix alone is trained to reconstruct the input, so early features learn general concepts
and later ones refine them. Loss = the mean over the prefixes (the full dictionary included) of
``|x - (bias + W_dec[:, :m] f[:m])|^2``; features are chosen by BatchTopK over the whole
dictionary, and at inference, as for BatchTopK, by the threshold estimated in training (never by
the batch). The prefix ends are the config's ``prefixes`` (the full width is implied).
"""

from __future__ import annotations

import torch

from interplm_plugins.errors import InterPLMError


def validate_prefixes(prefixes, d_hidden: int, file=None) -> None:
    """Raise unless ``prefixes`` is a strictly increasing list of integers in ``1..d_hidden - 1``."""
    if not isinstance(prefixes, list) or not all(isinstance(p, int) and not isinstance(p, bool) for p in prefixes):
        raise InterPLMError(f"a matryoshka SAE needs prefixes as a list of integers, not {prefixes!r}", file=file)
    if any(b <= a for a, b in zip(prefixes, prefixes[1:])) or (prefixes and not 1 <= prefixes[0] <= prefixes[-1] < d_hidden):
        raise InterPLMError(f"matryoshka prefixes must increase strictly within 1..{d_hidden - 1}, not {prefixes}", file=file)


def default_prefixes(d_hidden: int, levels: int = 4) -> list[int]:
    """Prefix ends halving from the full width: ``d/8, d/4, d/2`` for 4 levels (as Bussmann et al. nest them)."""
    return sorted({d_hidden >> i for i in range(1, levels) if d_hidden >> i >= 1})


def prefix_segments(sae) -> list[tuple[int, int]]:
    """The dictionary's column ranges ``[start, end)`` between consecutive prefix ends, in order."""
    ends = [*sae.config.prefixes, sae.d_hidden]
    return list(zip([0, *ends[:-1]], ends))


def nested_losses(x: torch.Tensor, bias: torch.Tensor, pieces) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(mean over prefixes of the prefix MSEs, full-dictionary MSE, full reconstruction)`` from
    ``pieces``, the decoder's output of each of :func:`prefix_segments`' ranges, in order."""
    reconstruction = bias.expand_as(x)
    losses = []
    for piece in pieces:
        reconstruction = reconstruction + piece
        losses.append((x - reconstruction).pow(2).sum(dim=-1).mean())
    return torch.stack(losses).mean(), losses[-1], reconstruction


def nested_reconstruction_losses(sae, x: torch.Tensor, f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`nested_losses` of the dense activations ``f``; the decoder runs once, in pieces."""
    weight = sae.decoder.weight
    return nested_losses(x, sae.bias, (f[:, start:end] @ weight[:, start:end].T for start, end in prefix_segments(sae)))
