"""Sparse autoencoders: the three kinds, files (safetensors + JSON, InterPLM's ae.pt), normalisation,
training with dead-feature remedies, and masked-LM loss recovered on a real fair-esm ESM-2."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from interplm_plugins.core.inputs.sequences import read_fasta
from interplm_plugins.core.plm.embed import embed_to_store
from interplm_plugins.core.sae.evaluate import evaluate_sae, loss_recovered
from interplm_plugins.core.sae.files import load_sae, sae_hash, save_sae
from interplm_plugins.core.sae.model import SAEConfig, SparseAutoencoder
from interplm_plugins.core.sae.normalize import feature_max_activations, normalize_sae
from interplm_plugins.core.sae.train import TrainConfig, resampling_allowed, train_sae
from interplm_plugins.errors import InterPLMError


@pytest.fixture(scope="module")
def store(tiny_plm, swissprot_fasta, tmp_path_factory):
    records = [r for r in read_fasta(swissprot_fasta) if len(r.sequence) < 500][:40]
    return embed_to_store(tiny_plm, records, 2, tmp_path_factory.mktemp("sae_store"))[2]


def _sae(kind: str, k: int | None = None, d_hidden: int = 48) -> SparseAutoencoder:
    return SparseAutoencoder(SAEConfig(d_in=32, d_hidden=d_hidden, kind=kind, k=k, l1_coefficient=0.01), generator=torch.Generator().manual_seed(0))


def test_topk_keeps_k_features_per_residue():
    sae = _sae("topk", k=5).eval()
    f = sae.encode(torch.randn(20, 32))
    assert ((f > 0).sum(dim=1) <= 5).all() and ((f > 0).sum(dim=1) >= 1).all()


def test_batchtopk_keeps_k_per_residue_on_average_while_training():
    sae = _sae("batchtopk", k=4).train()
    f = sae.encode(torch.randn(50, 32))
    assert int((f > 0).sum()) <= 4 * 50


def test_relu_decode_encode_shapes_and_forward():
    sae = _sae("relu")
    x = torch.randn(7, 32)
    x_hat, f = sae(x)
    assert x_hat.shape == x.shape and f.shape == (7, 48) and (f >= 0).all()


def test_safetensors_round_trip(tmp_path):
    sae = _sae("topk", k=3)
    path = save_sae(sae, tmp_path / "s.safetensors")
    assert (tmp_path / "s.json").is_file()
    again = load_sae(path)
    assert again.config == sae.config and sae_hash(again) == sae_hash(sae)
    x = torch.randn(4, 32)
    torch.testing.assert_close(again.encode(x), sae.eval().encode(x))


def test_interplm_ae_pt_loads(tmp_path):
    """InterPLM publishes dictionary_learning AutoEncoder state dicts (ae.pt); they load with weights_only."""
    d_in, d_hidden = 32, 40
    g = torch.Generator().manual_seed(1)
    state = {
        "bias": torch.randn(d_in, generator=g),
        "encoder.weight": torch.randn(d_hidden, d_in, generator=g),
        "encoder.bias": torch.randn(d_hidden, generator=g),
        "decoder.weight": torch.randn(d_in, d_hidden, generator=g),
    }
    torch.save(state, tmp_path / "ae.pt")
    sae = load_sae(tmp_path / "ae.pt", layer=2)
    assert sae.kind == "relu" and (sae.d_in, sae.d_hidden) == (d_in, d_hidden) and sae.config.plm_layer == 2
    x = torch.randn(5, d_in)
    expected = torch.relu((x - state["bias"]) @ state["encoder.weight"].T + state["encoder.bias"])
    torch.testing.assert_close(sae.encode(x), expected)
    with pytest.raises(InterPLMError, match="does not fit esm2_t6_8M_UR50D"):
        load_sae(tmp_path / "ae.pt", plm_name="esm2_t6_8M_UR50D")


def test_wrong_shapes_are_refused(tmp_path):
    sae = _sae("relu")
    path = save_sae(sae, tmp_path / "s.safetensors")
    cfg = path.with_suffix(".json")
    cfg.write_text(cfg.read_text().replace('"d_hidden": 48', '"d_hidden": 50'))
    with pytest.raises(InterPLMError, match="shape"):
        load_sae(path)


def test_normalisation_keeps_reconstructions_and_scales_to_one(store):
    sae = _sae("relu").eval()
    with torch.no_grad():
        sae.encoder.weight.mul_(10)
    maxes = feature_max_activations(sae, store)
    norm = normalize_sae(sae, maxes)
    x = torch.from_numpy(np.concatenate([store.get(p) for p in store.proteins]))
    with torch.no_grad():
        torch.testing.assert_close(norm(x)[0], sae(x)[0], rtol=1e-4, atol=1e-4)
        f = norm.encode(x)
    alive = maxes > 0
    # 1 to float32 rounding: the maxima came from batched encodes, this is one big matmul, and a
    # feature whose maximum is a small difference of large terms rounds to ~1e-4 relative (6.6e-5 seen)
    np.testing.assert_allclose(f.max(dim=0).values.numpy()[alive], 1.0, rtol=2e-4)
    assert norm.config.normalized


@pytest.mark.parametrize("kind,k", [("relu", None), ("topk", 4), ("batchtopk", 4)])
def test_training_reduces_reconstruction_error(store, tmp_path, kind, k):
    config = SAEConfig(d_in=32, d_hidden=64, kind=kind, k=k, l1_coefficient=0.005 if kind == "relu" else 0.0)
    untrained = SparseAutoencoder(config, generator=torch.Generator().manual_seed(0))
    if kind == "batchtopk":  # no threshold estimated yet: take every positive activation
        untrained.threshold.fill_(0.0)
    before = evaluate_sae(untrained, store)
    sae = train_sae(store, config, TrainConfig(steps=100, batch_size=256, warmup_steps=10, checkpoint_every=1000, resample_every=50,
                                               dead_after_tokens=5000), tmp_path, progress=False)  # fmt: skip
    after = evaluate_sae(sae, store)
    assert after["fraction_variance_explained"] > max(0.3, before["fraction_variance_explained"])
    assert sae.config.plm_layer == 2 and sae.config.plm_identity == store.metadata["plm_identity"]
    if kind != "relu":
        assert after["l0"] <= k + 1e-6 or kind == "batchtopk"


def test_dead_features_are_resampled(store, tmp_path):
    """Features that never fire get re-initialised towards badly reconstructed inputs."""
    config = SAEConfig(d_in=32, d_hidden=64, kind="relu", l1_coefficient=0.005)
    train_config = TrainConfig(steps=60, batch_size=256, warmup_steps=5, checkpoint_every=1000, resample_every=30, dead_after_tokens=2000)
    # Kill half the features at the start by a large negative encoder bias.
    from interplm_plugins.core.sae import train as train_module

    state = train_module.make_training_state(config, train_config)
    with torch.no_grad():
        state.sae.encoder.bias[:32] = -1e3
    resampled = {}
    for batch in store.iter_batches(256, seed=0):
        metrics = train_module.train_step(state, torch.from_numpy(np.asarray(batch, dtype=np.float32)))
        resampled[state.step] = int(metrics.get("resampled", 0))
        if state.step >= 60:
            break
    assert resampled[30] >= 16
    assert float(state.sae.encoder.bias[:32].detach().min()) > -1e3
    # Step 60 is the last and a multiple of resample_every, but within the learning-rate decay
    # (the last 20%): features re-initialised there would ship untrained.
    assert 60 not in {s for s, n in resampled.items() if n} and sum(resampled.values()) == resampled[30]


def test_no_resampling_once_the_learning_rate_decays():
    config = TrainConfig(steps=10_000, resample_every=2_000, decay_fraction=0.2)
    assert [s + 1 for s in range(config.steps) if resampling_allowed(config, s)] == [2_000, 4_000, 6_000]


def test_loss_recovered_of_an_identity_sae_is_one(tiny_plm, swissprot_fasta):
    """An SAE that reconstructs the layer exactly recovers all of the masked-LM loss."""
    dim = tiny_plm.embed_dim
    sae = SparseAutoencoder(SAEConfig(d_in=dim, d_hidden=2 * dim, kind="relu", plm_layer=1)).eval()
    with torch.no_grad():
        eye = torch.eye(dim)
        sae.encoder.weight.copy_(torch.cat([eye, -eye]))
        sae.encoder.bias.zero_()
        sae.decoder.weight.copy_(torch.cat([eye, -eye], dim=1))
        sae.bias.zero_()
    records = read_fasta(swissprot_fasta)[:6]
    result = loss_recovered(tiny_plm, sae, records, layer=1)
    assert result["fidelity"] == pytest.approx(1.0, abs=1e-4)
    assert result["ce_zero"] != pytest.approx(result["ce_clean"])


def test_batch_cutoff_is_the_full_top_k_cut_off():
    """BatchTopK's cut-off from per-row candidates equals the n-th largest of all entries, also when
    one row holds many of the largest values (its candidates are not enough) and with ties."""
    from interplm_plugins.core.sae.model import batch_cutoff

    generator = torch.Generator().manual_seed(0)
    crowded = 0
    for trial in range(200):
        rows, width = int(torch.randint(1, 50, (1,), generator=generator)), int(torch.randint(8, 400, (1,), generator=generator))
        k = int(torch.randint(1, max(2, width // 3), (1,), generator=generator))
        ranking = torch.randn(rows, width, generator=generator)
        if trial % 3 == 0:
            ranking[0] += 5  # one row crowds the top of the batch
            crowded += 1
        if trial % 5 == 0:
            ranking = ranking.round()  # many ties
        n_keep = min(k * rows, rows * width)
        assert batch_cutoff(ranking, n_keep) == ranking.reshape(-1).topk(n_keep).values.min(), (rows, width, k)
    assert crowded > 50
