"""The SAE architectures beyond ReLU on real embeddings of a real fair-esm ESM-2: BatchTopK whose
inference never depends on the batch, JumpReLU, Matryoshka BatchTopK; normalisation of every kind;
InterPLM / dictionary_learning ae.pt files of each layout; L0 and fidelity that training has to earn."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from interplm_plugins.core.inputs.sequences import protein_split, read_fasta
from interplm_plugins.core.plm.embed import embed_to_store
from interplm_plugins.core.sae import train as train_module
from interplm_plugins.core.sae.evaluate import evaluate_sae, loss_recovered, masked_lm_loss
from interplm_plugins.core.sae.files import load_sae, save_sae
from interplm_plugins.core.sae.jumprelu import jumprelu_training
from interplm_plugins.core.sae.model import SAEConfig, SparseAutoencoder
from interplm_plugins.core.sae.normalize import feature_max_activations, normalize_sae
from interplm_plugins.core.sae.train import TrainConfig, train_sae
from interplm_plugins.errors import InterPLMError

D, F = 32, 64
QUICK = dict(batch_size=256, warmup_steps=5, checkpoint_every=1000, dead_after_tokens=5000, resample_every=1000)


@pytest.fixture(scope="module")
def stores(tiny_plm, swissprot_fasta, tmp_path_factory):
    """(train store, held-out store) of layer 2 of the tiny ESM-2 over real Swiss-Prot proteins."""
    records = [r for r in read_fasta(swissprot_fasta) if len(r.sequence) < 500]
    folder = tmp_path_factory.mktemp("kinds")
    train = embed_to_store(tiny_plm, [r for r in records if protein_split(r.id) == "train"][:40], 2, folder / "train")[2]
    held_out = embed_to_store(tiny_plm, [r for r in records if protein_split(r.id) != "train"][:15], 2, folder / "held_out")[2]
    return train, held_out


def _rows(store) -> torch.Tensor:
    return torch.from_numpy(np.concatenate([store.get(p) for p in store.proteins]))


def _config(kind: str, **kw) -> SAEConfig:
    defaults = {"relu": {"l1_coefficient": 0.005}, "topk": {"k": 4}, "batchtopk": {"k": 4}, "jumprelu": {"l1_coefficient": 0.05},
                "matryoshka": {"k": 4, "prefixes": [8, 16, 32]}}[kind]  # fmt: skip
    return SAEConfig(d_in=D, d_hidden=F, kind=kind, **{**defaults, **kw})


@pytest.fixture(scope="module")
def trained(stores, tmp_path_factory):
    """One short training run per kind: {kind: SAE}."""
    out = {}
    for kind in ("topk", "batchtopk", "jumprelu", "matryoshka"):
        out[kind] = train_sae(stores[0], _config(kind), TrainConfig(steps=150, **QUICK), tmp_path_factory.mktemp(kind), progress=False)
    return out


# --------------------------------------------------------------------------- BatchTopK inference


@pytest.mark.parametrize("kind", ["batchtopk", "matryoshka"])
def test_inference_does_not_depend_on_the_batch(trained, stores, kind):
    sae = trained[kind]
    x = _rows(stores[1])
    assert float(sae.threshold) > 0
    with torch.no_grad():
        whole = sae.encode(x)
        for part in (slice(0, 10), slice(5, 6), slice(100, 400)):
            alone = sae.encode(x[part])
            assert torch.equal(alone > 0, whole[part] > 0)  # the same features fire, whatever else is in the batch
            torch.testing.assert_close(alone, whole[part], rtol=1e-5, atol=1e-6)  # (a matrix product of one row rounds differently)


def test_short_runs_still_estimate_a_threshold(stores, tmp_path):
    """Fewer steps than threshold_start_step: the threshold is estimated at the last step."""
    assert train_module.threshold_estimate_start(TrainConfig(steps=12, threshold_start_step=100)) == 11
    assert train_module.threshold_estimate_start(TrainConfig(steps=1000, threshold_start_step=100)) == 800  # the decay's start
    sae = train_sae(stores[0], _config("batchtopk"), TrainConfig(steps=12, threshold_start_step=100, **QUICK), tmp_path, progress=False)
    assert float(sae.threshold) > 0
    assert float(load_sae(tmp_path / "sae.safetensors").threshold) == float(sae.threshold)


def test_a_batchtopk_sae_without_threshold_is_refused(tmp_path):
    sae = SparseAutoencoder(_config("batchtopk")).eval()
    with pytest.raises(InterPLMError, match="no inference threshold"):
        sae.encode(torch.randn(3, D))
    save_sae(sae, tmp_path / "s.safetensors")
    with pytest.raises(InterPLMError, match="no inference threshold.*--sae-kind topk"):
        load_sae(tmp_path / "s.safetensors")


@pytest.mark.parametrize("kind", ["batchtopk", "matryoshka"])
def test_l0_at_inference_is_near_k(trained, stores, kind):
    """The estimated threshold keeps about k features per held-out residue (not true by construction:
    at inference nothing counts to k)."""
    l0 = evaluate_sae(trained[kind], stores[1])["l0"]
    assert 4 * 0.6 <= l0 <= 4 * 1.6, l0


def test_jumprelu_sparsity_follows_its_coefficient(stores, tmp_path):
    """A larger L0 coefficient gives fewer active features per residue, and both keep reconstructing."""
    results = {}
    for coefficient in (0.005, 0.5):
        # thresholds move by about the learning rate per step: a short run needs a larger one
        config = TrainConfig(steps=150, lr=5e-3, **QUICK)
        sae = train_sae(stores[0], _config("jumprelu", l1_coefficient=coefficient), config, tmp_path / str(coefficient), progress=False)
        results[coefficient] = evaluate_sae(sae, stores[1])
        assert (sae.threshold > 0).all()
    assert results[0.5]["l0"] < 0.5 * results[0.005]["l0"]
    assert results[0.5]["fraction_variance_explained"] > 0.5


@pytest.mark.parametrize("kind", ["jumprelu", "matryoshka", "batchtopk"])
def test_new_kinds_learn_to_reconstruct(trained, stores, kind):
    sae = trained[kind]
    result = evaluate_sae(sae, stores[1])
    assert result["fraction_variance_explained"] > 0.4, result
    assert 0 < result["l0"] < F / 2


def test_matryoshka_prefixes_reconstruct_on_their_own(trained, stores):
    """Each nested prefix was trained to reconstruct alone: its error is far below that of a prefix
    of the same size of a plain BatchTopK SAE's dictionary."""
    x = _rows(stores[1])

    def prefix_error(sae, m):
        with torch.no_grad():
            f = sae.encode(x)
            f[:, m:] = 0
            return float((sae.decode(f) - x).pow(2).sum(dim=-1).mean())

    for m in (8, 16):
        assert prefix_error(trained["matryoshka"], m) < 0.8 * prefix_error(trained["batchtopk"], m)


@pytest.mark.parametrize("kind", ["jumprelu", "matryoshka"])
def test_resume_reproduces_the_uninterrupted_run(stores, tmp_path, kind):
    config = TrainConfig(steps=30, checkpoint_every=10, threshold_start_step=5, **{k: v for k, v in QUICK.items() if k != "checkpoint_every"})
    whole = train_sae(stores[0], _config(kind), config, tmp_path / "whole", progress=False)
    # a run that stopped after its checkpoint at step 10 (the checkpoint is what a crash leaves)
    prepared = train_module.prepared_sae_config(stores[0], _config(kind))
    state = train_module.make_training_state(prepared, config)
    for x in train_module._batches(stores[0], config, 0):
        train_module.train_step(state, x)
        if state.step == 10:
            break
    (tmp_path / "resumed").mkdir()
    train_module._save_checkpoint(state, tmp_path / "resumed", prepared, train_module._store_identity(stores[0]))
    resumed = train_sae(stores[0], _config(kind), config, tmp_path / "resumed", progress=False)
    for key, value in whole.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[key], value, rtol=0, atol=0, msg=key)


# --------------------------------------------------------------------------- normalisation


def _random_sae(kind: str) -> SparseAutoencoder:
    sae = SparseAutoencoder(_config(kind, k=6), generator=torch.Generator().manual_seed(3)).eval()
    with torch.no_grad():
        sae.encoder.weight.mul_(torch.linspace(0.5, 8.0, F)[:, None])  # features of very different scales
        sae.encoder.bias.normal_(generator=torch.Generator().manual_seed(4))
        if kind in ("batchtopk", "matryoshka"):
            sae.threshold.fill_(0.5)
        if kind == "jumprelu":
            sae.threshold.copy_(torch.linspace(0.0, 2.0, F))
    return sae


@pytest.mark.parametrize("kind", ["relu", "topk", "batchtopk", "jumprelu", "matryoshka"])
def test_normalisation_divides_by_the_maximum_and_keeps_reconstructions(stores, kind):
    sae = _random_sae(kind)
    x = _rows(stores[0])
    maxes = feature_max_activations(sae, stores[0])
    normalised = normalize_sae(sae, maxes)
    with torch.no_grad():
        original, scaled = sae.encode(x), normalised.encode(x)
        torch.testing.assert_close(normalised.decode(scaled), sae.decode(original), rtol=1e-4, atol=1e-4)
    alive = torch.from_numpy(maxes > 0)
    assert alive.sum() > F / 4
    # (activations near 0 are differences of larger numbers: compare on the [0, 1] scale)
    torch.testing.assert_close(scaled[:, alive], original[:, alive] / torch.from_numpy(maxes)[alive], rtol=1e-4, atol=1e-4)
    assert (scaled > 0).eq(original > 0).all()  # the same features fire: selection is by unscaled values
    np.testing.assert_allclose(scaled.amax(dim=0).numpy()[alive.numpy()], 1.0, rtol=1e-4)


# --------------------------------------------------------------------------- InterPLM / dictionary_learning files


def _interplm_tensors(g: torch.Generator) -> dict[str, torch.Tensor]:
    return {
        "encoder.weight": torch.randn(F, D, generator=g),
        "encoder.bias": torch.randn(F, generator=g),
        "decoder.weight": torch.randn(D, F, generator=g),
        "activation_rescale_factor": torch.rand(F, generator=g) * 3 + 0.5,
        "normalize_to_sqrt_d": torch.tensor(False),
    }


def _check_rescaled(sae, x, raw_features, reconstruction_of_raw, rescale):
    """``sae`` encodes to InterPLM's features divided by the rescale factor and decodes them back."""
    with torch.no_grad():
        f = sae.encode(x)
        torch.testing.assert_close(f, raw_features / rescale, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(sae.decode(f), reconstruction_of_raw, rtol=1e-4, atol=1e-4)
    assert sae.config.normalized or not torch.all(rescale == 1)


@pytest.mark.parametrize("with_config", [True, False])
def test_interplm_batchtopk_file(tmp_path, with_config):
    """InterPLM's BatchTopKSAE state dict (the same keys as its TopKSAE); its config.json names the class."""
    g = torch.Generator().manual_seed(5)
    state = {**_interplm_tensors(g), "b_dec": torch.randn(D, generator=g), "k": torch.tensor(5, dtype=torch.int32), "threshold": torch.tensor(1.5)}
    torch.save(state, tmp_path / "ae_normalized.pt")
    if with_config:
        (tmp_path / "config.json").write_text(json.dumps({"trainer": {"dict_class": "BatchTopKSAE", "trainer_class": "BatchTopKTrainer", "k": 5}}))
    sae = load_sae(tmp_path / "ae_normalized.pt", layer=2)
    x = torch.randn(9, D, generator=g) * 3
    post = torch.relu((x - state["b_dec"]) @ state["encoder.weight"].T + state["encoder.bias"])
    if not with_config:  # without the config, the keys say TopK; --sae-kind corrects it
        assert sae.kind == "topk"
        sae = load_sae(tmp_path / "ae_normalized.pt", layer=2, kind="batchtopk")
    assert sae.kind == "batchtopk" and sae.config.k == 5
    raw = post * (post > 1.5)
    _check_rescaled(sae, x, raw, raw @ state["decoder.weight"].T + state["b_dec"], state["activation_rescale_factor"])


def test_interplm_topk_file_with_rescale_factor(tmp_path):
    g = torch.Generator().manual_seed(6)
    state = {**_interplm_tensors(g), "b_dec": torch.randn(D, generator=g), "k": torch.tensor(3, dtype=torch.int32), "threshold": torch.tensor(-1.0)}
    torch.save(state, tmp_path / "ae.pt")
    sae = load_sae(tmp_path / "ae.pt")
    x = torch.randn(7, D, generator=g) * 3
    post = torch.relu((x - state["b_dec"]) @ state["encoder.weight"].T + state["encoder.bias"])
    top = post.topk(3, dim=-1)
    raw = torch.zeros_like(post).scatter_(-1, top.indices, top.values)
    assert sae.kind == "topk"
    _check_rescaled(sae, x, raw, raw @ state["decoder.weight"].T + state["b_dec"], state["activation_rescale_factor"])


def test_interplm_relu_file_with_rescale_factor(tmp_path):
    g = torch.Generator().manual_seed(8)
    state = {**_interplm_tensors(g), "bias": torch.randn(D, generator=g)}
    torch.save(state, tmp_path / "ae.pt")
    sae = load_sae(tmp_path / "ae.pt")
    x = torch.randn(7, D, generator=g)
    raw = torch.relu((x - state["bias"]) @ state["encoder.weight"].T + state["encoder.bias"])
    assert sae.kind == "relu"
    _check_rescaled(sae, x, raw, raw @ state["decoder.weight"].T + state["bias"], state["activation_rescale_factor"])


def test_interplm_jumprelu_file(tmp_path):
    """InterPLM's JumpReLUSAE: encoder / decoder Linear layers, decoder bias, per-feature thresholds,
    no bias subtracted before encoding."""
    g = torch.Generator().manual_seed(9)
    state = {**_interplm_tensors(g), "decoder.bias": torch.randn(D, generator=g), "threshold": torch.rand(F, generator=g) * 2}
    torch.save(state, tmp_path / "ae.pt")
    sae = load_sae(tmp_path / "ae.pt")
    assert sae.kind == "jumprelu"
    x = torch.randn(11, D, generator=g) * 2
    pre = x @ state["encoder.weight"].T + state["encoder.bias"]
    raw = torch.relu(pre * (pre > state["threshold"]))
    assert 0 < int((raw > 0).sum()) < raw.numel()  # some features jump, some do not
    _check_rescaled(sae, x, raw, raw @ state["decoder.weight"].T + state["decoder.bias"], state["activation_rescale_factor"])


def test_dictionary_learning_jumprelu_file(tmp_path):
    """dictionary_learning's / SAELens' JumpReLU layout: W_enc [d_in, F], b_enc, W_dec [F, d_in], b_dec, threshold."""
    g = torch.Generator().manual_seed(10)
    state = {"W_enc": torch.randn(D, F, generator=g), "b_enc": torch.randn(F, generator=g), "W_dec": torch.randn(F, D, generator=g),
             "b_dec": torch.randn(D, generator=g), "threshold": torch.rand(F, generator=g)}  # fmt: skip
    torch.save(state, tmp_path / "ae.pt")
    sae = load_sae(tmp_path / "ae.pt")
    x = torch.randn(6, D, generator=g)
    pre = x @ state["W_enc"] + state["b_enc"]
    raw = torch.relu(pre * (pre > state["threshold"]))
    with torch.no_grad():
        torch.testing.assert_close(sae.encode(x), raw, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(sae.decode(raw), raw @ state["W_dec"] + state["b_dec"], rtol=1e-4, atol=1e-4)


def test_dictionary_learning_matryoshka_file(tmp_path):
    """dictionary_learning's MatryoshkaBatchTopKSAE: W_enc layout, b_dec subtracted before encoding,
    group_sizes (-> prefixes), k and the estimated threshold."""
    g = torch.Generator().manual_seed(11)
    state = {"W_enc": torch.randn(D, F, generator=g), "b_enc": torch.randn(F, generator=g), "W_dec": torch.randn(F, D, generator=g),
             "b_dec": torch.randn(D, generator=g), "k": torch.tensor(6, dtype=torch.int32), "threshold": torch.tensor(0.8),
             "group_sizes": torch.tensor([8, 8, 16, 32])}  # fmt: skip
    torch.save(state, tmp_path / "ae.pt")
    sae = load_sae(tmp_path / "ae.pt")
    assert sae.kind == "matryoshka" and sae.config.prefixes == [8, 16, 32] and sae.config.k == 6
    x = torch.randn(6, D, generator=g)
    post = torch.relu((x - state["b_dec"]) @ state["W_enc"] + state["b_enc"])
    raw = post * (post > 0.8)
    with torch.no_grad():
        torch.testing.assert_close(sae.encode(x), raw, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(sae.decode(raw), raw @ state["W_dec"] + state["b_dec"], rtol=1e-4, atol=1e-4)


def test_saved_new_kinds_round_trip(trained, tmp_path):
    for kind in ("jumprelu", "matryoshka"):
        path = save_sae(trained[kind], tmp_path / f"{kind}.safetensors")
        again = load_sae(path)
        assert again.config == trained[kind].config
        x = torch.randn(5, D)
        with torch.no_grad():
            torch.testing.assert_close(again.encode(x), trained[kind].encode(x))
        with pytest.raises(InterPLMError, match=f"says it is a {kind} SAE"):
            load_sae(path, kind="relu")


# --------------------------------------------------------------------------- fidelity


def test_fidelity_of_non_identity_saes(tiny_plm, trained, stores, swissprot_fasta):
    """An SAE that outputs zeros recovers nothing; one that outputs the mean embedding recovers
    exactly what splicing in the mean does; a trained one recovers more than the mean. (The tiny
    ESM-2 is random: its clean loss is no floor, so fidelity may exceed 1.)"""
    records = [r for r in read_fasta(swissprot_fasta) if protein_split(r.id) != "train"][:5]
    zero = SparseAutoencoder(SAEConfig(d_in=D, d_hidden=F, plm_layer=2)).eval()
    with torch.no_grad():
        zero.decoder.weight.zero_()
    assert loss_recovered(tiny_plm, zero, records, layer=2)["fidelity"] == pytest.approx(0.0, abs=1e-6)
    mean = _rows(stores[0]).mean(dim=0)
    constant = SparseAutoencoder(SAEConfig(d_in=D, d_hidden=F, plm_layer=2)).eval()
    with torch.no_grad():
        constant.decoder.weight.zero_()
        constant.bias.copy_(mean)
    by_mean = loss_recovered(tiny_plm, constant, records, layer=2)
    ce_mean, _ = masked_lm_loss(tiny_plm, records, layer=2, replace=lambda rows: mean.expand_as(rows).to(rows))
    assert by_mean["ce_sae"] == pytest.approx(ce_mean, rel=1e-6)
    expected = (by_mean["ce_zero"] - ce_mean) / (by_mean["ce_zero"] - by_mean["ce_clean"])
    assert by_mean["fidelity"] == pytest.approx(expected, rel=1e-6)
    learned = loss_recovered(tiny_plm, trained["matryoshka"], records, layer=2)
    assert by_mean["fidelity"] < learned["fidelity"] and learned["ce_sae"] != pytest.approx(learned["ce_clean"])


# --------------------------------------------------------------------------- database


def test_feature_database_of_a_jumprelu_sae(trained, stores, tiny_esm2_path, tiny_db_records, tmp_path):
    from interplm_plugins.core.database.from_pipeline import build_database
    from interplm_plugins.core.database.schema import FeatureDatabase
    from interplm_plugins.core.interpret.pipeline import load_pipeline

    normalised = normalize_sae(trained["jumprelu"], feature_max_activations(trained["jumprelu"], stores[0]))
    path = save_sae(normalised, tmp_path / "jr.safetensors")
    pipeline = load_pipeline(model=tiny_esm2_path, sae=path)
    db_path = build_database(pipeline, tiny_db_records[:12], tmp_path / "jr.sqlite", progress=False)
    with FeatureDatabase(db_path) as db:
        assert db.provenance["sae_kind"] == "jumprelu" and db.num_features == F
        stats = [db.feature_info(f) for f in range(F)]
    assert any(s.get("max_activation") and s["max_activation"] > 0 for s in stats)
    assert load_pipeline(model=tiny_esm2_path, sae=path, database=db_path).database is not None


def test_cli_trains_the_new_kinds(stores, tmp_path, capsys):
    from interplm_plugins.cli import main

    common = ["--width", "64", "--steps", "20", "--batch-size", "128", "--warmup", "2", "--checkpoint-every", "10"]
    assert main(["-q", "train", str(stores[0].path), "--out", str(tmp_path / "m"), "--kind", "matryoshka", "--k", "4", "--prefixes", "16,8", *common]) == 0
    assert main(["-q", "train", str(stores[0].path), "--out", str(tmp_path / "j"), "--kind", "jumprelu", "--l0", "0.3", *common]) == 0
    matryoshka, jumprelu = load_sae(tmp_path / "m" / "sae.safetensors"), load_sae(tmp_path / "j" / "sae.safetensors")
    assert matryoshka.config.prefixes == [8, 16] and matryoshka.config.k == 4 and float(matryoshka.threshold) > 0
    assert jumprelu.config.l1_coefficient == 0.3 and jumprelu.config.k is None and jumprelu.config.plm_layer == 2
    assert "trained matryoshka SAE 32 -> 64" in capsys.readouterr().out
    assert main(["-q", "train", str(stores[0].path), "--out", str(tmp_path / "bad"), "--kind", "matryoshka", "--prefixes", "8,64", *common]) == 2
    assert "prefixes must increase strictly within 1..63" in capsys.readouterr().err


@pytest.mark.parametrize("kind", ["topk", "batchtopk", "matryoshka"])
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("scaled", [False, True], ids=["unit-scale", "scaled"])
def test_sparse_training_equals_dense_autograd(kind, precision, scaled):
    """The sparse products of TopK, BatchTopK and Matryoshka give the dense autograd path's loss and
    gradients, AuxK included (30 of 96 features dead, so AuxK ranks and reconstructs from them too);
    also when an activation scale other than ones changes which features rank highest."""
    sae_config = SAEConfig(d_in=24, d_hidden=96, kind=kind, k=5, prefixes=[12, 40] if kind == "matryoshka" else None)
    config = TrainConfig(steps=1, batch_size=64, auxk_k=7, precision=precision)
    state = train_module.make_training_state(sae_config, config)
    x = torch.randn(64, 24, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        state.sae.bias.copy_(x.mean(dim=0) + 0.1)
        state.sae.encoder.bias.uniform_(-0.2, 0.2, generator=torch.Generator().manual_seed(4))
        if scaled:
            state.sae.activation_scale.copy_(torch.linspace(0.25, 4.0, 96))
    dead = torch.zeros(96, dtype=torch.bool)
    dead[torch.randperm(96, generator=torch.Generator().manual_seed(5))[:30]] = True
    sync = train_module.StepSync()
    params = list(state.sae.parameters())

    def loss_and_grads(loss_fn):
        for p in params:
            p.grad = None
        loss, mse, _, extra = loss_fn()
        loss.backward()
        return [loss.detach(), mse.detach(), extra["auxk"]], [p.grad.clone() for p in params]

    def dense():
        with train_module.compute_precision(precision, x):
            return train_module._sparse_loss(state, x, sync, dead)

    dense_values, dense_grads = loss_and_grads(dense)
    sparse_values, sparse_grads = loss_and_grads(lambda: train_module._kept_loss(state, x, sync, dead))
    assert dense_values[2] > 0  # AuxK is part of both losses
    # fp32: equal up to the order of sums; bf16: autocast also rounds the dense path's decoder
    # products to bfloat16, which the sparse path computes in float32 (the kept values are the same)
    tolerance = 1e-5 if precision == "fp32" else 1e-2
    for got, expected in zip(sparse_values + sparse_grads, dense_values + dense_grads):
        assert float((got - expected).norm() / expected.norm()) < tolerance
    if scaled:  # (training itself runs at unit scale: the scale is folded in after it)
        return
    # and one whole step through train_step with the sparse path learns (finite, falling loss)
    losses = [train_module.train_step(state, x)["loss"] for _ in range(20)]
    assert np.isfinite(losses).all() and losses[-1] < losses[0]


def _jumprelu_autograd(sae: SparseAutoencoder, x: torch.Tensor, coefficient: float) -> dict[str, torch.Tensor]:
    """The definition: autograd through jumprelu_training, loss = MSE + coefficient * L0."""
    f, l0 = jumprelu_training(sae.pre_activations(x).to(x.dtype), sae.threshold, sae.bandwidth)
    mse = (x - sae.decode(f)).pow(2).sum(dim=-1).mean()
    loss = mse + coefficient * l0
    sae.zero_grad(set_to_none=True)
    loss.backward()
    return {"loss": loss.detach(), "mse": mse.detach(), "l0": (f > 0).sum(dim=-1).float().mean(), **{name: p.grad.clone() for name, p in sae.named_parameters()}}


def _jumprelu_by_hand(sae: SparseAutoencoder, x: torch.Tensor, coefficient: float, **kw) -> dict[str, torch.Tensor]:
    out = train_module.jumprelu_loss_and_grads(sae, x, coefficient, **kw)
    return {"loss": out["loss"], "mse": out["mse"], "l0": out["l0"], **{name: p.grad.clone() for name, p in sae.named_parameters()}}


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("thresholds", [(0.1, 1.5), (-0.3, 1.0)], ids=["above-half-band", "near-and-below-zero"])
def test_hand_written_jumprelu_equals_autograd(precision, thresholds):
    """JumpReLU's hand-written step, dense and over the fired entries (and the thresholds' band for
    their straight-through gradient), gives autograd's loss and gradients, the thresholds' included:
    with every threshold at least half the bandwidth (the usual case, read in fewer passes) and with
    some below zero or within half a bandwidth of it (where the JumpReLU's and the step's kernels differ)."""
    sae = SparseAutoencoder(SAEConfig(d_in=24, d_hidden=96, kind="jumprelu", l1_coefficient=0.3), generator=torch.Generator().manual_seed(0))
    x = torch.randn(64, 24, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        sae.bias.copy_(x.mean(dim=0) + 0.1)
        sae.encoder.bias.uniform_(-0.2, 0.2, generator=torch.Generator().manual_seed(4))
        sae.threshold.uniform_(*thresholds, generator=torch.Generator().manual_seed(5))
        sae.bandwidth.fill_(0.2)
    assert ((sae.threshold.abs() < 0.1).any() and (sae.threshold < 0).any()) == (thresholds[0] < 0)
    with train_module.compute_precision(precision, x):
        expected = _jumprelu_autograd(sae, x, 0.3)
    assert int((expected["threshold"] != 0).sum()) > 48  # most thresholds get a gradient
    # fp32: equal up to the order of sums; bf16: autocast rounds the decoder's product to bfloat16,
    # which the hand-written step keeps in float32 (the sparse products) or casts otherwise
    tolerance = 1e-5 if precision == "fp32" else 1e-2
    for sparse in (False, True):
        got = _jumprelu_by_hand(sae, x, 0.3, workspace={}, precision=precision, sparse=sparse)
        assert float(got["l0"]) == float(expected["l0"])
        for name, want in expected.items():
            assert float((got[name] - want).norm() / want.norm()) < tolerance, (sparse, name)


def test_few_firing_jumprelu_entries_take_the_sparse_products():
    """By default a CPU step runs sparse products once few entries fire (as in a
    trained JumpReLU SAE) and dense ones while many do (as at the start: thresholds at 0.001 of the
    inputs' norm, half fire); training through both learns."""
    state = train_module.make_training_state(SAEConfig(d_in=32, d_hidden=512, kind="jumprelu", l1_coefficient=0.3),
                                             TrainConfig(steps=40, batch_size=256, warmup_steps=2, lr=1e-3))  # fmt: skip
    sae, x = state.sae, torch.randn(256, 32, generator=torch.Generator().manual_seed(1))
    first = train_module.train_step(state, x)
    assert first["l0"] > 0.3 * 512

    def path_taken() -> str:
        runs = {mode: _jumprelu_by_hand(sae, x, 0.3, sparse=mode) for mode in (None, False, True)}
        same = [mode for mode in (False, True) if all(torch.equal(runs[None][k], runs[mode][k]) for k in runs[None])]
        assert len(same) == 1  # (the two paths' float32 sums differ, so the default's bits say which ran)
        return "sparse" if same[0] else "dense"

    assert path_taken() == "dense"
    with torch.no_grad():
        sae.threshold.fill_(float(torch.quantile(sae.pre_activations(x), 0.98)))
    assert path_taken() == "sparse"
    losses = [train_module.train_step(state, x)["loss"] for _ in range(30)]
    assert np.isfinite(losses).all() and losses[-1] < losses[0]
    assert train_module.train_step(state, x)["l0"] < train_module.SPARSE_RELU_MAX_DENSITY["fp32"] * 512
