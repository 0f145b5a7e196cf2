"""Compute precision (core/plm/precision.py, ``--precision`` on embed, color, features and train): bf16 really runs,
stays close to fp32 where users read the results, never changes what is stored or saved, and a bad value is a
one-line error. Real parts throughout: the embedded demo PLM and SAE, real Swiss-Prot proteins and the demo's
own protein (MTC7_YEAST). The accuracy on the database's concepts is measured by benchmarks/bench_precision.py.
No timing is asserted."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from interplm_plugins.cli import main
from interplm_plugins.core.inputs.sequences import read_fasta, write_fasta
from interplm_plugins.core.inputs.uniprot import read_uniprot
from interplm_plugins.core.interpret.features import _top_features
from interplm_plugins.core.interpret.pipeline import ActivationCache, load_pipeline
from interplm_plugins.core.plm.embed import embed_sequences, embed_to_store
from interplm_plugins.core.plm.loading import load_plm
from interplm_plugins.core.plm.precision import PRECISIONS, check_precision, compute_precision
from interplm_plugins.core.plm.store import STORE_INDEX, EmbeddingStore
from interplm_plugins.core.sae.files import load_sae
from interplm_plugins.core.sae.model import SAEConfig
from interplm_plugins.core.sae.train import (
    CHECKPOINT_NAME,
    LOG_NAME,
    SAE_NAME,
    TrainConfig,
    make_training_state,
    relu_loss_and_grads,
    train_sae,
    train_step,
)
from interplm_plugins.errors import InterPLMError

DEMO_LAYER = 3  # the layer the demo SAE reads


@pytest.fixture(scope="module")
def demo_plm():
    return load_plm("demo")


@pytest.fixture(scope="module")
def proteins(swissprot_fasta):
    """Real Swiss-Prot proteins, one of them longer than a window (1,022 residues), so stitching runs in bf16 too."""
    records = read_fasta(swissprot_fasta)
    return [r for r in records if 60 <= len(r.sequence) <= 400][:5] + [next(r for r in records if len(r.sequence) > 1100)]


@pytest.fixture(scope="module")
def demo_protein(shared_data):
    """MTC7_YEAST, the demo's protein, from ../shared/data's Swiss-Prot entries (not the shipped copy)."""
    return next(e for e in read_uniprot(shared_data / "uniprot" / "swissprot_train.dat.gz") if e.accession == "P32633")


@pytest.fixture(scope="module")
def pipelines():
    """The embedded default in both precisions (no disk cache: each call computes)."""
    fp32 = dataclasses.replace(load_pipeline(), cache=ActivationCache(None))
    return fp32, dataclasses.replace(fp32, precision="bf16", cache=ActivationCache(None))


@pytest.fixture()
def demo_session(tmp_path, monkeypatch):
    """A fresh activation cache folder for the commands (each builds its own pipeline, the embedded default here), and no
    session pipeline left over."""
    from interplm_plugins import session

    monkeypatch.setenv("INTERPLM_CACHE_DIR", str(tmp_path / "cache"))
    session.reset_session()
    yield
    session.reset_session()


def _one_line_error(capsys, *argv: str) -> str:
    assert main(["-q", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err
    return err


# ------------------------------------------------------------------------------ the concept


def test_compute_precision_is_autocast_for_bf16_and_nothing_for_fp32():
    a, b = torch.randn(8, 8), torch.randn(8, 8)
    assert PRECISIONS == ("fp32", "bf16")
    with compute_precision("fp32", "cpu"):
        assert torch.mm(a, b).dtype == torch.float32 and not torch.is_autocast_enabled("cpu")
    with compute_precision("bf16", a):  # a tensor names its device
        assert torch.mm(a, b).dtype == torch.bfloat16
        assert torch.nn.functional.layer_norm(a, (8,)).dtype == torch.float32  # autocast leaves a float32 layer norm as it is
    assert not torch.is_autocast_enabled("cpu")
    for bad in ("fp16", "BF16", "", None):
        with pytest.raises(InterPLMError, match="unknown compute precision"):
            compute_precision(bad, "cpu")
    with pytest.raises(InterPLMError, match="CPU or CUDA"):
        compute_precision("bf16", "meta")
    assert check_precision("bf16") == "bf16"


def test_every_entry_point_refuses_an_unknown_precision(demo_plm, proteins, tmp_path):
    with pytest.raises(InterPLMError, match="unknown compute precision 'half'"):
        next(embed_sequences(demo_plm, proteins[:1], [DEMO_LAYER], precision="half"))
    with pytest.raises(InterPLMError, match="unknown compute precision"):
        embed_to_store(demo_plm, proteins[:1], DEMO_LAYER, tmp_path / "s", precision="half")
    with pytest.raises(InterPLMError, match="unknown compute precision"):
        TrainConfig(precision="fp16")
    with pytest.raises(InterPLMError, match="unknown compute precision"):
        load_pipeline(precision="fp16")


# ------------------------------------------------------------------------------- embeddings


def test_bf16_embeddings_differ_from_fp32_but_are_close(demo_plm, proteins):
    fp32 = dict(embed_sequences(demo_plm, proteins, [DEMO_LAYER, demo_plm.num_layers]))
    bf16 = dict(embed_sequences(demo_plm, proteins, [DEMO_LAYER, demo_plm.num_layers], precision="bf16"))
    assert fp32.keys() == bf16.keys() == {r.id for r in proteins}
    for pid in fp32:
        for layer in (DEMO_LAYER, demo_plm.num_layers):
            a, b = fp32[pid][layer], bf16[pid][layer]
            assert b.dtype == np.float32 and b.shape == a.shape  # cast back to float32 before anyone sees them
            assert np.abs(a - b).max() > 0  # bf16 ran
            # Measured on these proteins: 0.2-0.3% (the residual stream is float32, only the products are bf16).
            assert np.linalg.norm(a - b) / np.linalg.norm(a) < 0.02, (pid, layer)
    # fp32 is the default and changes nothing: the same numbers as asking for it.
    again = dict(embed_sequences(demo_plm, proteins, [DEMO_LAYER, demo_plm.num_layers], precision="fp32"))
    for pid, reps in again.items():
        np.testing.assert_array_equal(reps[DEMO_LAYER], fp32[pid][DEMO_LAYER])


def test_autocast_never_leaks_into_the_code_reading_the_embeddings(demo_plm, proteins):
    """The generator yields outside its autocast block: what the caller computes between items stays float32."""
    for _pid, _reps in embed_sequences(demo_plm, proteins[:3], [DEMO_LAYER], precision="bf16"):
        assert not torch.is_autocast_enabled("cpu")
        assert torch.mm(torch.ones(2, 2), torch.ones(2, 2)).dtype == torch.float32


def test_sae_activations_and_active_features_agree(pipelines, proteins, demo_protein):
    """SAE activations of bf16 embeddings: small relative error, nearly the same features active per residue."""
    fp32, bf16 = pipelines
    assert fp32.identity == f"{fp32.plm.identity}|L{fp32.layer}|{fp32.sae_hash}"  # fp32 cache keys as before
    assert bf16.identity == f"{fp32.identity}|bf16"  # bf16 results never answer an fp32 request, nor the reverse
    for sequence in [demo_protein.sequence, *(r.sequence for r in proteins)]:
        a, b = fp32.activations(sequence), bf16.activations(sequence)
        assert a.dtype == b.dtype == np.float32 and a.shape == b.shape
        assert 0 < np.linalg.norm(a - b) / np.linalg.norm(a) < 0.05  # measured 0.4-0.8%
        on_a, on_b = a > 0, b > 0
        jaccard = (on_a & on_b).sum(axis=1) / np.maximum((on_a | on_b).sum(axis=1), 1)
        assert jaccard.mean() > 0.98 and jaccard.min() > 0.8  # measured: mean 0.996, worst residue 0.94


def test_top_features_of_the_demo_protein_agree(pipelines, demo_protein):
    """Measured on MTC7_YEAST: the same 10 top features (their peaks are all 1.0 within 0.004, so the order among them
    may change); asserted with some room for CPUs whose bf16 kernels round differently."""
    fp32, bf16 = pipelines
    a, b = fp32.activations(demo_protein.sequence), bf16.activations(demo_protein.sequence)
    top_a, top_b = _top_features(a, 10), _top_features(b, 10)
    assert len(set(top_a) & set(top_b)) >= 8
    np.testing.assert_allclose(b.max(axis=0)[top_a], a.max(axis=0)[top_a], atol=0.05)


# ------------------------------------------------------------------------------ commands


def test_embed_command_computes_in_bf16_and_stores_the_asked_dtype(demo_plm, proteins, tmp_path, capsys):
    fasta = tmp_path / "p.fasta"
    write_fasta(proteins[:4], fasta)
    reference = embed_to_store(demo_plm, proteins[:4], DEMO_LAYER, tmp_path / "fp32")[DEMO_LAYER]
    assert reference.metadata["compute_precision"] == "fp32"
    for dtype in ("float16", "float32"):
        out = tmp_path / f"bf16_{dtype}"
        assert main(["-q", "embed", str(fasta), "--layer", str(DEMO_LAYER), "--out", str(out), "--precision", "bf16", "--dtype", dtype]) == 0
        store = EmbeddingStore(out)
        assert store.metadata["compute_precision"] == "bf16" and store.metadata["dtype"] == dtype and store.complete
        for pid in reference.proteins:
            got, want = np.asarray(store.get(pid)), np.asarray(reference.get(pid))
            assert got.dtype == np.dtype(dtype)
            assert not np.array_equal(got.astype(np.float32), want)  # bf16 ran
            assert np.linalg.norm(got.astype(np.float32) - want) / np.linalg.norm(want) < 0.02
    capsys.readouterr()
    # A store is resumed only in the precision it was computed in; a store from before the key counts as fp32.
    err = _one_line_error(capsys, "embed", str(fasta), "--layer", str(DEMO_LAYER), "--out", str(tmp_path / "bf16_float32"))
    assert "compute_precision='bf16', not 'fp32'" in err and "--no-resume" in err
    index = json.loads((reference.path / STORE_INDEX).read_text())
    del index["metadata"]["compute_precision"]
    (reference.path / STORE_INDEX).write_text(json.dumps(index))
    assert main(["-q", "embed", str(fasta), "--layer", str(DEMO_LAYER), "--out", str(reference.path)]) == 0
    err = _one_line_error(capsys, "embed", str(fasta), "--layer", str(DEMO_LAYER), "--out", str(reference.path), "--precision", "bf16")
    assert "compute_precision='fp32', not 'bf16'" in err


def test_features_command_gives_the_same_top_features_in_bf16(demo_session, demo_protein, tmp_path, capsys):
    tables = {}
    for precision in PRECISIONS:
        prefix = tmp_path / precision
        assert main(["-q", "features", demo_protein.sequence, "--top", "10", "--out", str(prefix), "--precision", precision]) == 0
        assert "query (139 residues): 10 features" in capsys.readouterr().out
        import pandas as pd

        tables[precision] = pd.read_csv(f"{prefix}.proteins.tsv", sep="\t")
    fp32, bf16 = tables["fp32"], tables["bf16"]
    assert len(set(fp32["feature"]) & set(bf16["feature"])) >= 8  # measured: all 10
    both = fp32.merge(bf16, on="feature", suffixes=("_fp32", "_bf16"))
    np.testing.assert_allclose(both["max_activation_bf16"], both["max_activation_fp32"], atol=0.05)
    # The database's concept of a feature is the feature's, whatever computed its activations.
    assert list(both["concept_fp32"].astype(object).fillna("-")) == list(both["concept_bf16"].astype(object).fillna("-"))


def test_color_command_runs_in_bf16_and_colours_like_fp32(demo_session, pipelines, demo_protein, shared_data, tmp_path, capsys):
    pytest.importorskip("pymol")
    feature = int(_top_features(pipelines[0].activations(demo_protein.sequence), 1)[0])
    printed = {}
    for precision in PRECISIONS:
        out = tmp_path / f"{precision}.png"
        argv = ["-q", "color", str(shared_data / "structures" / "P32633_AF.pdb"), "--feature", str(feature), "--out", str(out), "--width", "200", "--height", "160",
                "--precision", precision]  # fmt: skip
        assert main(argv) == 0 and out.is_file()
        printed[precision] = next(line for line in capsys.readouterr().out.splitlines() if line.startswith(f"{out}: feature {feature}"))
    import re

    numbers = {p: re.search(r"on (\d+) residues, max ([0-9.]+) at", line).groups() for p, line in printed.items()}
    assert numbers["fp32"][0] == numbers["bf16"][0]  # the same residues coloured
    assert abs(float(numbers["fp32"][1]) - float(numbers["bf16"][1])) < 0.05


# ------------------------------------------------------------------------------ training


@pytest.fixture(scope="module")
def demo_store(demo_plm, swissprot_fasta, tmp_path_factory):
    """Layer-3 embeddings of the demo PLM on 40 real proteins."""
    records = [r for r in read_fasta(swissprot_fasta) if len(r.sequence) <= 500][:40]
    return embed_to_store(demo_plm, records, DEMO_LAYER, tmp_path_factory.mktemp("store"))[DEMO_LAYER]


@pytest.mark.parametrize("sparse", [False, True])
def test_relu_gradients_in_bf16_are_close_and_float32(demo_store, sparse):
    x = torch.from_numpy(np.ascontiguousarray(next(demo_store.iter_batches(512, seed=0)), dtype=np.float32))
    state = make_training_state(SAEConfig(d_in=demo_store.dim, d_hidden=1024, kind="relu", l1_coefficient=1.0), TrainConfig(steps=10))
    sae = state.sae
    with torch.no_grad():
        sae.bias.copy_(x.mean(dim=0))
    want = relu_loss_and_grads(sae, x, 1.0, {})
    grads = {name: p.grad.clone() for name, p in sae.named_parameters()}
    workspace: dict = {}
    for _ in range(2):  # the second call reuses the bf16 buffers
        got = relu_loss_and_grads(sae, x, 1.0, workspace, precision="bf16", sparse=sparse)
    assert any(v.dtype == torch.bfloat16 for v in workspace.values())  # the [batch, features] tensors were bf16
    assert float(got["loss"]) == pytest.approx(float(want["loss"]), rel=1e-2) and got["loss"].dtype == torch.float32
    for name, p in sae.named_parameters():
        assert p.grad.dtype == torch.float32
        assert 0 < float((p.grad - grads[name]).norm() / grads[name].norm()) < 0.03, name  # measured ~0.2%


@pytest.mark.parametrize("kind", ["relu", "topk", "batchtopk", "jumprelu", "matryoshka"])
def test_every_kind_trains_in_bf16_with_float32_master_weights(demo_store, kind):
    extra = {"relu": {"l1_coefficient": 1.0}, "jumprelu": {"l1_coefficient": 0.1}, "matryoshka": {"k": 16, "prefixes": [128, 256]}}.get(kind, {"k": 16})
    config = SAEConfig(d_in=demo_store.dim, d_hidden=512, kind=kind, **extra)
    state = make_training_state(config, TrainConfig(steps=25, batch_size=256, warmup_steps=3, threshold_start_step=5, precision="bf16"))
    batches = [torch.from_numpy(np.ascontiguousarray(b, dtype=np.float32)) for _, b in zip(range(25), demo_store.iter_batches(256, seed=1))]
    log = [train_step(state, x) for x in batches]
    assert log[-1]["mse"] < 0.7 * log[0]["mse"], kind
    assert all(np.isfinite(entry["loss"]) for entry in log)
    assert all(p.dtype == torch.float32 for p in state.sae.parameters()) and all(b.dtype == torch.float32 for b in state.sae.buffers())
    assert all(v.dtype == torch.float32 for s in state.optimizer.state.values() for k, v in s.items() if k != "step")


def test_train_command_in_bf16(demo_store, tmp_path, capsys):
    out = tmp_path / "sae"
    argv = ["-q", "train", str(demo_store.path), "--out", str(out), "--width", "512", "--steps", "100", "--batch-size", "256",
            "--warmup", "5", "--l1", "1", "--precision", "bf16"]  # fmt: skip
    assert main(argv) == 0
    assert "(bf16 compute)" in capsys.readouterr().out
    log = [json.loads(line) for line in (out / LOG_NAME).read_text().splitlines()]  # logged at steps 50 and 100
    assert [entry["step"] for entry in log] == [50, 100] and log[-1]["loss"] < log[0]["loss"]  # the loss decreases
    sae = load_sae(out / SAE_NAME)
    x = torch.from_numpy(np.ascontiguousarray(next(demo_store.iter_batches(1024, seed=5)), dtype=np.float32))
    with torch.no_grad():
        mse = (sae(x)[0] - x).pow(2).sum(dim=-1).mean()
    assert mse < 0.5 * (x - x.mean(dim=0)).pow(2).sum(dim=-1).mean()  # it reconstructs far better than the mean does
    checkpoint = torch.load(out / CHECKPOINT_NAME, map_location="cpu", weights_only=True)
    assert checkpoint["train_config"]["precision"] == "bf16"  # the run's settings record its precision
    assert all(v.dtype == torch.float32 for v in checkpoint["sae"].values())  # master weights
    assert all(v.dtype == torch.float32 for s in checkpoint["optimizer"]["state"].values() for k, v in s.items() if k != "step")
    from safetensors import safe_open

    with safe_open(str(out / SAE_NAME), "pt") as fh:
        assert {fh.get_tensor(k).dtype for k in fh.keys()} == {torch.float32}  # the saved SAE is float32
    assert sae.config.d_hidden == 512
    # Resuming in another precision would mix them: refused, as any other changed setting.
    err = _one_line_error(capsys, *[a if a != "bf16" else "fp32" for a in argv[1:]])
    assert "precision: 'bf16' -> 'fp32'" in err
    err = _one_line_error(capsys, "train", str(demo_store.path), "--out", str(tmp_path / "x"), "--precision", "fp16")
    assert err == "interplm: error: unknown compute precision 'fp16' (expected one of fp32, bf16)"
    assert not (tmp_path / "x").exists()


def test_checkpoint_from_before_the_precision_setting_resumes_as_fp32(demo_store, tmp_path):
    config = SAEConfig(d_in=demo_store.dim, d_hidden=256, kind="relu", l1_coefficient=1.0)
    settings = dict(steps=4, batch_size=128, warmup_steps=1, checkpoint_every=2)
    train_sae(demo_store, config, TrainConfig(**{**settings, "steps": 2}), tmp_path, progress=False)
    path = tmp_path / CHECKPOINT_NAME
    payload = torch.load(path, map_location="cpu", weights_only=True)
    del payload["train_config"]["precision"]
    payload["train_config"]["steps"] = 4  # as if a 4-step run had stopped at step 2
    torch.save(payload, path)
    train_sae(demo_store, config, TrainConfig(**settings), tmp_path, progress=False)  # resumes: no error
    assert torch.load(path, map_location="cpu", weights_only=True)["step"] == 4
    with pytest.raises(InterPLMError, match="precision: 'fp32' -> 'bf16'"):
        train_sae(demo_store, config, TrainConfig(**settings, precision="bf16"), tmp_path, progress=False)
