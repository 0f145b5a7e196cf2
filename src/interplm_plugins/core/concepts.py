"""Swiss-Prot concepts as per-residue labels, and how well SAE features match them (InterPLM's metrics).

Concepts (following InterPLM, Simon & Zou 2025, ``interplm/concept``):

- each feature family of the UniProt feature table (:data:`FAMILIES`) gives concepts; families
  with many kinds are split into sub-concepts named ``"<family>: <kind>"``, by ligand for binding
  sites (``"Binding site: ATP"``) and by the first clause of the note for the others
  (``"Domain: Protein kinase"``, ``"Modified residue: Phosphoserine"``), with repeat numbers
  dropped (``"Kringle 1"`` and ``"Kringle 2"`` are both ``"Domain: Kringle"``);
- families that are one thing (``"Helix"``, ``"Signal peptide"``), and most split families as a
  whole (``"Binding site"``), are concepts too; as in InterPLM, there is no whole-family concept
  for Domain, Region, Motif, Compositional bias, Modified residue and Topological domain, whose
  kinds have nothing in common;
- every feature occurrence is one *instance*; instance ids are numbered per concept across the
  whole dataset, so a label value identifies one domain / site / bond. Disulfide bonds and
  cross-links label only their two bonded residues, sharing one id. Where two occurrences of
  one concept overlap, the later one owns the shared residues;
- concepts are *residue-level* (active site, modified residue, glycosylation, lipidation,
  disulfide bond, cross-link, site: InterPLM's per-amino-acid concepts) or *domain-level* (all
  others). A domain-level concept is recalled per instance: a feature that fires anywhere in a
  kinase domain has found that domain.

Concept size: InterPLM keeps a sub-concept with at least 100 occurrences in all of Swiss-Prot
(10 in its 1,000-protein walkthrough) and evaluates a concept only if the evaluation split has
enough examples. For our few hundred to few thousand proteins the defaults are
``min_instances=10`` occurrences in at least ``min_proteins=3`` proteins over the whole file;
concepts without any example in the validation or the test split are left out of the reported
metrics.

Metrics (InterPLM's definitions), for a feature ``f`` at threshold ``t`` and a concept ``c``:
a residue is *active* when its normalised activation is strictly greater than ``t`` (``>``, as
InterPLM, so ``t = 0`` means "fires at all"); ``tp`` = active residues labelled ``c``, ``fp`` =
active residues not labelled ``c``, ``tp_per_domain`` = instances of ``c`` with at least one active
residue; precision = tp / (tp + fp), recall = tp / labelled residues, recall_per_domain =
tp_per_domain / instances, f1 and f1_per_domain the harmonic means of precision with each recall.
The F1 that selects a feature for a concept (``selection_f1``) is f1 for residue-level concepts
and f1_per_domain for domain-level ones. The feature and threshold are chosen on the validation
proteins and reported on the test proteins: every annotated protein is in one of the two halves
(:func:`core.sequences.concept_split`, independent of the train/valid/test split of PLM and SAE
training, which never see labels).
"""

from __future__ import annotations

import os
import re
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd
from scipy import sparse

from interplm_plugins.core.atomic import atomic_path, write_text_atomic
from interplm_plugins.core.sequences import CONCEPT_SPLITS, concept_split
from interplm_plugins.core.uniprot import UniProtEntry
from interplm_plugins.errors import InterPLMError

#: Activation thresholds of InterPLM (activations are normalised to [0, 1]).
THRESHOLDS: tuple[float, ...] = (0.0, 0.15, 0.5, 0.6, 0.8)
DEFAULT_MIN_INSTANCES = 10
DEFAULT_MIN_PROTEINS = 3

LABELS_FILE = "labels.npz"
CONCEPTS_FILE = "concepts.tsv"


@dataclass(frozen=True)
class FamilySpec:
    """How one UniProt feature family becomes concepts.

    ``split_by`` is ``"ligand"``, ``"note"`` or ``None`` (one concept); ``whole_family`` adds a
    concept for the family as a whole; ``paired`` labels only the two ends (bonds).
    """

    family: str
    keys: frozenset[str]
    split_by: str | None
    residue_level: bool
    whole_family: bool = True
    paired: bool = False


def _family(family, keys, split_by, residue_level, whole_family=True, paired=False) -> FamilySpec:
    return FamilySpec(family, frozenset(keys.split()), split_by, residue_level, whole_family, paired)


#: The concept families, in the order concepts are listed.
FAMILIES: tuple[FamilySpec, ...] = (
    _family("Binding site", "BINDING METAL NP_BIND CA_BIND", "ligand", False),
    _family("Active site", "ACT_SITE", "note", True),
    _family("Signal peptide", "SIGNAL", None, False),
    _family("Transit peptide", "TRANSIT", "note", False),
    _family("Helix", "HELIX", None, False),
    _family("Beta strand", "STRAND", None, False),
    _family("Turn", "TURN", None, False),
    _family("Coiled coil", "COILED", None, False),
    _family("Disulfide bond", "DISULFID", None, True, paired=True),
    _family("Zinc finger", "ZN_FING", "note", False),
    _family("Domain", "DOMAIN", "note", False, whole_family=False),
    _family("Motif", "MOTIF", "note", False, whole_family=False),
    _family("Region", "REGION", "note", False, whole_family=False),
    _family("Compositional bias", "COMPBIAS", "note", False, whole_family=False),
    _family("Modified residue", "MOD_RES", "note", True, whole_family=False),
    _family("Glycosylation", "CARBOHYD", "note", True),
    _family("Lipidation", "LIPID", "note", True),
    _family("Transmembrane", "TRANSMEM", None, False),
    _family("Intramembrane", "INTRAMEM", None, False),
    _family("Topological domain", "TOPO_DOM", "note", False, whole_family=False),
    _family("Repeat", "REPEAT", "note", False),
    _family("DNA binding", "DNA_BIND", "note", False),
    _family("Cross-link", "CROSSLNK", "note", True, paired=True),
    _family("Site", "SITE", "note", True),
)
_FAMILY_OF_KEY = {key: spec for spec in FAMILIES for key in spec.keys}
_FAMILY_BY_NAME = {spec.family: spec for spec in FAMILIES}
_REPEAT_NUMBER = re.compile(r"\s+\d+$")


@dataclass(frozen=True)
class Concept:
    """One concept: its name, its family and whether it is residue-level (else domain-level)."""

    name: str
    family: str
    residue_level: bool


def concept_kind(spec: FamilySpec, ligand: str, description: str) -> str:
    """The sub-concept kind of a feature: ligand or first clause of the note, repeat number dropped."""
    text = ligand if spec.split_by == "ligand" else description if spec.split_by == "note" else ""
    kind = " ".join(text.split(";")[0].split()).rstrip(".")
    return _REPEAT_NUMBER.sub("", kind)


def _feature_concepts(spec: FamilySpec, ligand: str, description: str) -> list[str]:
    names = []
    if spec.split_by is None or spec.whole_family:
        names.append(spec.family)
    if spec.split_by is not None:
        kind = concept_kind(spec, ligand, description)
        if kind:
            names.append(f"{spec.family}: {kind}")
    return names


class ConceptLabels:
    """Per-residue concept labels of a set of proteins.

    ``concepts`` lists the :class:`Concept` columns; :meth:`matrix` gives a protein's labels as a
    sparse int32 ``[L, C]`` matrix whose nonzero values are instance ids (:meth:`dense` as an
    array); :meth:`stack` concatenates proteins for :func:`count_matches`.
    """

    def __init__(
        self,
        concepts: Sequence[Concept],
        sequences: dict[str, str],
        matrices: dict[str, sparse.csr_matrix],
    ):
        self.concepts = list(concepts)
        self.sequences = dict(sequences)
        self._matrices = matrices
        for pid, mat in matrices.items():
            if mat.shape != (len(self.sequences[pid]), len(self.concepts)):
                raise InterPLMError(f"label matrix of shape {mat.shape} does not fit the sequence", record=pid)

    @property
    def proteins(self) -> list[str]:
        """Protein ids (UniProt accessions), in file order."""
        return list(self.sequences)

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.concepts]

    @property
    def families(self) -> list[str]:
        return [c.family for c in self.concepts]

    @property
    def residue_level(self) -> np.ndarray:
        """Boolean mask ``[C]``: True for residue-level concepts."""
        return np.array([c.residue_level for c in self.concepts], dtype=bool)

    def matrix(self, protein_id: str) -> sparse.csr_matrix:
        """Sparse int32 ``[L, C]`` labels of one protein (nonzero = instance id)."""
        try:
            return self._matrices[protein_id]
        except KeyError:
            raise InterPLMError("protein has no concept labels", record=protein_id) from None

    def dense(self, protein_id: str) -> np.ndarray:
        """Dense int32 ``[L, C]`` labels of one protein."""
        return self.matrix(protein_id).toarray()

    def stack(self, protein_ids: Iterable[str]) -> tuple[sparse.csr_matrix, np.ndarray]:
        """Labels of several proteins stacked: ``(csr [sum L, C], offsets [n + 1])``; protein i is rows offsets[i]:offsets[i+1]."""
        ids = list(protein_ids)
        mats = [self.matrix(pid) for pid in ids]
        offsets = np.zeros(len(ids) + 1, dtype=np.int64)
        offsets[1:] = np.cumsum([m.shape[0] for m in mats])
        if not mats:
            return sparse.csr_matrix((0, len(self.concepts)), dtype=np.int32), offsets
        return sparse.vstack(mats, format="csr", dtype=np.int32), offsets

    def proteins_in_split(self, split: str) -> list[str]:
        """The proteins that :func:`concept_split` puts in ``split`` ("valid" or "test")."""
        if split not in CONCEPT_SPLITS:
            raise InterPLMError(f"concept split must be one of {', '.join(CONCEPT_SPLITS)}, not {split!r}")
        return [pid for pid in self.sequences if concept_split(pid) == split]

    def summary(self) -> pd.DataFrame:
        """One row per concept: name, family, level, instances, residues, proteins."""
        stacked, offsets = self.stack(self.proteins)
        n_residues, n_instances = label_totals(stacked)
        per_protein = np.zeros(len(self.concepts), dtype=np.int64)
        for pid in self.proteins:
            per_protein += np.diff(self.matrix(pid).tocsc().indptr) > 0
        return pd.DataFrame(
            {
                "concept": self.names,
                "family": self.families,
                "level": ["residue" if c.residue_level else "domain" for c in self.concepts],
                "instances": n_instances,
                "residues": n_residues,
                "proteins": per_protein,
            }
        )

    def save(self, out_dir: str | os.PathLike) -> None:
        """Write ``labels.npz`` (sparse labels, offsets, ids, sequences) and ``concepts.tsv``, atomically."""
        out_dir = Path(out_dir)
        stacked, offsets = self.stack(self.proteins)
        with atomic_path(out_dir / LABELS_FILE) as tmp, open(tmp, "wb") as fh:
            np.savez_compressed(
                fh,
                data=stacked.data.astype(np.int32),
                indices=stacked.indices.astype(np.int32),
                indptr=stacked.indptr.astype(np.int64),
                shape=np.array(stacked.shape, dtype=np.int64),
                offsets=offsets,
                proteins=np.array(self.proteins, dtype=str),
                sequences=np.array([self.sequences[p] for p in self.proteins], dtype=str),
                concepts=np.array(self.names, dtype=str),
            )
        write_text_atomic(out_dir / CONCEPTS_FILE, self.summary().to_csv(sep="\t", index=False))

    @classmethod
    def load(cls, out_dir: str | os.PathLike) -> "ConceptLabels":
        """Read what :meth:`save` wrote."""
        out_dir = Path(out_dir)
        labels_path, concepts_path = out_dir / LABELS_FILE, out_dir / CONCEPTS_FILE
        for path in (labels_path, concepts_path):
            if not path.is_file():
                raise InterPLMError("no such file (write it with `interplm concepts`)", file=path)
        try:
            with np.load(labels_path, allow_pickle=False) as npz:
                arrays = {k: npz[k] for k in npz.files}
            table = pd.read_csv(concepts_path, sep="\t", keep_default_na=False)
            stacked = sparse.csr_matrix(
                (arrays["data"], arrays["indices"], arrays["indptr"]), shape=tuple(arrays["shape"])
            )
        except (OSError, ValueError, KeyError) as exc:
            raise InterPLMError(f"cannot read concept labels ({exc})", file=labels_path) from None
        if list(table["concept"]) != [str(c) for c in arrays["concepts"]]:
            raise InterPLMError(f"concepts do not match {labels_path.name}", file=concepts_path)
        concepts = [
            Concept(str(r.concept), str(r.family), r.level == "residue") for r in table.itertuples(index=False)
        ]
        offsets = arrays["offsets"]
        sequences = {str(p): str(s) for p, s in zip(arrays["proteins"], arrays["sequences"])}
        matrices = {
            pid: stacked[offsets[i] : offsets[i + 1]].tocsr() for i, pid in enumerate(sequences)
        }
        return cls(concepts, sequences, matrices)


def build_concept_labels(
    entries: Iterable[UniProtEntry],
    min_instances: int = DEFAULT_MIN_INSTANCES,
    min_proteins: int = DEFAULT_MIN_PROTEINS,
    families: Iterable[str] | None = None,
) -> ConceptLabels:
    """Turn UniProt entries into concept labels, keeping concepts with enough examples.

    A concept is kept when it has at least ``min_instances`` feature occurrences in at least
    ``min_proteins`` proteins. ``families`` restricts to some of :data:`FAMILIES` (by name).
    Feature types of no family (CHAIN, VARIANT, unknown types, ...) are ignored.
    """
    entries = list(entries)
    if families is None:
        specs = list(FAMILIES)
    else:
        unknown = sorted(set(families) - set(_FAMILY_BY_NAME))
        if unknown:
            raise InterPLMError(f"unknown concept families {unknown} (known: {', '.join(_FAMILY_BY_NAME)})")
        wanted = set(families)
        specs = [s for s in FAMILIES if s.family in wanted]
    key_to_spec = {k: s for s in specs for k in s.keys}

    occurrences: Counter[str] = Counter()
    proteins_with: dict[str, set[str]] = defaultdict(set)
    per_entry: list[list[tuple[FamilySpec, int, int, list[str]]]] = []
    for entry in entries:
        placed = []
        for feat in entry.features:
            spec = key_to_spec.get(feat.type)
            if spec is None:
                continue
            names = _feature_concepts(spec, feat.ligand, feat.description)
            placed.append((spec, feat.start, feat.end, names))
            for name in names:
                occurrences[name] += 1
                proteins_with[name].add(entry.accession)
        per_entry.append(placed)

    family_order = {s.family: i for i, s in enumerate(FAMILIES)}
    kept = sorted(
        (n for n, k in occurrences.items() if k >= min_instances and len(proteins_with[n]) >= min_proteins),
        key=lambda n: (family_order[n.split(":")[0]], ":" in n, n.lower()),
    )
    concepts = [
        Concept(n, n.split(":")[0], _FAMILY_BY_NAME[n.split(":")[0]].residue_level) for n in kept
    ]
    column = {c.name: j for j, c in enumerate(concepts)}
    next_instance = np.ones(len(concepts), dtype=np.int64)

    sequences: dict[str, str] = {}
    matrices: dict[str, sparse.csr_matrix] = {}
    for entry, placed in zip(entries, per_entry):
        labels = np.zeros((len(entry.sequence), len(concepts)), dtype=np.int32)
        for spec, start, end, names in placed:
            rows = [start - 1, end - 1] if spec.paired else slice(start - 1, end)
            for name in names:
                j = column.get(name)
                if j is None:
                    continue
                labels[rows, j] = next_instance[j]  # a later overlapping occurrence owns shared residues
                next_instance[j] += 1
        if next_instance.max(initial=0) > np.iinfo(np.int32).max:
            raise InterPLMError("more concept instances than int32 labels can hold")
        sequences[entry.accession] = entry.sequence
        matrices[entry.accession] = sparse.csr_matrix(labels)
    return ConceptLabels(concepts, sequences, matrices)


# --- counting matches --------------------------------------------------------------------------


def _as_labels_csr(labels) -> sparse.csr_matrix:
    mat = sparse.csr_matrix(labels)
    if mat.dtype.kind not in "iub":
        raise InterPLMError(f"concept labels must be integer instance ids, not {mat.dtype}")
    mat = mat.astype(np.int64)
    mat.eliminate_zeros()
    if mat.nnz and mat.data.min() < 0:
        raise InterPLMError("concept labels must be non-negative instance ids")
    return mat


def label_totals(labels) -> tuple[np.ndarray, np.ndarray]:
    """Per concept: labelled residues and distinct instances, each ``[C]`` int64."""
    mat = _as_labels_csr(labels).tocsc()
    n_positive = np.diff(mat.indptr).astype(np.int64)
    n_instances = np.array(
        [np.unique(mat.data[mat.indptr[j] : mat.indptr[j + 1]]).size for j in range(mat.shape[1])], dtype=np.int64
    )
    return n_positive, n_instances


def _expand_pairs(starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """``concatenate([arange(s, s + c) for s, c in zip(starts, counts)])``, vectorised."""
    total = int(counts.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    ends = np.cumsum(counts)
    offsets = np.arange(total, dtype=np.int64) - np.repeat(ends - counts, counts)
    return np.repeat(starts.astype(np.int64), counts) + offsets


def _distinct_counts(keys: np.ndarray, key_space: int) -> tuple[np.ndarray, np.ndarray]:
    """Distinct ``keys`` (sorted) and how often each occurs: a histogram when the key space is
    small next to the keys, a sort otherwise."""
    if key_space <= 4 * len(keys) + (1 << 20):
        histogram = np.bincount(keys, minlength=key_space)
        distinct = np.flatnonzero(histogram)
        return distinct, histogram[distinct]
    keys = np.sort(keys)
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]]) if len(keys) else np.zeros(0, dtype=np.int64)
    return keys[starts], np.diff(np.r_[starts, len(keys)])


def _above_levels(rows: np.ndarray, levels: np.ndarray, counts: np.ndarray, n_rows: int, n_levels: int, column_of: np.ndarray) -> np.ndarray:
    """``[n_rows, T]`` int64: for each row, the counts of levels above each threshold.

    ``rows`` (sorted), ``levels`` in 1..T and ``counts``: sparse per-(row, level) counts; output
    column ``j`` is sorted threshold ``column_of[j]``. Only the rows present are written."""
    out = np.zeros((n_rows, len(column_of)), dtype=np.int64)
    if len(rows) == 0:
        return out
    first = np.r_[True, rows[1:] != rows[:-1]]
    table = np.zeros((int(first.sum()), n_levels), dtype=np.int64)
    table[np.cumsum(first) - 1, levels] = counts
    above = np.flip(np.cumsum(np.flip(table[:, 1:], axis=1), axis=1), axis=1)  # [:, k] = count of level > k
    out[rows[first]] = above[:, column_of]
    return out


def count_matches(
    activations: np.ndarray | sparse.spmatrix,
    labels: np.ndarray | sparse.spmatrix,
    thresholds: Sequence[float] = THRESHOLDS,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Count, for every concept, feature and threshold, how feature activity overlaps concept labels.

    ``activations``: residues x features (dense array or scipy.sparse), normalised activations.
    ``labels``: residues x concepts integers (dense or sparse); nonzero values are instance ids,
    unique per concept (an instance is one domain, site or bond).
    A residue is active for a feature at threshold ``t`` when its activation is ``> t`` (strictly,
    as InterPLM); thresholds must be >= 0 so that implicit zeros of sparse input are inactive.

    Returns ``(tp, fp, tp_per_domain)``, each int64 of shape ``(concepts, features, thresholds)``:
    ``tp`` = active residues labelled with the concept, ``fp`` = active residues not labelled with
    it, ``tp_per_domain`` = distinct instances of the concept with at least one active residue.
    """
    # How: every stored activation gets a *level*, the number of thresholds below it, so one pass
    # serves all thresholds (active at threshold k  <=>  level > k). Each labelled residue is
    # joined with the activations of the same residue (label cells x ~L0 pairs, far fewer than a
    # product per threshold touches); histograms over (concept, feature, level) summed from the top
    # level down give tp; tp_per_domain takes each (instance, feature)'s highest level first.
    thresholds = [float(t) for t in thresholds]
    if not thresholds or any(not np.isfinite(t) or t < 0 for t in thresholds):
        raise InterPLMError(f"thresholds must be finite and >= 0, got {thresholds}")
    labels_csr = _as_labels_csr(labels)
    if not sparse.issparse(activations):
        activations = np.asarray(activations)
    if activations.ndim != 2 or activations.shape[0] != labels_csr.shape[0]:
        raise InterPLMError(
            f"activations of shape {activations.shape} do not match labels of shape {labels_csr.shape} (residues differ)"
        )
    values = activations.data if sparse.issparse(activations) else activations
    if np.isnan(values).any():
        raise InterPLMError("activations contain NaN")
    n_residues, n_concepts = labels_csr.shape
    n_features, n_thresholds = activations.shape[1], len(thresholds)
    acts = sparse.csr_matrix(activations)
    if not acts.has_canonical_format:
        acts = acts.copy()
        acts.sum_duplicates()

    order = np.argsort(thresholds, kind="stable")
    sorted_t = np.asarray(thresholds)[order]
    n_levels = n_thresholds + 1
    level = np.searchsorted(sorted_t, acts.data, side="left").astype(np.int64)  # thresholds strictly below
    keep = level > 0  # inactive at every threshold: irrelevant
    act_rows = np.repeat(np.arange(n_residues, dtype=np.int64), np.diff(acts.indptr))[keep]
    act_features, act_levels = acts.indices[keep].astype(np.int64), level[keep]
    act_start = np.searchsorted(act_rows, np.arange(n_residues + 1, dtype=np.int64))  # CSR row pointers of the kept

    inverse = np.empty(n_thresholds, dtype=np.int64)
    inverse[order] = np.arange(n_thresholds)  # caller's threshold j is sorted threshold inverse[j]
    keys, counts = _distinct_counts(act_features * n_levels + act_levels, n_features * n_levels)
    active = _above_levels(keys // n_levels, keys % n_levels, counts, n_features, n_levels, inverse)  # [F, T]

    # Join: each label cell (residue, concept, instance id) with each kept activation of its residue.
    label_rows = np.repeat(np.arange(n_residues, dtype=np.int64), np.diff(labels_csr.indptr))
    per_cell = act_start[label_rows + 1] - act_start[label_rows]
    pair_act = _expand_pairs(act_start[label_rows], per_cell)
    pair_cell = np.repeat(np.arange(labels_csr.nnz, dtype=np.int64), per_cell)
    pair_feature, pair_level = act_features[pair_act], act_levels[pair_act]
    del pair_act, per_cell, label_rows

    cell_concept = labels_csr.indices.astype(np.int64)
    n_cf = n_concepts * n_features
    keys, counts = _distinct_counts((cell_concept[pair_cell] * n_features + pair_feature) * n_levels + pair_level, n_cf * n_levels)
    tp = _above_levels(keys // n_levels, keys % n_levels, counts, n_cf, n_levels, inverse).reshape(n_concepts, n_features, n_thresholds)

    # tp_per_domain: each (instance, feature)'s highest level counts once.
    cell_key = cell_concept * (int(labels_csr.data.max(initial=0)) + 1) + labels_csr.data
    instances, cell_instance = np.unique(cell_key, return_inverse=True)  # over label cells: cheap
    instance_concept = np.zeros(len(instances), dtype=np.int64)
    instance_concept[cell_instance] = cell_concept
    group = (cell_instance.ravel().astype(np.int64)[pair_cell] * n_features + pair_feature) * n_levels + pair_level
    del pair_cell, pair_feature, pair_level
    group.sort()
    last = np.ones(len(group), dtype=bool)
    last[:-1] = (group[1:] // n_levels) != (group[:-1] // n_levels)  # each group's highest level sorts last
    highest = group[last]
    del group, last
    instance_feature, level_of = highest // n_levels, highest % n_levels
    cf = instance_concept[instance_feature // n_features] * n_features + instance_feature % n_features
    keys, counts = _distinct_counts(cf * n_levels + level_of, n_cf * n_levels)
    tp_per_domain = _above_levels(keys // n_levels, keys % n_levels, counts, n_cf, n_levels, inverse).reshape(n_concepts, n_features, n_thresholds)
    fp = active[None, :, :] - tp
    return tp, fp, tp_per_domain


@dataclass
class ConceptCounts:
    """Counts of :func:`count_matches` summed over proteins, with the totals the metrics need."""

    concepts: list[Concept]
    thresholds: tuple[float, ...]
    tp: np.ndarray
    fp: np.ndarray
    tp_per_domain: np.ndarray
    n_positive: np.ndarray
    n_instances: np.ndarray
    n_proteins: int
    n_residues: int

    @property
    def residue_level(self) -> np.ndarray:
        return np.array([c.residue_level for c in self.concepts], dtype=bool)

    def metrics(self) -> dict[str, np.ndarray]:
        """:func:`concept_metrics` of these counts."""
        return concept_metrics(
            self.tp, self.fp, self.tp_per_domain, self.n_positive, self.n_instances, self.residue_level
        )


class ConceptMatchCounter:
    """Accumulates :func:`count_matches` protein by protein, so activations never need stacking.

    The result equals one :func:`count_matches` on the stacked proteins, because instances never
    span two proteins.
    """

    def __init__(self, concept_labels: ConceptLabels, num_features: int, thresholds: Sequence[float] = THRESHOLDS):
        self.labels = concept_labels
        self.num_features = int(num_features)
        self.thresholds = tuple(float(t) for t in thresholds)
        shape = (len(concept_labels.concepts), self.num_features, len(self.thresholds))
        self._tp, self._fp, self._tpd = (np.zeros(shape, dtype=np.int64) for _ in range(3))
        self._n_positive = np.zeros(shape[0], dtype=np.int64)
        self._n_instances = np.zeros(shape[0], dtype=np.int64)
        self._seen: set[str] = set()
        self._n_residues = 0
        # Proteins are counted in blocks: one sparse product per block instead of per protein.
        self._pending: list[tuple[np.ndarray | sparse.spmatrix, sparse.csr_matrix]] = []
        self._pending_rows = 0

    def add(self, protein_id: str, activations: np.ndarray | sparse.spmatrix) -> None:
        """Count one protein's activations ``[L, F]`` against its labels."""
        if protein_id in self._seen:
            raise InterPLMError("protein added twice to the concept counts", record=protein_id)
        labels = self.labels.matrix(protein_id)
        if activations.shape != (labels.shape[0], self.num_features):
            raise InterPLMError(
                f"activations of shape {tuple(activations.shape)} do not fit a {labels.shape[0]}-residue protein"
                f" and {self.num_features} features",
                record=protein_id,
            )
        self._pending.append((activations, labels))
        self._pending_rows += labels.shape[0]
        self._n_residues += labels.shape[0]
        self._seen.add(protein_id)
        if self._pending_rows >= self.block_residues:
            self._flush()

    #: Residues gathered before one :func:`count_matches` call (bounds memory, amortises its set-up).
    block_residues = 20_000

    def _flush(self) -> None:
        if not self._pending:
            return
        acts = [a for a, _ in self._pending]
        if any(sparse.issparse(a) for a in acts):
            stacked = sparse.vstack([sparse.csr_matrix(a) for a in acts], format="csr")
        else:
            stacked = np.concatenate([np.asarray(a) for a in acts])
        # Instance ids are unique per concept across proteins, so stacking never merges two instances.
        labels = sparse.vstack([lab for _, lab in self._pending], format="csr", dtype=np.int32)
        tp, fp, tpd = count_matches(stacked, labels, self.thresholds)
        self._tp += tp
        self._fp += fp
        self._tpd += tpd
        n_positive, n_instances = label_totals(labels)
        self._n_positive += n_positive
        self._n_instances += n_instances
        self._pending, self._pending_rows = [], 0

    def result(self) -> ConceptCounts:
        """The counts so far (copies)."""
        self._flush()
        return ConceptCounts(
            list(self.labels.concepts),
            self.thresholds,
            self._tp.copy(),
            self._fp.copy(),
            self._tpd.copy(),
            self._n_positive.copy(),
            self._n_instances.copy(),
            len(self._seen),
            self._n_residues,
        )


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    num, den = np.broadcast_arrays(np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64))
    out = np.zeros(num.shape, dtype=np.float64)
    np.divide(num, den, out=out, where=den > 0)
    return out


def concept_metrics(
    tp: np.ndarray,
    fp: np.ndarray,
    tp_per_domain: np.ndarray,
    n_positive: np.ndarray,
    n_instances: np.ndarray,
    residue_level_mask: np.ndarray,
) -> dict[str, np.ndarray]:
    """Precision, recall, recall_per_domain, f1, f1_per_domain and selection_f1, each ``[C, F, T]``.

    ``n_positive``/``n_instances`` ``[C]``: labelled residues and instances per concept (or arrays
    shaped like ``tp``, where they vary along its other axes, as in a bootstrap);
    ``residue_level_mask`` ``[C]``: True where the concept is residue-level. A ratio with a zero
    denominator is 0. ``selection_f1`` is f1 for residue-level and f1_per_domain for domain-level
    concepts (InterPLM's choice).
    """
    tp = np.asarray(tp)

    def per_concept(totals) -> np.ndarray:  # [C] -> [C, 1, 1]; an array shaped like tp stays as it is
        totals = np.asarray(totals)
        return totals.reshape(totals.shape + (1,) * (tp.ndim - totals.ndim))

    precision = _ratio(tp, tp + fp)
    recall = _ratio(tp, per_concept(n_positive))
    recall_per_domain = _ratio(tp_per_domain, per_concept(n_instances))
    f1 = _ratio(2 * precision * recall, precision + recall)
    f1_per_domain = _ratio(2 * precision * recall_per_domain, precision + recall_per_domain)
    mask = per_concept(np.asarray(residue_level_mask, dtype=bool))
    return {
        "precision": precision,
        "recall": recall,
        "recall_per_domain": recall_per_domain,
        "f1": f1,
        "f1_per_domain": f1_per_domain,
        "selection_f1": np.where(mask, f1, f1_per_domain),
    }


def _best_index(selection: np.ndarray, tiebreak: np.ndarray) -> np.ndarray:
    """Per concept, the flat (feature, threshold) index of the highest selection F1, then F1, then lowest index."""
    c = selection.shape[0]
    sel, tie = selection.reshape(c, -1), tiebreak.reshape(c, -1)
    best = sel == sel.max(axis=1, keepdims=True)
    return np.argmax(np.where(best, tie, -1.0), axis=1)


def choose_on_validation(valid: ConceptCounts, metrics: dict[str, np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per concept, the feature and threshold index with the best validation selection F1.

    Ties go to the higher plain F1, then the lower feature index and threshold. ``metrics``:
    ``valid.metrics()``, where the caller has it already.
    """
    metrics = valid.metrics() if metrics is None else metrics
    return np.divmod(_best_index(metrics["selection_f1"], metrics["f1"]), len(valid.thresholds))


def best_feature_per_concept(valid: ConceptCounts, test: ConceptCounts) -> pd.DataFrame:
    """For each concept, the (feature, threshold) with the best validation selection F1, scored on test.

    Ties go to the higher plain F1, then the lower feature index and threshold. Concepts without a
    labelled residue in either split are left out. Columns: concept, family, level, feature,
    threshold, valid_f1, valid_precision, valid_recall, valid_recall_per_domain, test_f1,
    test_precision, test_recall, test_recall_per_domain, test_f1_residue, test_f1_per_domain,
    valid_instances, test_instances (``*_f1`` is the selection F1).
    """
    if [c.name for c in valid.concepts] != [c.name for c in test.concepts] or valid.thresholds != test.thresholds:
        raise InterPLMError("validation and test counts are over different concepts or thresholds")
    vm, tm = valid.metrics(), test.metrics()
    feature, t_index = choose_on_validation(valid, vm)
    rows = np.arange(len(valid.concepts))

    def pick(metrics: dict[str, np.ndarray], key: str) -> np.ndarray:
        return metrics[key][rows, feature, t_index]

    table = pd.DataFrame(
        {
            "concept": [c.name for c in valid.concepts],
            "family": [c.family for c in valid.concepts],
            "level": ["residue" if c.residue_level else "domain" for c in valid.concepts],
            "feature": feature.astype(np.int64),
            "threshold": np.asarray(valid.thresholds)[t_index],
            "valid_f1": pick(vm, "selection_f1"),
            "valid_precision": pick(vm, "precision"),
            "valid_recall": pick(vm, "recall"),
            "valid_recall_per_domain": pick(vm, "recall_per_domain"),
            "test_f1": pick(tm, "selection_f1"),
            "test_precision": pick(tm, "precision"),
            "test_recall": pick(tm, "recall"),
            "test_recall_per_domain": pick(tm, "recall_per_domain"),
            "test_f1_residue": pick(tm, "f1"),
            "test_f1_per_domain": pick(tm, "f1_per_domain"),
            "valid_instances": valid.n_instances,
            "test_instances": test.n_instances,
        }
    )
    present = (valid.n_positive > 0) & (test.n_positive > 0)
    return table[present].reset_index(drop=True)


def evaluate_concept_counts(
    activation_iter: Iterable[tuple[str, np.ndarray | sparse.spmatrix]],
    labels: ConceptLabels,
    thresholds: Sequence[float] = THRESHOLDS,
) -> tuple[ConceptCounts, ConceptCounts]:
    """Accumulate ``(protein_id, activations [L, F])`` into validation and test counts (:func:`concept_split`).

    A protein without labels is an error.
    """
    counters: dict[str, ConceptMatchCounter] = {}
    num_features = None
    for protein_id, activations in activation_iter:
        if protein_id not in labels.sequences:
            raise InterPLMError("protein has no concept labels", record=protein_id)
        if num_features is None:
            num_features = int(activations.shape[1])
            counters = {s: ConceptMatchCounter(labels, num_features, thresholds) for s in CONCEPT_SPLITS}
        counters[concept_split(protein_id)].add(protein_id, activations)
    if num_features is None:
        raise InterPLMError("no proteins among the activations")
    valid, test = counters["valid"].result(), counters["test"].result()
    for name, counts in (("validation", valid), ("test", test)):
        if counts.n_proteins == 0:
            raise InterPLMError(f"no {name} proteins among the activations")
    return valid, test


def evaluate_features_on_concepts(
    activation_iter: Iterable[tuple[str, np.ndarray | sparse.spmatrix]],
    labels: ConceptLabels,
    thresholds: Sequence[float] = THRESHOLDS,
) -> pd.DataFrame:
    """The best feature per concept, chosen on validation proteins and scored on test proteins.

    ``activation_iter`` yields ``(protein_id, activations [L, F])`` (normalised); see
    :func:`evaluate_concept_counts` and :func:`best_feature_per_concept`.
    """
    return best_feature_per_concept(*evaluate_concept_counts(activation_iter, labels, thresholds))


def feature_concept_table(valid: ConceptCounts, test: ConceptCounts, per_concept: int = 20, min_f1: float = 0.0) -> pd.DataFrame:
    """Every concept's ``per_concept`` best features, each at its own best validation threshold, scored on test.

    This is what the feature database stores (so a feature's best concepts and a concept's best
    features are both queries). Columns: feature, concept, family, split (``"test"``), threshold,
    precision, recall, f1 (the selection F1), f1_per_domain, recall_per_domain, valid_f1. Rows with
    validation selection F1 <= ``min_f1`` are dropped.
    """
    if [c.name for c in valid.concepts] != [c.name for c in test.concepts] or valid.thresholds != test.thresholds:
        raise InterPLMError("validation and test counts are over different concepts or thresholds")
    vm, tm = valid.metrics(), test.metrics()
    sel = vm["selection_f1"]  # [C, F, T]
    best_t = np.argmax(sel, axis=2)  # per (concept, feature)
    c_idx, f_idx = np.indices(best_t.shape)
    valid_best = sel[c_idx, f_idx, best_t]  # [C, F]
    k = min(per_concept, valid_best.shape[1])
    top = np.argsort(-valid_best, axis=1, kind="stable")[:, :k]
    rows_c = np.repeat(np.arange(len(valid.concepts)), k)
    rows_f = top.ravel()
    rows_t = best_t[rows_c, rows_f]
    present = (valid.n_positive > 0) & (test.n_positive > 0)
    table = pd.DataFrame(
        {
            "feature": rows_f.astype(np.int64),
            "concept": [valid.concepts[c].name for c in rows_c],
            "family": [valid.concepts[c].family for c in rows_c],
            "split": "test",
            "threshold": np.asarray(valid.thresholds)[rows_t],
            "precision": tm["precision"][rows_c, rows_f, rows_t],
            "recall": tm["recall"][rows_c, rows_f, rows_t],
            "f1": tm["selection_f1"][rows_c, rows_f, rows_t],
            "f1_per_domain": tm["f1_per_domain"][rows_c, rows_f, rows_t],
            "recall_per_domain": tm["recall_per_domain"][rows_c, rows_f, rows_t],
            "valid_f1": valid_best[rows_c, rows_f],
        }
    )
    keep = present[rows_c] & (table["valid_f1"].to_numpy() > min_f1)
    return table[keep].reset_index(drop=True)
