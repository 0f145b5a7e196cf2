"""Provenance checks on real parts: an SAE with another fair-esm ESM-2 of the same shape, a database
with another SAE of the same width, an un-normalised SAE where thresholds matter, DNA given as
proteins. Each is a one-line error naming both sides, unless --allow-mismatch says otherwise."""

from __future__ import annotations

import logging
import shutil

import numpy as np
import pytest
import torch

from interplm_plugins.cli import main
from interplm_plugins.core.inputs.sequences import clean_sequence, read_fasta, write_fasta
from interplm_plugins.core.interpret.pipeline import load_pipeline
from interplm_plugins.core.plm.embed import embed_to_store
from interplm_plugins.core.plm.loading import load_plm
from interplm_plugins.core.plm.model import new_esm2, save_esm2_checkpoint
from interplm_plugins.core.sae.files import load_sae, save_sae
from interplm_plugins.core.sae.model import SAEConfig, SparseAutoencoder
from interplm_plugins.core.sae.provenance import check_sae_matches_plm, plm_fingerprint
from interplm_plugins.errors import InterPLMError


@pytest.fixture(scope="module")
def other_esm2_path(tmp_path_factory):
    """A real ESM-2 of the tiny model's exact shape (2 layers, 32 dims) with other weights."""
    return save_esm2_checkpoint(new_esm2(num_layers=2, embed_dim=32, attention_heads=4, seed=7), tmp_path_factory.mktemp("other") / "esm2_t2_other_test.pt")


@pytest.fixture(scope="module")
def few_fasta(swissprot_fasta, tmp_path_factory):
    path = tmp_path_factory.mktemp("few") / "few.fasta"
    write_fasta([r for r in read_fasta(swissprot_fasta) if len(r.sequence) < 300][:3], path)
    return path


@pytest.fixture(scope="module")
def raw_sae_path(tiny_sae_path, tmp_path_factory):
    """The conftest SAE with its normalisation undone in the config only (weights as they are)."""
    sae = load_sae(tiny_sae_path)
    sae.config.normalized = False
    return save_sae(sae, tmp_path_factory.mktemp("raw") / "raw.safetensors")


def _cli_error(capsys, *argv: str) -> str:
    assert main(["-q", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err
    return err


def test_sae_with_another_plm_of_the_same_shape_is_refused(tiny_sae_path, tiny_plm, other_esm2_path, few_fasta, tmp_path, capsys):
    other = load_plm(other_esm2_path)
    err = _cli_error(capsys, "build-db", str(few_fasta), "--model", str(other_esm2_path), "--sae", str(tiny_sae_path), "--out", str(tmp_path / "x.sqlite"))
    assert "trained on esm2_t2_tiny_test" in err and "esm2_t2_other_test" in err and "--allow-mismatch" in err
    assert plm_fingerprint(tiny_plm.identity) in err and plm_fingerprint(other.identity) in err
    assert not (tmp_path / "x.sqlite").exists()
    # the user who knows what they do
    out = tmp_path / "allowed.sqlite"
    argv = ["-q", "build-db", str(few_fasta), "--model", str(other_esm2_path), "--sae", str(tiny_sae_path), "--out", str(out), "--allow-mismatch"]
    assert main(argv) == 0 and out.is_file()


def test_the_same_weights_under_another_file_name_match(tiny_esm2_path, tiny_sae_path, tmp_path):
    renamed = tmp_path / "esm2_my_copy.pt"
    shutil.copy(tiny_esm2_path, renamed)
    shutil.copy(tiny_esm2_path.with_name(tiny_esm2_path.stem + "-contact-regression.pt"), tmp_path / "esm2_my_copy-contact-regression.pt")
    pipeline = load_pipeline(model=renamed, sae=tiny_sae_path)
    assert pipeline.plm.name == "esm2_my_copy" and pipeline.sae.config.plm == "esm2_t2_tiny_test"


def test_demo_sae_on_another_256_dim_model_is_refused(tmp_path, few_fasta, capsys):
    """The issue's case: the embedded SAE with a different ESM-2 of the demo's width ran and printed labels."""
    other = save_esm2_checkpoint(new_esm2(num_layers=4, embed_dim=256, attention_heads=8, seed=3), tmp_path / "esm2_t4_other256.pt")
    err = _cli_error(capsys, "build-db", str(few_fasta), "--model", str(other), "--out", str(tmp_path / "x.sqlite"))
    assert "esm2_t4_3M_interplm_demo" in err and "esm2_t4_other256" in err


def test_database_of_another_sae_is_refused(tiny_esm2_path, tiny_sae_path, tiny_db_path, tmp_path, caplog):
    other = load_sae(tiny_sae_path)
    with torch.no_grad():
        other.encoder.bias.add_(0.01)  # same width, same PLM: another SAE all the same
    other_path = save_sae(other, tmp_path / "other.safetensors")
    with pytest.raises(InterPLMError, match="database was built with SAE [0-9a-f]{16} .*not with this SAE") as info:
        load_pipeline(model=tiny_esm2_path, sae=other_path, database=tiny_db_path)
    assert str(tiny_db_path) in str(info.value)
    with caplog.at_level(logging.WARNING):
        pipeline = load_pipeline(model=tiny_esm2_path, sae=other_path, database=tiny_db_path, allow_mismatch=True)
    assert pipeline.database is not None and "allowed by --allow-mismatch" in caplog.text
    # the right SAE passes
    assert load_pipeline(model=tiny_esm2_path, sae=tiny_sae_path, database=tiny_db_path).database.num_features == 64


def test_cli_color_refuses_another_sae_database(tiny_esm2_path, tiny_db_path, tmp_path, capsys):
    sae = SparseAutoencoder(SAEConfig(d_in=32, d_hidden=64, kind="relu", plm="esm2_t2_tiny_test", plm_layer=2, normalized=True))
    other = save_sae(sae, tmp_path / "other.safetensors")
    err = _cli_error(capsys, "color", "x.pdb", "--feature", "1", "--out", str(tmp_path / "x.png"), "--model", str(tiny_esm2_path),
                     "--sae", str(other), "--db", str(tiny_db_path))  # fmt: skip
    assert "database was built with SAE" in err and not (tmp_path / "x.png").exists()


def test_unnormalised_sae_is_refused_or_normalised_with_a_store(tiny_esm2_path, tiny_plm, raw_sae_path, swissprot_fasta, tmp_path, capsys):
    with pytest.raises(InterPLMError, match="not normalised.*interplm normalize"):
        load_pipeline(model=tiny_esm2_path, sae=raw_sae_path)
    err = _cli_error(capsys, "report", "--concepts", str(tmp_path), "--out", str(tmp_path / "r"), "--model", str(tiny_esm2_path), "--sae", str(raw_sae_path))
    assert "not normalised" in err
    store = embed_to_store(tiny_plm, read_fasta(swissprot_fasta)[:8], 2, tmp_path / "emb")[2]
    pipeline = load_pipeline(model=tiny_esm2_path, sae=raw_sae_path, normalize_store=tmp_path / "emb")
    assert pipeline.sae.config.normalized
    x = torch.from_numpy(np.concatenate([store.get(p) for p in store.proteins]))
    with torch.no_grad():
        maxima = pipeline.sae.encode(x).amax(dim=0)
    alive = maxima > 0
    assert alive.sum() > 10
    torch.testing.assert_close(maxima[alive], torch.ones(int(alive.sum())))
    # steering reads any SAE's units: no refusal there
    assert load_pipeline(model=tiny_esm2_path, sae=raw_sae_path, require_normalized=False).sae.config.normalized is False


def test_store_of_another_plm_is_refused_by_normalize_and_evaluate(tiny_sae_path, other_esm2_path, swissprot_fasta, tmp_path, capsys):
    other = load_plm(other_esm2_path)
    embed_to_store(other, read_fasta(swissprot_fasta)[:4], 2, tmp_path / "emb")
    err = _cli_error(capsys, "normalize", str(tiny_sae_path), "--store", str(tmp_path / "emb"), "--out", str(tmp_path / "n.safetensors"))
    assert "embedding store" in err and "esm2_t2_other_test" in err
    err = _cli_error(capsys, "evaluate", str(tiny_sae_path), "--store", str(tmp_path / "emb"))
    assert "esm2_t2_other_test" in err


def test_interplm_files_without_identity_check_the_width_only(tiny_plm, tmp_path):
    """InterPLM's ae.pt records no PLM: only what is known (width, layer) is compared."""
    sae = SparseAutoencoder(SAEConfig(d_in=32, d_hidden=40))
    state = {"bias": sae.bias.detach(), "encoder.weight": sae.encoder.weight.detach(), "encoder.bias": sae.encoder.bias.detach(),
             "decoder.weight": sae.decoder.weight.detach()}  # fmt: skip
    torch.save(state, tmp_path / "ae.pt")
    check_sae_matches_plm(load_sae(tmp_path / "ae.pt"), tiny_plm, 2)
    wide = SparseAutoencoder(SAEConfig(d_in=48, d_hidden=40))
    with pytest.raises(InterPLMError, match="width 48 does not fit"):
        check_sae_matches_plm(wide, tiny_plm, 2)
    with pytest.raises(InterPLMError, match="width 48 does not fit"):  # not even with the override
        check_sae_matches_plm(wide, tiny_plm, 2, allow_mismatch=True)


def test_nucleotide_sequences_are_an_error_with_a_hint():
    with pytest.raises(InterPLMError, match="nucleotide sequence.*translate") as info:
        clean_sequence("ATGGCGTACGTTAGCCTAGGATCCAAGT", record="dna1")
    assert info.value.record == "dna1"
    with pytest.raises(InterPLMError, match="nucleotide"):
        clean_sequence("ACGUACGUACGUAAUUGGCCAAUG")
    # proteins rich in these letters are proteins
    for protein in ("GAGAGAGAGAGAGAGAGAGAGAGA", "MACGTACGTACGTACGTACGTACGT", "ACGTACGTACGTACG"):
        assert clean_sequence(protein) == protein
