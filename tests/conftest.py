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
    from interplm_plugins.core.plm import new_esm2, save_esm2_checkpoint

    path = tmp_path_factory.mktemp("plm") / "esm2_t2_tiny_test.pt"
    return save_esm2_checkpoint(new_esm2(num_layers=2, embed_dim=32, attention_heads=4, seed=0), path)


@pytest.fixture(scope="session")
def tiny_plm(tiny_esm2_path):
    from interplm_plugins.core.plm import load_plm

    return load_plm(tiny_esm2_path)


@pytest.fixture(scope="session")
def swissprot_fasta(shared_data) -> Path:
    return shared_data / "sequences" / "swissprot_train.fasta"


@pytest.fixture(scope="session")
def swissprot_dat(shared_data) -> Path:
    return shared_data / "uniprot" / "swissprot_train.dat.gz"
