"""Shared fixtures: real data from ../shared/data and small real fair-esm ESM-2 checkpoints made here."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("INTERPLM_OFFLINE", "1")  # never try the network from tests
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
torch.set_num_threads(min(2, torch.get_num_threads()))

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = (REPO.parent / "shared" / "data").resolve()


def _require_shared() -> Path:
    if not SHARED_DATA.is_dir():
        raise RuntimeError(f"the real test data is expected at {SHARED_DATA} (../shared/data beside the checkout)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data``: real Swiss-Prot entries, sequences and structures (never copied into the repo)."""
    return _require_shared()


@pytest.fixture(scope="session")
def tiny_esm2_path(tmp_path_factory) -> Path:
    """A real fair-esm ESM-2 checkpoint (2 layers, 32 dims, random weights) in fair-esm's format."""
    from interplm_plugins.core.plm.model import new_esm2, save_esm2_checkpoint

    path = tmp_path_factory.mktemp("plm") / "esm2_t2_tiny_test.pt"
    return save_esm2_checkpoint(new_esm2(num_layers=2, embed_dim=32, attention_heads=4, seed=0), path)


@pytest.fixture(scope="session")
def tiny_plm(tiny_esm2_path):
    from interplm_plugins.core.plm.loading import load_plm

    return load_plm(tiny_esm2_path)


@pytest.fixture(scope="session")
def swissprot_fasta(shared_data) -> Path:
    return shared_data / "sequences" / "swissprot_train.fasta"


@pytest.fixture(scope="session")
def swissprot_dat(shared_data) -> Path:
    return shared_data / "uniprot" / "swissprot_train.dat.gz"


@pytest.fixture(scope="session")
def swissprot_entries(swissprot_dat):
    from interplm_plugins.core.inputs.uniprot import read_uniprot

    return read_uniprot(swissprot_dat)


@pytest.fixture(scope="session")
def tiny_sae_path(tiny_plm, swissprot_fasta, tmp_path_factory) -> Path:
    """A real, normalised ReLU SAE (32 -> 64) on layer 2 of the tiny ESM-2, saved as safetensors + JSON.

    Its weights are random (training is tested on its own); the encoder bias is set so that each
    feature fires on part of the residues, as a trained SAE's features do.
    """
    from interplm_plugins.core.inputs.sequences import read_fasta
    from interplm_plugins.core.plm.embed import embed_to_store
    from interplm_plugins.core.sae.files import save_sae
    from interplm_plugins.core.sae.model import SAEConfig, SparseAutoencoder
    from interplm_plugins.core.sae.normalize import feature_max_activations, normalize_sae

    folder = tmp_path_factory.mktemp("sae")
    store = embed_to_store(tiny_plm, read_fasta(swissprot_fasta)[:30], 2, folder / "emb")[2]
    config = SAEConfig(d_in=32, d_hidden=64, kind="relu", plm=tiny_plm.name, plm_identity=tiny_plm.identity, plm_layer=2)
    sae = SparseAutoencoder(config, generator=torch.Generator().manual_seed(0)).eval()
    with torch.no_grad():
        sae.encoder.weight.mul_(20.0)
        sae.encoder.bias.fill_(-0.5)
    sae = normalize_sae(sae, feature_max_activations(sae, store))
    return save_sae(sae, folder / "sae.safetensors")


@pytest.fixture(scope="session")
def tiny_db_records(swissprot_fasta):
    """~150 real Swiss-Prot proteins (valid and test splits included), for small feature databases."""
    from interplm_plugins.core.inputs.sequences import read_fasta

    return [r for r in read_fasta(swissprot_fasta) if len(r.sequence) <= 600][:150]


@pytest.fixture(scope="session")
def tiny_db_path(tiny_esm2_path, tiny_sae_path, tiny_db_records, swissprot_entries, tmp_path_factory) -> Path:
    """A real feature database of the tiny pipeline over real Swiss-Prot proteins, with concept matches."""
    from interplm_plugins.core.database.from_pipeline import build_database
    from interplm_plugins.core.interpret.pipeline import load_pipeline

    pipeline = load_pipeline(tiny_esm2_path, tiny_sae_path)
    halves = alternate_halves(swissprot_entries, {r.id for r in tiny_db_records})
    return build_database(pipeline, tiny_db_records, tmp_path_factory.mktemp("db") / "features.sqlite", halves=halves, progress=False)


def alternate_halves(entries, accessions=None, min_instances: int = 3, min_proteins: int = 2):
    """Concept halves of real entries without clustering (every other protein to validation): for fixtures
    where the halves' homology does not matter; ``interplm concepts`` makes them from MMseqs2 clusters."""
    from interplm_plugins.core.concepts import build_concept_labels

    chosen = [e for e in entries if accessions is None or e.accession in accessions]
    return halve_alternately(build_concept_labels(chosen, min_instances=min_instances, min_proteins=min_proteins))


def halve_alternately(labels):
    """``labels`` halved every other protein (validation, test, validation, ...), as :class:`ConceptHalves`."""
    from interplm_plugins.core.concepts import ConceptHalves, ConceptLabels

    splits = {p: "valid" if i % 2 else "test" for i, p in enumerate(labels.proteins)}
    return ConceptHalves.from_splits(ConceptLabels(labels.concepts, labels.sequences, {p: labels.matrix(p) for p in labels.proteins}, splits))


@pytest.fixture()
def tiny_pipeline(tiny_esm2_path, tiny_sae_path, tiny_db_path, tmp_path, monkeypatch):
    """The tiny ESM-2 + SAE + database as the session's pipeline (as ``interplm use`` would set it),
    with a fresh activation cache folder; the session is reset afterwards."""
    from interplm_plugins import session

    monkeypatch.setenv("INTERPLM_CACHE_DIR", str(tmp_path / "cache"))
    session.reset_session()
    pipeline = session.use_pipeline(model=str(tiny_esm2_path), sae=str(tiny_sae_path), database=str(tiny_db_path))
    yield pipeline
    session.reset_session()
