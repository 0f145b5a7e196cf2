"""Embedding extraction and the on-disk store, on real fair-esm ESM-2 checkpoints and real sequences."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from interplm_plugins.core.inputs.sequences import ProteinRecord, read_fasta
from interplm_plugins.core.plm.embed import embed_sequences, embed_to_store, forward_layers, window_starts
from interplm_plugins.core.plm.store import EmbeddingStore
from interplm_plugins.errors import InterPLMError


@pytest.fixture(scope="module")
def real_records(swissprot_fasta):
    return read_fasta(swissprot_fasta)[:40]


def _reference(plm, sequence: str, layer: int) -> np.ndarray:
    """fair-esm's own forward pass on one sequence, BOS/EOS removed."""
    _, _, toks = plm.alphabet.get_batch_converter()([("x", sequence)])
    with torch.no_grad():
        rep = plm.model(toks, repr_layers=[layer])["representations"][layer]
    return rep[0, 1 : len(sequence) + 1].numpy()


@pytest.mark.parametrize("layers", [[0], [1], [2], [1, 2]])
def test_forward_layers_matches_fair_esm(tiny_plm, layers):
    seqs = [("a", "MKTAYIAKQRQISFVKSHFSRQ"), ("b", "MXUOBZACDE")]
    _, _, toks = tiny_plm.alphabet.get_batch_converter()(seqs)
    with torch.no_grad():
        ref = tiny_plm.model(toks, repr_layers=layers)["representations"]
        ours = forward_layers(tiny_plm, toks, layers)
    assert sorted(ours) == sorted(layers)
    real = toks.ne(tiny_plm.alphabet.padding_idx)
    for layer in layers:
        torch.testing.assert_close(ours[layer][real], ref[layer][real])
        assert not ours[layer][~real].any()  # padding positions are zero (fair-esm's are meaningless)


def test_batched_embeddings_equal_one_by_one(tiny_plm, real_records):
    short = [r for r in real_records if len(r.sequence) <= 1022][:12]
    got = dict(embed_sequences(tiny_plm, short, [1, 2], toks_per_batch=2000))
    assert set(got) == {r.id for r in short}
    for rec in short:
        assert got[rec.id][2].shape == (len(rec.sequence), tiny_plm.embed_dim)
        np.testing.assert_allclose(got[rec.id][2], _reference(tiny_plm, rec.sequence, 2), atol=2e-4)
        np.testing.assert_allclose(got[rec.id][1], _reference(tiny_plm, rec.sequence, 1), atol=2e-4)


def test_window_starts_cover_and_overlap():
    assert window_starts(100, 1022, 256) == [0]
    starts = window_starts(3000, 1022, 256)
    assert starts[0] == 0 and starts[-1] + 1022 == 3000
    assert all(b - a <= 1022 - 256 for a, b in zip(starts, starts[1:]))


def test_long_protein_uses_overlapping_windows(tiny_plm, real_records):
    rec = max(real_records, key=lambda r: len(r.sequence))
    window, overlap = 60, 20
    (pid, arrays), = list(embed_sequences(tiny_plm, [rec], 2, window=window, overlap=overlap))
    emb = arrays[2]
    assert emb.shape == (len(rec.sequence), tiny_plm.embed_dim)
    starts = window_starts(len(rec.sequence), window, overlap)
    # The middle of each window comes from that window's own forward pass.
    for s in starts[:3]:
        ref = _reference(tiny_plm, rec.sequence[s : s + window], 2)
        mid = slice(s + 25, s + 35)
        np.testing.assert_allclose(emb[mid], ref[25:35], atol=2e-4)


def test_embedding_rejects_missing_layer(tiny_plm):
    with pytest.raises(InterPLMError, match="layer 7 does not exist"):
        list(embed_sequences(tiny_plm, [ProteinRecord("p", "MKT")], [7]))


def test_store_round_trip_and_index(tiny_plm, real_records, tmp_path):
    stores = embed_to_store(tiny_plm, real_records, [1, 2], tmp_path / "emb", shard_residues=3000)
    assert set(stores) == {1, 2}
    store = stores[2]
    assert store.complete and len(store) == len(real_records)
    assert store.num_residues == sum(len(r.sequence) for r in real_records)
    assert len(list((tmp_path / "emb" / "layer_2").glob("shard_*.npy"))) > 1
    assert store.metadata["layer"] == 2 and store.metadata["plm_identity"] == tiny_plm.identity
    for rec in [r for r in real_records if len(r.sequence) <= 1022][:5]:
        np.testing.assert_allclose(store.get(rec.id), _reference(tiny_plm, rec.sequence, 2), atol=2e-4)
    reopened = EmbeddingStore(tmp_path / "emb" / "layer_1")
    assert reopened.proteins == stores[1].proteins


def test_iter_batches_is_a_deterministic_resumable_shuffle(tiny_plm, real_records, tmp_path):
    store = embed_to_store(tiny_plm, real_records, 2, tmp_path / "emb", shard_residues=2500)[2]
    first = list(store.iter_batches(512, seed=3, epochs=1))
    rows = np.concatenate(first)
    assert len(rows) == store.num_residues
    everything = np.concatenate([store.get(p) for p in store.proteins])
    # A permutation of all residues: same multiset of rows, different order.
    key = lambda a: np.lexsort(a.T[::-1])
    np.testing.assert_array_equal(rows[key(rows)], everything[key(everything)])
    assert not np.array_equal(rows, everything)
    again = list(store.iter_batches(512, seed=3, epochs=1))
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    cycling = store.iter_batches(512, seed=3)
    stream = [next(cycling) for _ in range(len(first) + 4)]
    resumed = store.iter_batches(512, seed=3, start_batch=5)
    for n in range(5, len(stream)):
        np.testing.assert_array_equal(next(resumed), stream[n])


def test_interrupted_store_resumes_without_redoing_work(tiny_plm, real_records, tmp_path):
    out = tmp_path / "emb"
    embed_to_store(tiny_plm, real_records[:20], 1, out, shard_residues=1000)
    index = json.loads((out / "store.json").read_text())
    index["complete"] = False  # as if killed after the last shard
    (out / "store.json").write_text(json.dumps(index))
    (out / "shard_09999.npy").write_bytes(b"half-written")  # a shard a killed run never indexed
    store = embed_to_store(tiny_plm, real_records, 1, out, shard_residues=1000)[1]
    assert store.complete and set(store.proteins[:20]) == {r.id for r in real_records[:20]}
    assert len(store) == len(real_records)
    assert not (out / "shard_09999.npy").exists()


def test_truncated_shard_is_a_clear_error(tiny_plm, real_records, tmp_path):
    store = embed_to_store(tiny_plm, real_records[:5], 1, tmp_path / "emb")[1]
    shard = tmp_path / "emb" / "shard_00000.npy"
    shard.write_bytes(shard.read_bytes()[:-4000])
    with pytest.raises(InterPLMError, match="shard_00000.npy"):
        EmbeddingStore(tmp_path / "emb").get(store.proteins[0])


def test_store_refuses_other_model(tiny_plm, real_records, tmp_path):
    from interplm_plugins.core.plm.loading import load_plm
    from interplm_plugins.core.plm.model import new_esm2, save_esm2_checkpoint

    embed_to_store(tiny_plm, real_records[:3], 1, tmp_path / "emb")
    other = load_plm(save_esm2_checkpoint(new_esm2(2, 32, 4, seed=1), tmp_path / "esm2_other.pt"))
    with pytest.raises(InterPLMError, match="plm_identity"):
        embed_to_store(other, real_records[:3], 1, tmp_path / "emb")


def test_training_refuses_an_interrupted_store(tiny_plm, real_records, tmp_path):
    from interplm_plugins.core.sae.model import SAEConfig
    from interplm_plugins.core.sae.train import TrainConfig, train_sae

    out = tmp_path / "emb"
    embed_to_store(tiny_plm, real_records[:5], 1, out)
    index = json.loads((out / "store.json").read_text())
    index["complete"] = False
    (out / "store.json").write_text(json.dumps(index))
    with pytest.raises(InterPLMError, match="incomplete"):
        train_sae(EmbeddingStore(out), SAEConfig(d_in=32, d_hidden=16), TrainConfig(steps=2, batch_size=8), tmp_path / "sae", progress=False)
