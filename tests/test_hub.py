"""Models and published SAEs by name (core/plm/hub.py, core/sae/releases.py, core/sae/interprot.py) through a real Hub-protocol server on
127.0.0.1 (tests/hub_server.py) set as HF_ENDPOINT, then from the filled cache under HF_HUB_OFFLINE=1."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from hf_models import save_hf_esm2, save_interplm_ae, save_interprot_sae
from hub_server import HubServer

from interplm_plugins.core.inputs.sequences import ProteinRecord, read_fasta
from interplm_plugins.core.interpret.pipeline import load_pipeline
from interplm_plugins.core.plm.embed import embed_sequences
from interplm_plugins.core.sae.files import load_sae, sae_hash
from interplm_plugins.core.sae.releases import resolve_sae_spec
from interplm_plugins.errors import InterPLMError

ESM2_8M = "facebook/esm2_t6_8M_UR50D"
TINY = "facebook/esm2_t3_tiny"


@pytest.fixture(scope="module")
def hub_root(tmp_path_factory):
    """Repos in the published layouts: ESM-2 8M's architecture, InterPLM's layer_4, a tiny model with both SAE formats."""
    root = tmp_path_factory.mktemp("hub")
    save_hf_esm2(root / ESM2_8M, layers=6, dim=320, heads=20)
    save_interplm_ae(root / "Elana/InterPLM-esm2-8m/layer_4/ae_normalized.pt", 320, 10240)
    save_hf_esm2(root / TINY, layers=3, dim=64, heads=4)
    save_interplm_ae(root / "testlab/tiny-saes/layer_2/ae_normalized.pt", 64, 128, seed=1)
    save_interprot_sae(root / "testlab/tiny-saes/esm2_plm64_l2_sae128_k8.safetensors", 64, 128, seed=2)
    save_interprot_sae(root / "liambai/InterProt-ESM2-SAEs/esm2_plm1280_l24_sae4096.safetensors", 1280, 4096, seed=3)
    return root


@pytest.fixture()
def hub(hub_root, tmp_path, monkeypatch):
    """The server as HF_ENDPOINT, an empty HF_HOME, and network allowed (conftest sets INTERPLM_OFFLINE)."""
    monkeypatch.delenv("INTERPLM_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.setenv("INTERPLM_CACHE_DIR", str(tmp_path / "activations"))
    with HubServer(hub_root) as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        yield server


@pytest.fixture(scope="module")
def protein(swissprot_fasta) -> ProteinRecord:
    return next(r for r in read_fasta(swissprot_fasta) if 150 <= len(r.sequence) <= 300)


def test_published_names_download_then_load_offline_from_the_cache(hub, hub_root, protein, monkeypatch):
    pipeline = load_pipeline(model=ESM2_8M, sae="interplm-esm2-8m/layer_4")
    assert (pipeline.layer, pipeline.num_features, pipeline.plm.name) == (4, 10240, ESM2_8M)
    assert pipeline.sae.config.plm == "esm2_t6_8M_UR50D" and pipeline.sae_source == "interplm-esm2-8m/layer_4"
    assert ("GET", "/Elana/InterPLM-esm2-8m/resolve/main/layer_4/ae_normalized.pt") in hub.requests
    acts = pipeline.activations(protein.sequence)
    # The same computed by hand from the served files: embeddings of layer 4, then InterPLM's ReLU encoder.
    (_, reps), = embed_sequences(pipeline.plm, [protein], [4])
    state = torch.load(hub_root / "Elana/InterPLM-esm2-8m/layer_4/ae_normalized.pt", weights_only=True)
    expected = torch.relu((torch.from_numpy(reps[4]) - state["bias"]) @ state["encoder.weight"].T + state["encoder.bias"]).numpy()
    assert np.abs(acts - expected).max() <= 1e-4 and (acts > 0).any()

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there: offline must not need it
    seen = len(hub.requests)
    again = load_pipeline(model=ESM2_8M, sae="hf://Elana/InterPLM-esm2-8m/layer_4")
    assert len(hub.requests) == seen
    assert again.plm.identity == pipeline.plm.identity and again.sae_hash == pipeline.sae_hash


def test_sae_of_another_plm_is_refused_before_downloading_it(hub):
    with pytest.raises(InterPLMError, match=r"trained on esm2_t6_8M_UR50D \(6 layers, dim 320\), but the loaded PLM is facebook/esm2_t3_tiny \(3 layers, dim 64\)"):
        load_pipeline(model=TINY, sae="interplm-esm2-8m/layer_4")
    assert not any("InterPLM-esm2-8m" in path for _, path in hub.requests)
    with pytest.raises(InterPLMError, match="trained on esm2_t33_650M_UR50D"):
        load_pipeline(model=ESM2_8M, sae="interprot-esm2-650m/l24_sae4096")


@pytest.mark.parametrize(
    "spec, message",
    [
        ("interplm-esm2-8m/layer_9", "has SAEs for layers 1, 2, 3, 4, 5, 6, not layer 9"),
        ("interprot-esm2-650m/l33_sae4096", "not layer 33"),  # reads the stream before ESM-2's final norm
        ("interprot-esm2-650m/layer_24", "named lLAYER_saeWIDTH"),
        ("hf://Elana/InterPLM-esm2-8m", "name the SAE inside the repository"),
        ("hf://datasets/someone/data/x.pt", "not a dataset"),
    ],
)
def test_bad_specs_are_one_line(hub, spec, message):
    with pytest.raises(InterPLMError, match=message):
        resolve_sae_spec(spec)


def test_short_names_resolve_to_the_published_files(hub_root, hub):
    found = resolve_sae_spec("interplm-esm2-8m/layer_4/ae_normalized.pt")
    assert (found.plm, found.layer, found.fmt) == ("esm2_t6_8M_UR50D", 4, "interplm")
    assert found.path.read_bytes() == (hub_root / "Elana/InterPLM-esm2-8m/layer_4/ae_normalized.pt").read_bytes()
    with pytest.raises(InterPLMError, match="none of layer_4/ae_unnormalized.pt"):  # the server has only the normalised one
        resolve_sae_spec("interplm-esm2-8m/layer_4/ae_unnormalized.pt")


def test_revision_pinning(hub, hub_root):
    commit = hub.commit("testlab/tiny-saes")
    pinned = resolve_sae_spec(f"hf://testlab/tiny-saes@{commit}/layer_2")
    assert pinned.layer == 2 and sae_hash(load_sae(pinned.path)) == sae_hash(load_sae(hub_root / "testlab/tiny-saes/layer_2/ae_normalized.pt"))
    assert any(f"/resolve/{commit}/" in path for _, path in hub.requests)
    with pytest.raises(InterPLMError, match="the Hub refused testlab/tiny-saes"):
        resolve_sae_spec("hf://testlab/tiny-saes@v9/layer_2")


def test_interprot_sae_reads_what_interprot_computes(hub, hub_root, protein):
    """InterProt's encoder (per-residue standardisation, b_pre, top-k of ReLU) on ESM-2 without token-dropout
    rescaling, as its code embeds; the oracle is transformers run with token_dropout=False."""
    import transformers

    with pytest.raises(InterPLMError, match="not normalised"):  # InterProt's raw scale: no concept thresholds yet
        load_pipeline(model=TINY, sae="hf://testlab/tiny-saes/esm2_plm64_l2_sae128_k8.safetensors")
    pipeline = load_pipeline(model=TINY, sae="hf://testlab/tiny-saes/esm2_plm64_l2_sae128_k8.safetensors", require_normalized=False)
    assert (pipeline.layer, pipeline.sae.kind, pipeline.sae.config.k) == (2, "topk", 8)
    assert pipeline.plm.model.token_dropout is False and pipeline.plm.identity.endswith(":no-token-dropout")
    acts = pipeline.activations(protein.sequence)
    assert ((acts > 0).sum(axis=1) <= 8).all() and (acts > 0).any()

    model = transformers.EsmModel.from_pretrained(hub_root / TINY, token_dropout=False).eval()
    tokens = torch.tensor([[0] + [pipeline.plm.alphabet.get_idx(a) for a in protein.sequence] + [2]])
    with torch.no_grad():
        x = model(input_ids=tokens, output_hidden_states=True).hidden_states[2][0, 1:-1]
    from safetensors.torch import load_file

    w = load_file(str(hub_root / "testlab/tiny-saes/esm2_plm64_l2_sae128_k8.safetensors"))
    centred = x - x.mean(-1, keepdim=True)
    pre = (centred / (centred.std(-1, keepdim=True) + 1e-5) - w["b_pre"]) @ w["w_enc"] + w["b_enc"]
    top = pre.topk(8, dim=-1)
    expected = torch.zeros_like(pre).scatter_(-1, top.indices, torch.relu(top.values)).numpy()
    assert np.abs(acts - expected).max() <= 1e-3


def test_no_network_and_no_cache_is_one_line_saying_what_to_download(tmp_path):
    """Through the real command line: exit status 2, one line naming the file and where the cache is.

    (Offline mode: with an unreachable endpoint huggingface_hub first retries for ~20 s, then the same line
    says "the Hub could not be reached".)"""
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("HF_")}
    env.update(HF_HOME=str(tmp_path / "empty_home"), HF_HUB_OFFLINE="1", INTERPLM_OFFLINE="")
    result = subprocess.run(
        [sys.executable, "-m", "interplm_plugins.cli", "-q", "features", "MKTAYIAKQR", "--model", ESM2_8M, "--out", str(tmp_path / "f")],
        capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "interplm: error:" in lines[0]
    assert f"{ESM2_8M}/config.json is not in the Hugging Face cache and offline mode is on" in lines[0]
    assert f"run `hf download {ESM2_8M}` and copy its cache to" in lines[0] and str(tmp_path / "empty_home" / "hub") in lines[0]
    assert not (tmp_path / "f").exists()


def test_sae_not_cached_offline_names_the_file_to_download(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    with pytest.raises(InterPLMError) as err:
        resolve_sae_spec("interplm-esm2-8m/layer_4")
    assert "run `hf download Elana/InterPLM-esm2-8m layer_4/ae_normalized.pt`" in str(err.value)
    assert str(tmp_path / "empty" / "hub") in str(err.value) and "\n" not in str(err.value)


def test_interprot_short_name_finds_its_published_file_name(hub, hub_root):
    from interplm_plugins.core.sae.interprot import load_interprot_sae

    found = resolve_sae_spec("interprot-esm2-650m/l24_sae4096")
    assert found.path.name == "esm2_plm1280_l24_sae4096.safetensors" and (found.plm, found.layer, found.fmt) == ("esm2_t33_650M_UR50D", 24, "interprot")
    sae = load_interprot_sae(found.path, plm_name=found.plm, layer=found.layer)
    assert (sae.d_in, sae.d_hidden, sae.config.k, sae.config.plm_layer) == (1280, 4096, 128, 24)


def test_model_revision_pinning(hub):
    from interplm_plugins.core.plm.loading import load_plm

    plm = load_plm(f"{TINY}@{hub.commit(TINY)}")
    assert plm.name == TINY and plm.num_layers == 3
    assert any(f"/{TINY}/resolve/{hub.commit(TINY)}/model.safetensors" in path for _, path in hub.requests)
