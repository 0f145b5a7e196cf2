"""ESM-2 in Hugging Face's format -> fair-esm's ESM2 (core/plm/hf_esm.py), against transformers itself as the oracle."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import transformers  # the oracle (the test extra installs it)
from esm.data import Alphabet
from hf_models import save_hf_esm2

from interplm_plugins.core.inputs.sequences import read_fasta
from interplm_plugins.core.plm.embed import embed_sequences
from interplm_plugins.core.plm.loading import load_plm
from interplm_plugins.errors import InterPLMError


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    return save_hf_esm2(tmp_path_factory.mktemp("hf") / "esm2_t3_tiny", layers=3, dim=64, heads=4)


@pytest.fixture(scope="module")
def real_proteins(swissprot_fasta):
    """Seven real Swiss-Prot proteins of different lengths (all within one 1,022-residue window)."""
    records = [r for r in read_fasta(swissprot_fasta) if 30 <= len(r.sequence) <= 700]
    return sorted(records, key=lambda r: len(r.sequence))[:: max(1, len(records) // 7)][:7]


def _transformers_hidden_states(folder, records, masked_lm=True):
    """transformers' own forward pass over one padded batch: ``[layer][batch, token, dim]`` and the logits."""
    cls = transformers.EsmForMaskedLM if masked_lm else transformers.EsmModel
    model = cls.from_pretrained(folder).eval()
    alphabet = Alphabet.from_architecture("ESM-1b")
    _, _, tokens = alphabet.get_batch_converter()([(r.id, r.sequence) for r in records])
    mask = (tokens != alphabet.padding_idx).long()
    with torch.no_grad():
        out = model(input_ids=tokens, attention_mask=mask, output_hidden_states=True)
    return tokens, mask, out


def _max_difference(plm, records, out) -> float:
    layers = list(range(plm.num_layers + 1))
    ours = dict(embed_sequences(plm, records, layers))
    worst = 0.0
    for i, record in enumerate(records):
        n = len(record.sequence)
        for layer in layers:
            ref = out.hidden_states[layer][i, 1 : n + 1].numpy()
            worst = max(worst, float(np.abs(ours[record.id][layer] - ref).max()))
    return worst


def test_hf_folder_gives_transformers_hidden_states(hf_folder, real_proteins):
    plm = load_plm(hf_folder)
    assert (plm.num_layers, plm.embed_dim, plm.model.token_dropout) == (3, 64, True)
    tokens, mask, out = _transformers_hidden_states(hf_folder, real_proteins)
    assert _max_difference(plm, real_proteins, out) <= 1e-4  # every layer, embeddings (0) to the last
    with torch.no_grad():  # the LM head came across too
        logits = plm.model(tokens)["logits"]
    assert float((logits - out.logits).abs()[mask.bool()].max()) <= 1e-4


def test_esm_model_without_lm_head_and_pytorch_bin(tmp_path, real_proteins):
    """``EsmModel`` (no LM head) saved as ``pytorch_model.bin`` (read with weights_only) loads and agrees."""
    folder = save_hf_esm2(tmp_path / "esm_model", layers=2, dim=32, heads=4, seed=3, masked_lm=False)
    model = transformers.EsmModel.from_pretrained(folder)
    (folder / "model.safetensors").unlink()
    torch.save(model.state_dict(), folder / "pytorch_model.bin")
    plm = load_plm(folder)
    _, _, out = _transformers_hidden_states(folder, real_proteins[:3], masked_lm=False)
    assert _max_difference(plm, real_proteins[:3], out) <= 1e-4


def test_identity_depends_on_weights_not_file_format(hf_folder, tmp_path):
    plm = load_plm(hf_folder)
    copy = save_hf_esm2(tmp_path / "esm2_t3_tiny", layers=3, dim=64, heads=4)  # same seed: same weights
    state = transformers.EsmForMaskedLM.from_pretrained(copy).state_dict()
    (copy / "model.safetensors").unlink()
    torch.save(state, copy / "pytorch_model.bin")
    assert load_plm(copy).identity == plm.identity
    other = load_plm(save_hf_esm2(tmp_path / "other" / "esm2_t3_tiny", layers=3, dim=64, heads=4, seed=1))
    assert other.identity != plm.identity and other.identity.startswith("esm2_t3_tiny:")


def test_vocabulary_in_another_order_is_refused(hf_folder, tmp_path):
    folder = save_hf_esm2(tmp_path / "swapped", layers=1, dim=32, heads=4)
    tokens = Alphabet.from_architecture("ESM-1b").all_toks
    tokens[4], tokens[5] = tokens[5], tokens[4]  # L <-> A
    (folder / "vocab.txt").write_text("\n".join(tokens) + "\n")
    with pytest.raises(InterPLMError, match=r"vocabulary differs from fair-esm's ESM-2 alphabet at token 4 \('A', expected 'L';"):
        load_plm(folder)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"position_embedding_type": "absolute"}, "position_embedding_type is 'absolute'"),
        ({"vocab_size": 35}, "vocab_size is 35"),
        ({"intermediate_size": 100}, "intermediate_size is 100"),
        ({"is_folding_model": True}, "ESMFold"),
    ],
)
def test_configs_fair_esm_cannot_run_are_refused(hf_folder, tmp_path, change, message):
    folder = tmp_path / "bad"
    folder.mkdir()
    config = json.loads((hf_folder / "config.json").read_text())
    config.update(change)
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "model.safetensors").write_bytes((hf_folder / "model.safetensors").read_bytes())
    with pytest.raises(InterPLMError, match=message) as err:
        load_plm(folder)
    assert str(folder / "config.json") in str(err.value)


def test_folder_without_weights_is_one_line(tmp_path, hf_folder):
    folder = tmp_path / "empty"
    folder.mkdir()
    (folder / "config.json").write_text((hf_folder / "config.json").read_text())
    with pytest.raises(InterPLMError, match="no model.safetensors or pytorch_model.bin"):
        load_plm(folder)


def test_same_weights_as_a_fair_esm_checkpoint_give_the_same_fingerprint(hf_folder, tmp_path):
    """The HF model saved in fair-esm's .pt format loads with equal weights and weights fingerprint (the .pt's
    own identity stays file-based: see docs/MODELS.md)."""
    from interplm_plugins.core.plm.hf_esm import weights_fingerprint
    from interplm_plugins.core.plm.model import save_esm2_checkpoint

    hf = load_plm(hf_folder)
    pt = load_plm(save_esm2_checkpoint(hf.model, tmp_path / "esm2_t3_tiny.pt", dtype=torch.float32))
    assert all(torch.equal(a, b) for a, b in zip(hf.model.state_dict().values(), pt.model.state_dict().values()))
    assert weights_fingerprint(pt.model) == hf.identity.split(":")[1]


def test_pickled_code_in_pytorch_model_bin_is_refused(hf_folder, tmp_path):
    import collections
    import fractions
    import shutil

    folder = tmp_path / "evil"
    folder.mkdir()
    shutil.copy(hf_folder / "config.json", folder / "config.json")
    torch.save({"w": torch.zeros(1), "x": collections.OrderedDict(a=fractions.Fraction(1, 3))}, folder / "pytorch_model.bin")
    with pytest.raises(InterPLMError, match="refused: the file holds pickled Python objects other than tensors"):
        load_plm(folder)


def test_a_missing_file_path_is_not_taken_for_a_hub_repo(tmp_path):
    with pytest.raises(InterPLMError, match="neither a checkpoint file nor a known ESM-2 name"):
        load_plm("models/esm2_typo.pt")
