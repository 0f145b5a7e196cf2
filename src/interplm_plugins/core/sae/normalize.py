"""InterPLM's feature normalisation: scale each feature so its activations lie in [0, 1].

The per-feature maximum over a sample of residues is folded into the weights (encoder rows and
biases divided by it, decoder columns multiplied by it), so reconstructions are unchanged and a
normalised activation of 1 means "as strong as this feature gets on the sample". Features that
never fire on the sample (dead) keep scale 1.
"""

from __future__ import annotations

import numpy as np
import torch
from tqdm.auto import tqdm

from interplm_plugins.core.plm.store import iter_store_sample
from interplm_plugins.core.sae.model import SparseAutoencoder, check_fits_store, copy_sae
from interplm_plugins.errors import InterPLMError


@torch.no_grad()
def feature_max_activations(
    sae: SparseAutoencoder, store, max_residues: int | None = None, batch_size: int = 4096, progress: bool = False
) -> np.ndarray:
    """Maximum activation ``[d_hidden]`` of each feature over (a sample of) the store's residues."""
    check_fits_store(sae, store)
    was_training = sae.training
    sae.eval()
    maxes = torch.zeros(sae.d_hidden)
    total = store.num_residues if max_residues is None else min(max_residues, store.num_residues)
    with tqdm(total=total, unit="res", desc="feature maxima", disable=not progress) as bar:
        for x in iter_store_sample(store, max_residues, batch_size):
            maxes = torch.maximum(maxes, sae.encode(x).amax(dim=0))
            bar.update(len(x))
    sae.train(was_training)
    return maxes.numpy()


@torch.no_grad()
def normalize_sae(sae: SparseAutoencoder, maxes: np.ndarray) -> SparseAutoencoder:
    """A copy of ``sae`` whose feature ``i`` activations are divided by ``maxes[i]`` (1 where it is 0)."""
    maxes = np.asarray(maxes, dtype=np.float64)
    if maxes.shape != (sae.d_hidden,):
        raise InterPLMError(f"need {sae.d_hidden} feature maxima, got shape {maxes.shape}")
    if not np.isfinite(maxes).all() or (maxes < 0).any():
        raise InterPLMError("feature maxima must be finite and >= 0")
    scale = torch.from_numpy(np.where(maxes > 0, maxes, 1.0)).to(torch.float32)
    out = copy_sae(sae)
    out.encoder.weight.div_(scale[:, None])
    out.encoder.bias.div_(scale)
    out.decoder.weight.mul_(scale[None, :])
    out.activation_scale.mul_(scale)
    out.config.normalized = True
    return out
