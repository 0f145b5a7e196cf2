"""ESM-2 protein language models through fair-esm: the model type and the architecture's sizes.

:class:`PLM` is a loaded ESM-2 with its alphabet, its name, where it came from and the identity of
its weights; :data:`ESM2_MODELS` are fair-esm's published sizes; :func:`demo_model_path` is the
embedded demonstration checkpoint; :func:`new_esm2` and :func:`save_esm2_checkpoint` build and
write fair-esm ESM-2 checkpoints. Loading by name or path is :mod:`~interplm_plugins.core.plm.loading`,
the ``weights_only`` reading of files :mod:`~interplm_plugins.core.plm.weights`.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from esm.data import Alphabet
from esm.model.esm2 import ESM2

from interplm_plugins.errors import InterPLMError

#: fair-esm's ESM-2 hub names -> (layers, embedding dim, attention heads).
ESM2_MODELS: dict[str, tuple[int, int, int]] = {
    "esm2_t6_8M_UR50D": (6, 320, 20),
    "esm2_t12_35M_UR50D": (12, 480, 20),
    "esm2_t30_150M_UR50D": (30, 640, 20),
    "esm2_t33_650M_UR50D": (33, 1280, 20),
    "esm2_t36_3B_UR50D": (36, 2560, 40),
    "esm2_t48_15B_UR50D": (48, 5120, 40),
}
DEMO_MODEL_NAME = "esm2_t4_3M_interplm_demo"
DEMO_ALIASES = ("demo", "interplm-demo", DEMO_MODEL_NAME)

@dataclass
class PLM:
    """A loaded ESM-2 model with its alphabet; ``identity`` names the exact weights (for caches)."""

    model: ESM2
    alphabet: Alphabet
    name: str
    source: str
    identity: str

    @property
    def num_layers(self) -> int:
        return self.model.num_layers

    @property
    def embed_dim(self) -> int:
        return self.model.embed_dim

    def check_layer(self, layer: int) -> int:
        """Return ``layer`` if the model has it (0 = embeddings, 1..num_layers), else raise."""
        if not 0 <= int(layer) <= self.num_layers:
            raise InterPLMError(
                f"layer {layer} does not exist: {self.name} has layers 1..{self.num_layers} (0 = token embeddings)",
                file=self.source,
            )
        return int(layer)


def demo_model_path() -> Path:
    """Path of the embedded demo checkpoint inside the installed package."""
    return Path(__file__).resolve().parent.parent.parent / "data" / "demo" / f"{DEMO_MODEL_NAME}.pt"


def new_esm2(num_layers: int, embed_dim: int, attention_heads: int, seed: int = 0) -> ESM2:
    """A freshly initialised fair-esm ``ESM2`` (ESM-1b alphabet), e.g. to train or to test with."""
    torch.manual_seed(seed)
    alphabet = Alphabet.from_architecture("ESM-1b")
    model = ESM2(num_layers=num_layers, embed_dim=embed_dim, attention_heads=attention_heads, alphabet=alphabet, token_dropout=True)
    # BERT-style small init: with the LM head tied to the embedding, PyTorch's N(0, 1) embedding
    # init gives initial logits of std ~sqrt(dim) and a masked-LM loss of ~28 instead of ~3.
    torch.nn.init.normal_(model.embed_tokens.weight, std=0.02)
    with torch.no_grad():
        model.embed_tokens.weight[alphabet.padding_idx].zero_()
    return model.eval()


def save_esm2_checkpoint(model: ESM2, path: str | os.PathLike, dtype: torch.dtype = torch.float16) -> Path:
    """Save ``model`` in fair-esm's ESM-2 checkpoint format, with ``<stem>-contact-regression.pt`` beside it.

    ``esm.pretrained.load_model_and_alphabet_local`` loads the result (once ``argparse.Namespace``
    is allowlisted for ``weights_only`` loading, as :mod:`~interplm_plugins.core.plm.weights` does on
    import). The stem should start with ``esm2`` because fair-esm chooses its loader by that prefix.
    """
    from interplm_plugins.core.atomic import atomic_path

    path = Path(path)
    heads = model.attention_heads
    state = model.state_dict()
    body = {f"encoder.{k}": v.detach().to(dtype).clone() for k, v in state.items() if not k.startswith("contact_head.regression")}
    cfg = argparse.Namespace(
        encoder_layers=model.num_layers, encoder_embed_dim=model.embed_dim, encoder_attention_heads=heads, token_dropout=model.token_dropout
    )
    with atomic_path(path) as tmp:
        torch.save({"cfg": {"model": cfg}, "model": body}, tmp)
    regression = {k: v.detach().to(dtype).clone() for k, v in state.items() if k.startswith("contact_head.regression")}
    with atomic_path(path.with_name(path.stem + "-contact-regression.pt")) as tmp:
        torch.save({"model": regression}, tmp)
    return path
