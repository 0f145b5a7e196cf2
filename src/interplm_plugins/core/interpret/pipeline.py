"""Per-residue SAE feature activations for the plugins and the command line, cached.

A :class:`Pipeline` is one ESM-2 model, one (normalised) SAE reading one of its layers and,
optionally, the feature database built with them. ``Pipeline.activations(sequence)`` returns
``[L, F]`` float32 activations; results are cached in memory (LRU) and on disk under
``$INTERPLM_CACHE_DIR`` (default ``~/.cache/interplm-plugins/activations``), keyed by the sequence,
the PLM's identity, the layer and the SAE's hash, so recolouring a structure by another feature
is a lookup, and PyMOL, napari and the CLI share the same results.

A pipeline's ``precision`` (``"fp32"``, the default, or ``"bf16"``) is the compute precision of
its PLM forward pass (:mod:`~interplm_plugins.core.plm.precision`); the SAE encode after it stays
float32 (one product per protein, cheap next to the PLM), so activations are float32 SAE outputs
of bf16-computed embeddings. bf16 results are cached under their own keys.

Nothing here is session state: :func:`load_pipeline` builds a pipeline for whoever asks (each
``interplm`` command builds its own); the one pipeline the PyMOL commands and the napari widgets
share is :func:`interplm_plugins.session.current_pipeline`, outside core.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

from interplm_plugins.core.atomic import atomic_path
from interplm_plugins.core.inputs.sequences import ProteinRecord, clean_sequence
from interplm_plugins.core.plm.embed import embed_sequences
from interplm_plugins.core.plm.loading import load_plm
from interplm_plugins.core.plm.model import PLM
from interplm_plugins.core.plm.precision import DEFAULT_PRECISION, check_precision
from interplm_plugins.core.sae.encode import encode_features
from interplm_plugins.core.sae.files import sae_hash
from interplm_plugins.core.sae.model import SparseAutoencoder, check_fits
from interplm_plugins.errors import InterPLMError

DEMO_DIR = Path(__file__).resolve().parent.parent.parent / "data" / "demo"
DEMO_SAE = DEMO_DIR / "sae.safetensors"
DEMO_DATABASE = DEMO_DIR / "features.sqlite"
#: What `interplm demo` shows by default: MTC7_YEAST (P32633), an AlphaFold DB model (CC BY 4.0) with its
#: Swiss-Prot entry (CC BY 4.0): two transmembrane helices and a disordered region to check features against.
DEMO_SHOWCASE_STRUCTURE = DEMO_DIR / "P32633_AF.pdb"
DEMO_SHOWCASE_ENTRY = DEMO_DIR / "P32633_MTC7_YEAST.txt"


def default_cache_dir() -> Path:
    """``$INTERPLM_CACHE_DIR`` or ``~/.cache/interplm-plugins``."""
    return Path(os.environ.get("INTERPLM_CACHE_DIR") or Path.home() / ".cache" / "interplm-plugins")


class ActivationCache:
    """An LRU of ``[L, F]`` arrays in memory backed by one ``.npy`` (float16) file per key on disk."""

    def __init__(self, directory: Path | None, max_items: int = 64):
        self.directory = directory
        self.max_items = max_items
        self._items: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()  # napari computes on a worker thread
        self.hits = 0
        self.misses = 0

    def get(self, key: str) -> np.ndarray | None:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                self.hits += 1
                return self._items[key]
        if self.directory is not None:
            file = self.directory / f"{key}.npy"
            try:
                array = np.load(file).astype(np.float32)
            except (OSError, ValueError):  # absent, or damaged: recompute
                array = None
            if array is not None:
                self._remember(key, array)
                self.hits += 1
                return array
        self.misses += 1
        return None

    def put(self, key: str, array: np.ndarray) -> None:
        self._remember(key, array)
        if self.directory is not None:
            try:
                with atomic_path(self.directory / f"{key}.npy") as tmp, open(tmp, "wb") as fh:
                    np.save(fh, array.astype(np.float16))
            except OSError:  # a read-only or full cache folder must not stop the work
                pass

    def _remember(self, key: str, array: np.ndarray) -> None:
        with self._lock:
            self._items[key] = array
            self._items.move_to_end(key)
            while len(self._items) > self.max_items:
                self._items.popitem(last=False)


@dataclass
class Pipeline:
    """An ESM-2 model, an SAE on one of its layers, and optionally their feature database;
    ``precision``: the compute precision of the PLM forward pass (see the module docstring)."""

    plm: PLM
    sae: SparseAutoencoder
    layer: int
    database_path: Path | None = None
    sae_source: str = ""
    cache: ActivationCache = field(default_factory=lambda: ActivationCache(default_cache_dir() / "activations"))
    precision: str = DEFAULT_PRECISION

    def __post_init__(self) -> None:
        check_precision(self.precision)
        check_fits(self.sae, self.plm, self.layer)
        self._database = None

    @cached_property
    def sae_hash(self) -> str:
        return sae_hash(self.sae)

    @property
    def num_features(self) -> int:
        return self.sae.d_hidden

    @property
    def identity(self) -> str:
        """Names the exact model, layer and SAE, and the compute precision unless it is fp32 (cache keys)."""
        identity = f"{self.plm.identity}|L{self.layer}|{self.sae_hash}"
        return identity if self.precision == DEFAULT_PRECISION else f"{identity}|{self.precision}"

    def _key(self, sequence: str) -> str:
        return hashlib.sha256(f"{self.identity}|{sequence}".encode()).hexdigest()[:32]

    def activations(self, sequence: str, record: str | None = None) -> np.ndarray:
        """``[len(sequence), F]`` normalised feature activations of one protein sequence (cached)."""
        sequence = clean_sequence(sequence, record=record)
        key = self._key(sequence)
        cached = self.cache.get(key)
        if cached is not None:
            return cached
        (_, reps), = embed_sequences(self.plm, [ProteinRecord(record or "query", sequence)], [self.layer], precision=self.precision)
        acts = encode_features(self.sae, reps[self.layer])
        self.cache.put(key, acts)
        return acts

    def check_feature(self, feature: int) -> int:
        """Return ``feature`` if the SAE has it, else raise."""
        if not 0 <= int(feature) < self.num_features:
            raise InterPLMError(f"feature {feature} does not exist: the SAE has features 0..{self.num_features - 1}", file=self.sae_source)
        return int(feature)

    @property
    def database(self):
        """The :class:`~interplm_plugins.core.database.schema.FeatureDatabase`, or ``None`` without one."""
        if self._database is None and self.database_path is not None:
            from interplm_plugins.core.database.schema import FeatureDatabase

            self._database = FeatureDatabase(self.database_path)
        return self._database

    def describe(self) -> dict[str, str]:
        """What this pipeline is, for ``interplm info`` and the panels."""
        return {
            "model": f"{self.plm.name} ({self.plm.source})",
            "layer": str(self.layer),
            "sae": f"{self.sae_source} ({self.sae.kind}, {self.num_features} features, hash {self.sae_hash})",
            "database": str(self.database_path) if self.database_path else "none",
        }


def load_pipeline(model: str | os.PathLike | None = None, sae: str | os.PathLike | None = None, database: str | os.PathLike | None = None,
                  layer: int | None = None, *, sae_kind: str | None = None, allow_mismatch: bool = False, require_normalized: bool = True,
                  normalize_store: str | os.PathLike | None = None, precision: str = DEFAULT_PRECISION) -> Pipeline:
    """Build a :class:`Pipeline`; each part left ``None`` is the embedded demo's.

    ``layer`` defaults to the layer the SAE records it was trained on; ``sae_kind`` overrides how
    an ``ae.pt`` encodes (see :func:`~interplm_plugins.core.sae.files.load_sae`). The parts are checked
    against each other (:mod:`~interplm_plugins.core.sae.provenance`): the SAE against the PLM, the
    database against the SAE and PLM; a mismatch is an error unless ``allow_mismatch``. With
    ``require_normalized`` (thresholds and colours need it) an un-normalised SAE is an error, or is
    normalised over the embedding store ``normalize_store`` when one is given. ``precision``: the
    PLM's compute precision (``"fp32"`` or ``"bf16"``; see the module docstring).
    """
    from interplm_plugins.core.database.provenance import check_database_file_matches_sae
    from interplm_plugins.core.sae import provenance

    check_precision(precision)
    from interplm_plugins.core.sae.releases import load_sae_spec

    if sae is None and not DEMO_SAE.exists():
        raise InterPLMError("the embedded demo SAE is missing from the installation", file=DEMO_SAE)
    plm = load_plm(model if model is not None else "demo")
    # A path, or a Hub spec (hf://..., interplm-esm2-8m/layer_4) checked against the PLM; see core/sae/releases.py.
    sae_model, plm, layer, sae_source = load_sae_spec(str(sae) if sae is not None else DEMO_SAE, plm, layer, kind=sae_kind)
    if layer is None:
        layer = sae_model.config.plm_layer if sae_model.config.plm_layer is not None else plm.num_layers
    provenance.check_sae_matches_plm(sae_model, plm, int(layer), allow_mismatch=allow_mismatch, source=sae_source)
    if require_normalized:
        from interplm_plugins.core.plm.store import EmbeddingStore

        store = EmbeddingStore(normalize_store) if normalize_store is not None else None
        sae_model = provenance.require_normalized(sae_model, store=store, source=sae_source, allow_mismatch=allow_mismatch)
    if database is None and sae is None and DEMO_DATABASE.exists():
        database = DEMO_DATABASE
    if database:
        check_database_file_matches_sae(database, sae_model, plm=plm, layer=int(layer), allow_mismatch=allow_mismatch)
    return Pipeline(plm=plm, sae=sae_model, layer=int(layer), database_path=Path(database) if database else None, sae_source=sae_source,
                    precision=precision)  # fmt: skip


DEMO_STRUCTURE_NAME = "1hpv.pdb"


def demo_structure_path() -> Path:
    """The demo structure (HIV-1 protease with an inhibitor, PDB 1HPV): the package's copy if shipped,
    else the one in PyMOL's wheel."""
    shipped = DEMO_DIR / DEMO_STRUCTURE_NAME
    if shipped.is_file():
        return shipped
    import importlib.util

    spec = importlib.util.find_spec("pymol")  # only to locate its data folder; PyMOL is not started
    if spec is None or spec.origin is None:
        raise InterPLMError("the demo structure is not shipped and PyMOL (which carries a copy) is not installed; pip install pymol-open-source", file=shipped)
    candidate = Path(spec.origin).resolve().parent / "pymol_path" / "data" / "tut" / DEMO_STRUCTURE_NAME
    if not candidate.is_file():
        raise InterPLMError("the demo structure is missing from both this package and PyMOL's data", file=candidate)
    return candidate
