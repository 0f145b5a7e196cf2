"""Real checkpoints in the published formats, made by the tests: transformers ESM-2 folders, InterPLM's
``ae.pt`` and InterProt's safetensors SAEs (random weights, real layouts)."""

from __future__ import annotations

from pathlib import Path

import torch
from esm.data import Alphabet


def save_hf_esm2(folder: Path, layers: int = 3, dim: int = 64, heads: int = 4, seed: int = 0, masked_lm: bool = True, **config) -> Path:
    """``EsmForMaskedLM(config).save_pretrained(folder)`` (or ``EsmModel``) plus the tokenizer's ``vocab.txt``.

    Weights are transformers' initialisation plus noise, so that biases and layer norms are not all 0 / 1
    and every part of the conversion is exercised.
    """
    from transformers import EsmConfig, EsmForMaskedLM, EsmModel

    alphabet = Alphabet.from_architecture("ESM-1b")
    settings = dict(
        vocab_size=len(alphabet), hidden_size=dim, num_hidden_layers=layers, num_attention_heads=heads, intermediate_size=4 * dim,
        position_embedding_type="rotary", token_dropout=True, mask_token_id=alphabet.mask_idx, pad_token_id=alphabet.padding_idx,
        emb_layer_norm_before=False, layer_norm_eps=1e-5, max_position_embeddings=1026, hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )  # fmt: skip
    settings.update(config)
    torch.manual_seed(seed)
    model = (EsmForMaskedLM if masked_lm else EsmModel)(EsmConfig(**settings)).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.05)
    model.save_pretrained(folder)
    (Path(folder) / "vocab.txt").write_text("\n".join(alphabet.all_toks) + "\n")
    return Path(folder)


def save_interplm_ae(path: Path, d_in: int, d_hidden: int, seed: int = 0) -> Path:
    """An InterPLM / dictionary_learning ReLU ``ae.pt`` state dict (``bias``, ``encoder.*``, ``decoder.weight``)."""
    generator = torch.Generator().manual_seed(seed)
    decoder = torch.randn(d_in, d_hidden, generator=generator)
    decoder /= decoder.norm(dim=0, keepdim=True)
    state = {
        "bias": torch.randn(d_in, generator=generator) * 0.1,
        "encoder.weight": decoder.T.clone() * 3.0,
        "encoder.bias": torch.full((d_hidden,), -0.2),
        "decoder.weight": decoder,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return path


def save_interprot_sae(path: Path, d_in: int, d_hidden: int, seed: int = 0) -> Path:
    """An InterProt safetensors SAE: ``w_enc`` [d_in, d_hidden], ``w_dec``, ``b_enc``, ``b_pre``, ``stats_last_nonzero``."""
    from safetensors.torch import save_file

    generator = torch.Generator().manual_seed(seed)
    w_enc = torch.randn(d_in, d_hidden, generator=generator) / d_in**0.5
    state = {
        "w_enc": w_enc,
        "w_dec": (w_enc.T / w_enc.T.norm(dim=1, keepdim=True)).contiguous(),
        "b_enc": torch.randn(d_hidden, generator=generator) * 0.1,
        "b_pre": torch.randn(d_in, generator=generator) * 0.1,
        "stats_last_nonzero": torch.zeros(d_hidden, dtype=torch.long),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path))
    return path
