"""How good an SAE is: reconstruction and sparsity on stored embeddings, and masked-LM loss recovered.

``evaluate_sae`` (on a sample of an :class:`EmbeddingStore`):
- ``mse``: mean squared error per embedding element;
- ``fraction_variance_explained``: ``1 - sum |x - x_hat|^2 / sum |x - mean(x)|^2`` over the sample;
- ``l0``: mean number of active (> 0) features per residue;
- ``dead_fraction``: fraction of features never active on the sample.

``loss_recovered`` masks ``mask_fraction`` of each protein's residues (always with the mask
token; the same positions in every condition) and measures the PLM's masked-LM cross-entropy
(nats per masked residue) clean, with layer ``layer``'s residue representations replaced by the
SAE reconstruction, and with them zeroed. BOS/EOS are left untouched: the SAE never saw them.
``fidelity = (ce_zero - ce_sae) / (ce_zero - ce_clean)``: 1 is a perfect SAE, 0 no better than
zero-ablation (NaN if zeroing the layer does not change the loss).
"""

from __future__ import annotations

import contextlib
import os
from typing import Callable, Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from interplm_plugins.core.plm.intervene import replace_layer_output
from interplm_plugins.core.plm.store import iter_store_sample
from interplm_plugins.core.sae.model import SparseAutoencoder, check_fits, check_fits_store
from interplm_plugins.errors import InterPLMError


@torch.no_grad()
def evaluate_sae(
    sae: SparseAutoencoder, store, max_residues: int | None = 100_000, batch_size: int = 4096, progress: bool = False
) -> dict[str, float]:
    """Reconstruction and sparsity statistics of ``sae`` on (a sample of) ``store``; see the module docstring."""
    check_fits_store(sae, store)
    was_training = sae.training
    sae.eval()
    n = 0
    sq_err = 0.0
    active = 0.0
    ever_active = torch.zeros(sae.d_hidden, dtype=torch.bool)
    # Variance about the sample mean from running sums (float64: the sums are large).
    sum_x = torch.zeros(sae.d_in, dtype=torch.float64)
    sum_sq = 0.0
    total = store.num_residues if max_residues is None else min(max_residues, store.num_residues)
    with tqdm(total=total, unit="res", desc="evaluate", disable=not progress) as bar:
        for x in iter_store_sample(store, max_residues, batch_size):
            x_hat, f = sae(x)
            sq_err += float((x - x_hat).double().pow(2).sum())
            active += float((f > 0).sum())
            ever_active |= (f > 0).any(dim=0)
            sum_x += x.double().sum(dim=0)
            sum_sq += float(x.double().pow(2).sum())
            n += len(x)
            bar.update(len(x))
    sae.train(was_training)
    if n == 0:
        raise InterPLMError("the embedding store holds no residues", file=getattr(store, "path", None))
    total_var = sum_sq - float((sum_x**2).sum()) / n
    return {
        "num_residues": n,
        "mse": sq_err / (n * sae.d_in),
        "fraction_variance_explained": 1.0 - sq_err / total_var if total_var > 0 else float("nan"),
        "l0": active / n,
        "dead_fraction": float((~ever_active).float().mean()),
    }


def _residue_positions(tokens: torch.Tensor, alphabet) -> torch.Tensor:
    """``(T, B)`` boolean mask of real residues (not BOS, EOS or padding)."""
    special = torch.tensor([alphabet.cls_idx, alphabet.eos_idx, alphabet.padding_idx])
    return ~torch.isin(tokens, special).T


@torch.no_grad()
def masked_lm_loss(
    plm,
    records: Iterable,
    mask_fraction: float = 0.15,
    seed: int = 0,
    layer: int | None = None,
    replace: Callable[[torch.Tensor], torch.Tensor] | None = None,
    max_length: int = 1022,
    progress: bool = False,
) -> tuple[float, int]:
    """Masked-LM cross-entropy (nats per masked residue) and the number of masked residues.

    With ``layer`` and ``replace``, residue rows of that layer's representation ``(N, E)`` are
    replaced by ``replace(rows)``. Sequences are cut to their first ``max_length`` residues.
    """
    if not 0 < mask_fraction < 1:
        raise InterPLMError(f"mask_fraction must lie in (0, 1), not {mask_fraction}")
    records = list(records)
    if not records:
        raise InterPLMError("no proteins to compute the masked-LM loss on")
    alphabet = plm.alphabet
    convert = alphabet.get_batch_converter()
    rng = np.random.default_rng(seed)
    model = plm.model.eval()
    device = next(model.parameters()).device
    total_nll = 0.0
    total_masked = 0
    residues: torch.Tensor | None = None

    def splice(x: torch.Tensor) -> torch.Tensor:
        assert residues is not None and replace is not None
        out = x.clone()
        out[residues] = replace(x[residues])
        return out

    with replace_layer_output(plm, layer, splice) if replace is not None else contextlib.nullcontext():
        for record in tqdm(records, unit="protein", desc="masked LM", disable=not progress):
            sequence = record.sequence[:max_length]
            _, _, tokens = convert([(record.id, sequence)])
            n_mask = max(1, int(round(mask_fraction * len(sequence))))
            positions = torch.from_numpy(np.sort(rng.choice(len(sequence), size=n_mask, replace=False)) + int(alphabet.prepend_bos))
            targets = tokens[0, positions].clone()
            tokens[0, positions] = alphabet.mask_idx
            residues = _residue_positions(tokens, alphabet).to(device)
            logits = model(tokens.to(device))["logits"][0, positions.to(device)]
            total_nll += float(F.cross_entropy(logits.float(), targets.to(device), reduction="sum"))
            total_masked += n_mask
    return total_nll / total_masked, total_masked


def loss_recovered(
    plm,
    sae: SparseAutoencoder,
    records: Iterable,
    layer: int,
    mask_fraction: float = 0.15,
    seed: int = 0,
    max_proteins: int | None = 100,
    progress: bool = False,
) -> dict[str, float]:
    """Clean / SAE-spliced / zero-ablated masked-LM loss and the fidelity; see the module docstring."""
    check_fits(sae, plm, layer)
    records = list(records)[:max_proteins] if max_proteins is not None else list(records)
    sae = sae.eval()
    param = next(sae.parameters())

    def reconstruct(rows: torch.Tensor) -> torch.Tensor:
        return sae(rows.to(param))[0].to(rows)

    kwargs = dict(mask_fraction=mask_fraction, seed=seed, progress=progress)
    ce_clean, n_masked = masked_lm_loss(plm, records, **kwargs)
    ce_sae, _ = masked_lm_loss(plm, records, layer=layer, replace=reconstruct, **kwargs)
    ce_zero, _ = masked_lm_loss(plm, records, layer=layer, replace=torch.zeros_like, **kwargs)
    denominator = ce_zero - ce_clean
    return {
        "ce_clean": ce_clean,
        "ce_sae": ce_sae,
        "ce_zero": ce_zero,
        "fidelity": (ce_zero - ce_sae) / denominator if denominator != 0 else float("nan"),
        "num_proteins": len(records),
        "num_masked": n_masked,
    }


def held_out_quality(plm, sae: SparseAutoencoder, records: Sequence, work_dir: str | os.PathLike, max_proteins: int = 60) -> dict[str, float]:
    """:func:`evaluate_sae` on the embeddings of ``records`` (embedded to ``work_dir``) and :func:`loss_recovered` on the first ``max_proteins``.

    Both on proteins the SAE never saw, so the model card's quality numbers can be recomputed from
    the shipped PLM and SAE alone.
    """
    from interplm_plugins.core.plm.embed import embed_to_store

    store = embed_to_store(plm, list(records), sae.config.plm_layer, work_dir)[sae.config.plm_layer]
    quality = evaluate_sae(sae, store, max_residues=None)
    quality.update(loss_recovered(plm, sae, records, sae.config.plm_layer, max_proteins=max_proteins))
    quality.update(num_proteins_evaluated=len(store.proteins), num_residues_evaluated=int(store.num_residues))
    return quality
