"""SAE features of proteins: encoding embeddings, and streaming a PLM layer's features over many records.

:func:`encode_features` is the one SAE encode of per-residue embeddings (float32, inference mode,
whatever precision computed the embeddings); :func:`iter_feature_activations` embeds records with
the PLM (:func:`~interplm_plugins.core.plm.embed.embed_sequences`) and encodes each protein, the
stream the feature database and the reports are built from.
"""

from __future__ import annotations

from typing import Iterable, Iterator

import numpy as np
import torch

from interplm_plugins.core.inputs.sequences import ProteinRecord
from interplm_plugins.core.plm.embed import embed_sequences
from interplm_plugins.core.plm.model import PLM
from interplm_plugins.core.plm.precision import DEFAULT_PRECISION
from interplm_plugins.core.sae.model import SparseAutoencoder, check_fits


@torch.no_grad()
def encode_features(sae: SparseAutoencoder, embeddings: np.ndarray) -> np.ndarray:
    """SAE feature activations ``[L, F]`` (float32) of ``[L, D]`` embeddings, in inference mode.

    Always float32, whatever precision computed the embeddings: the encode is one small product
    per protein, and its activations are what thresholds and colours compare.
    """
    sae.eval()
    return sae.encode(torch.from_numpy(np.ascontiguousarray(embeddings, dtype=np.float32))).numpy()


def iter_feature_activations(
    plm: PLM, sae: SparseAutoencoder, layer: int, records: Iterable[ProteinRecord], toks_per_batch: int = 4096, progress: bool = False,
    precision: str = DEFAULT_PRECISION,
) -> Iterator[tuple[ProteinRecord, np.ndarray]]:
    """``(record, [L, F] activations)`` for each record (in embedding order, not input order);
    ``precision``: the PLM's compute precision (the SAE encode is float32)."""
    check_fits(sae, plm, layer)
    records = list(records)
    by_id = {r.id: r for r in records}
    for pid, reps in embed_sequences(plm, records, [layer], toks_per_batch=toks_per_batch, progress=progress, precision=precision):
        yield by_id[pid], encode_features(sae, reps[layer])
