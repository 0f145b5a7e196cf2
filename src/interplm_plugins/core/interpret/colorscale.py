"""The one colour scale of PyMOL, napari and the command line: what 0 and 1 of a palette mean.

By default (``"feature"``) colours run over the feature's normalised activation, 0 to 1 (1 is the
feature's maximum on the SAE's training data: normalisation made it so), so one colour means the
same activation on every chain and structure. ``"chain"`` stretches each chain to its own maximum,
to see the pattern of a feature that is weak on this protein; the legend then says so.
"""

from __future__ import annotations

import numpy as np

from interplm_plugins.errors import InterPLMError

#: The colour scales: the feature's 0..1, or each chain's own 0..max.
SCALES = ("feature", "chain")
DEFAULT_SCALE = "feature"


def check_scale(scale: str) -> str:
    """``scale`` as one of :data:`SCALES` (case-insensitive), else an error naming them."""
    name = str(scale).strip().lower()
    if name not in SCALES:
        raise InterPLMError(f"unknown scale {scale!r}: use {' or '.join(SCALES)} (0..1 of the feature, or each chain's own maximum)")
    return name


def unit_values(values: np.ndarray, scale: str = DEFAULT_SCALE) -> tuple[np.ndarray, float]:
    """One chain's activations mapped to the palette's 0..1, and the activation at 1.

    NaN (no value) stays NaN; with ``"chain"`` the chain's maximum maps to 1 (a chain without a
    positive value keeps the feature scale).
    """
    values = np.asarray(values, dtype=np.float64)
    top = 1.0
    if check_scale(scale) == "chain":
        known = values[~np.isnan(values)]
        top = float(known.max()) if known.size and known.max() > 0 else 1.0
    return np.clip(values / top, 0.0, 1.0), top


def scale_legend(scale: str, top: float | list[float]) -> str:
    """What the colour bar's ends mean, for legends: ``"0 to 1 (feature scale)"``."""
    if check_scale(scale) == "feature":
        return "0 to 1 of the feature's maximum (feature scale)"
    tops = [top] if isinstance(top, float) else list(top)
    return "0 to each chain's maximum (" + ", ".join(f"{t:.3f}" for t in tops) + "; chain scale)"
