import argparse

import esm
import pytest
import torch

from interplm_plugins.core.plm.loading import load_plm
from interplm_plugins.core.plm.model import PLM, new_esm2, save_esm2_checkpoint
from interplm_plugins.errors import InterPLMError


def test_checkpoint_loads_with_fair_esm_local_loader(tiny_esm2_path):
    model, alphabet = esm.pretrained.load_model_and_alphabet_local(str(tiny_esm2_path))
    assert model.num_layers == 2 and model.embed_dim == 32
    assert alphabet.get_idx("A") == 5


def test_load_plm_by_path_matches_saved_weights(tiny_esm2_path):
    plm = load_plm(tiny_esm2_path)
    assert isinstance(plm, PLM) and plm.num_layers == 2
    ref = new_esm2(num_layers=2, embed_dim=32, attention_heads=4, seed=0)
    w = plm.model.embed_tokens.weight
    assert torch.allclose(w, ref.embed_tokens.weight.half().float())
    assert plm.check_layer(2) == 2
    with pytest.raises(InterPLMError, match="layer 5 does not exist"):
        plm.check_layer(5)


def test_hub_name_found_in_models_dir(tmp_path, monkeypatch):
    save_esm2_checkpoint(new_esm2(2, 32, 4, seed=1), tmp_path / "esm2_t6_8M_UR50D.pt")
    monkeypatch.setenv("INTERPLM_MODELS_DIR", str(tmp_path))
    plm = load_plm("esm2_t6_8M_UR50D")
    assert plm.name == "esm2_t6_8M_UR50D" and plm.num_layers == 2


def test_hub_name_not_cached_says_where_to_put_it(tmp_path, monkeypatch):
    monkeypatch.setenv("INTERPLM_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(InterPLMError) as err:
        load_plm("esm2_t12_35M_UR50D")
    msg = str(err.value)
    assert "not cached" in msg and str(tmp_path / "hub" / "checkpoints" / "esm2_t12_35M_UR50D.pt") in msg


def test_truncated_and_foreign_checkpoints_are_clear_errors(tiny_esm2_path, tmp_path):
    cut = tmp_path / "esm2_cut.pt"
    cut.write_bytes(tiny_esm2_path.read_bytes()[:5000])
    with pytest.raises(InterPLMError, match="esm2_cut.pt: not a readable fair-esm checkpoint"):
        load_plm(cut)
    foreign = tmp_path / "esm2_foreign.pt"
    torch.save({"weights": torch.zeros(3)}, foreign)
    with pytest.raises(InterPLMError, match="not an ESM-2 checkpoint"):
        load_plm(foreign)


def test_pickled_code_is_refused(tmp_path):
    evil = tmp_path / "esm2_evil.pt"
    torch.save({"cfg": {"model": argparse.Namespace(x=1)}, "model": {}, "extra": __import__("collections").OrderedDict(a=__import__("fractions").Fraction(1, 3))}, evil)
    with pytest.raises(InterPLMError, match="not a readable fair-esm checkpoint"):
        load_plm(evil)


def test_unknown_name(tmp_path):
    with pytest.raises(InterPLMError, match="neither a checkpoint file nor a known ESM-2 name"):
        load_plm("esm3_giant")
