"""Swiss-Prot concepts as per-residue labels, and the two halves they are evaluated on.

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

Vocabulary: a concept is kept with at least ``min_instances`` occurrences (default 10) in at least
``min_proteins`` proteins (default 3) over the whole file (InterPLM keeps sub-concepts with 100
occurrences in all of Swiss-Prot). Whether a kept concept is *evaluated* is decided per half
(:class:`~.selection.Eligibility`).

Halves (:class:`ConceptHalves`): features and thresholds are chosen on the validation half and
scored on the test half. ``interplm concepts`` makes the halves from sequence clusters
(:mod:`~interplm_plugins.core.inputs.homology`, MMseqs2 at 30% identity by default), whole clusters to one half, so no protein
has a close homolog across the line; :meth:`ConceptHalves.from_separate_sets` instead chooses on
all of one annotated set and scores on all of another (``interplm report --test-concepts``).
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Sequence

import numpy as np
import pandas as pd
from scipy import sparse

from interplm_plugins.core.atomic import atomic_path, write_text_atomic
from interplm_plugins.core.inputs.uniprot import UniProtEntry
from interplm_plugins.errors import InterPLMError

if TYPE_CHECKING:
    from interplm_plugins.core.inputs.homology import SequenceClusters

DEFAULT_MIN_INSTANCES = 10
DEFAULT_MIN_PROTEINS = 3

LABELS_FILE = "labels.npz"
CONCEPTS_FILE = "concepts.tsv"
#: Which half each protein is in, with its sequence cluster (written by `interplm concepts`).
SPLITS_FILE = "splits.tsv"
#: How the folder was made: clustering, eligibility rules (JSON).
SETTINGS_FILE = "concepts.json"
#: The two halves of a concept evaluation: features are chosen on "valid" and scored on "test".
HALVES = ("valid", "test")


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
        splits: dict[str, str] | None = None,
        settings: dict[str, Any] | None = None,
    ):
        self.concepts = list(concepts)
        self.sequences = dict(sequences)
        self._matrices = matrices
        for pid, mat in matrices.items():
            if mat.shape != (len(self.sequences[pid]), len(self.concepts)):
                raise InterPLMError(f"label matrix of shape {mat.shape} does not fit the sequence", record=pid)
        #: ``{protein: "valid" | "test"}``, the half each protein is evaluated in (None: not split).
        self.splits = None if splits is None else {pid: splits[pid] for pid in self.sequences}
        if self.splits is not None and not set(self.splits.values()) <= set(HALVES):
            raise InterPLMError(f"splits must be one of {', '.join(HALVES)}")
        #: How the labels were made (clustering, eligibility rules): JSON-serialisable.
        self.settings: dict[str, Any] = dict(settings or {})

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
        """The proteins of half ``split`` ("valid" or "test"), in file order."""
        if split not in HALVES:
            raise InterPLMError(f"concept split must be one of {', '.join(HALVES)}, not {split!r}")
        if self.splits is None:
            raise InterPLMError("these concept labels have no validation/test halves; make them with `interplm concepts`")
        return [pid for pid in self.sequences if self.splits[pid] == split]

    def subset(self, protein_ids: Iterable[str]) -> "ConceptLabels":
        """The same concepts over some of the proteins (instance ids kept)."""
        ids = list(protein_ids)
        splits = None if self.splits is None else {p: self.splits[p] for p in ids}
        return ConceptLabels(self.concepts, {p: self.sequences[p] for p in ids}, {p: self.matrix(p) for p in ids}, splits, self.settings)

    def with_concepts(self, concepts: Sequence[Concept]) -> "ConceptLabels":
        """These proteins labelled with ``concepts`` (matched by name): concepts this set lacks get empty columns."""
        column = {c.name: j for j, c in enumerate(self.concepts)}
        for c in concepts:
            mine = self.concepts[column[c.name]] if c.name in column else None
            if mine is not None and mine.residue_level != c.residue_level:
                raise InterPLMError(f"concept {c.name!r} is residue-level in one set and domain-level in the other")
        # selector[i, j] = 1 where my column i is their column j: a product moves instance ids unchanged
        pairs = [(column[c.name], j) for j, c in enumerate(concepts) if c.name in column]
        rows, cols = (np.array(x, dtype=np.int64) for x in zip(*pairs)) if pairs else (np.zeros(0, np.int64),) * 2
        selector = sparse.csr_matrix((np.ones(len(pairs), dtype=np.int32), (rows, cols)), shape=(len(self.concepts), len(concepts)))
        matrices = {pid: (self.matrix(pid) @ selector).astype(np.int32).tocsr() for pid in self.sequences}
        return ConceptLabels(concepts, self.sequences, matrices, self.splits, self.settings)

    def summary(self) -> pd.DataFrame:
        """One row per concept: name, family, level, instances, residues, proteins (and per half, where split)."""
        stacked, offsets = self.stack(self.proteins)
        n_residues, n_instances = label_totals(stacked)
        per_protein = {half: np.zeros(len(self.concepts), dtype=np.int64) for half in ("all", *HALVES)}
        for pid in self.proteins:
            has = concepts_present(self.matrix(pid))
            per_protein["all"] += has
            if self.splits is not None:
                per_protein[self.splits[pid]] += has
        halves = {f"{half}_proteins": per_protein[half] for half in HALVES} if self.splits is not None else {}
        return pd.DataFrame(
            {
                "concept": self.names,
                "family": self.families,
                "level": ["residue" if c.residue_level else "domain" for c in self.concepts],
                "instances": n_instances,
                "residues": n_residues,
                "proteins": per_protein["all"],
                **halves,
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
        if self.splits is not None:
            rows = "".join(f"{pid}\t{self.splits[pid]}\n" for pid in self.proteins)
            write_text_atomic(out_dir / SPLITS_FILE, "protein_id\thalf\n" + rows)
        write_text_atomic(out_dir / SETTINGS_FILE, json.dumps(self.settings, indent=1, sort_keys=True))

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
        return cls(concepts, sequences, matrices, _read_splits(out_dir / SPLITS_FILE, sequences), _read_settings(out_dir / SETTINGS_FILE))


def _read_splits(path: Path, sequences: dict[str, str]) -> dict[str, str] | None:
    if not path.is_file():
        return None  # labels without halves (a --test-concepts set needs none)
    return read_halves(path, sequences)


def read_halves(path: str | os.PathLike, sequences: dict[str, str]) -> dict[str, str]:
    """``{protein: "valid" | "test"}`` from a ``splits.tsv`` (as ``interplm concepts`` writes it) for these labelled proteins."""
    path = Path(path)
    splits: dict[str, str] = {}
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            fields = line.rstrip("\n").split("\t")
            if number == 1 and fields == ["protein_id", "half"]:
                continue
            if len(fields) != 2 or fields[1] not in HALVES or fields[0] not in sequences:
                raise InterPLMError(f"line {number}: expected 'protein_id<TAB>valid|test' for a labelled protein", file=path)
            splits[fields[0]] = fields[1]
    missing = [pid for pid in sequences if pid not in splits]
    if missing:
        raise InterPLMError(f"{len(missing)} labelled proteins have no half (first: {missing[0]}); rerun `interplm concepts`", file=path)
    return splits


def _read_settings(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        settings = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InterPLMError(f"cannot read the concept settings ({exc})", file=path) from None
    if not isinstance(settings, dict):
        raise InterPLMError("concept settings must be a JSON object", file=path)
    return settings


def as_labels_csr(labels) -> sparse.csr_matrix:
    mat = sparse.csr_matrix(labels)
    if mat.dtype.kind not in "iub":
        raise InterPLMError(f"concept labels must be integer instance ids, not {mat.dtype}")
    mat = mat.astype(np.int64)
    mat.eliminate_zeros()
    if mat.nnz and mat.data.min() < 0:
        raise InterPLMError("concept labels must be non-negative instance ids")
    return mat


def concepts_present(labels) -> np.ndarray:
    """``[C]`` True for each concept with at least one labelled residue in ``labels`` (one protein's, say)."""
    return np.diff(sparse.csc_matrix(labels).indptr) > 0


def label_totals(labels) -> tuple[np.ndarray, np.ndarray]:
    """Per concept: labelled residues and distinct instances, each ``[C]`` int64."""
    mat = as_labels_csr(labels).tocsc()
    n_positive = np.diff(mat.indptr).astype(np.int64)
    n_instances = np.array(
        [np.unique(mat.data[mat.indptr[j] : mat.indptr[j + 1]]).size for j in range(mat.shape[1])], dtype=np.int64
    )
    return n_positive, n_instances


@dataclass
class ConceptHalves:
    """The annotated proteins a concept evaluation chooses on (``valid``) and scores on (``test``).

    Both halves carry the same concepts (columns), so counts of one can be compared with counts
    of the other. ``how`` says in words how the halves were made (reports print it).
    """

    valid: ConceptLabels
    test: ConceptLabels
    how: str
    #: Proteins of the test set left out because they are also in the validation set.
    dropped_from_test: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.valid.names != self.test.names:
            raise InterPLMError("validation and test labels have different concepts")
        both = set(self.valid.sequences) & set(self.test.sequences)
        if both:
            raise InterPLMError(f"{len(both)} proteins are in both halves (first: {sorted(both)[0]})")

    @property
    def concepts(self) -> list[Concept]:
        return self.valid.concepts

    def half(self, protein_id: str) -> str | None:
        """``"valid"``, ``"test"`` or None (not annotated)."""
        if protein_id in self.valid.sequences:
            return "valid"
        return "test" if protein_id in self.test.sequences else None

    def labels(self, half: str) -> ConceptLabels:
        if half not in HALVES:
            raise InterPLMError(f"concept split must be one of {', '.join(HALVES)}, not {half!r}")
        return self.valid if half == "valid" else self.test

    @property
    def sequences(self) -> dict[str, str]:
        """Every annotated protein of both halves, validation first."""
        return {**self.valid.sequences, **self.test.sequences}

    @classmethod
    def from_splits(cls, labels: ConceptLabels) -> "ConceptHalves":
        """The halves ``interplm concepts`` assigned (whole sequence clusters to one half)."""
        how = labels.settings.get("halves", "the halves recorded in the concepts folder")
        return cls(labels.subset(labels.proteins_in_split("valid")), labels.subset(labels.proteins_in_split("test")), how)

    @classmethod
    def from_separate_sets(cls, choose: ConceptLabels, score: ConceptLabels) -> "ConceptHalves":
        """Choose on all of ``choose``, score on all of ``score`` (aligned to ``choose``'s concepts).

        Proteins of ``score`` that are also in ``choose`` (same accession or same sequence) are
        left out of the test half, so nothing is scored on what chose it.
        """
        seen_sequences = set(choose.sequences.values())
        dropped = [p for p, seq in score.sequences.items() if p in choose.sequences or seq in seen_sequences]
        kept = [p for p in score.proteins if p not in set(dropped)]
        if not kept:
            raise InterPLMError("every protein of the test concepts is also in the concepts features are chosen on")
        how = f"chosen on all {len(choose.proteins)} proteins of one annotated set, scored on {len(kept)} of another"
        if dropped:
            how += f" ({len(dropped)} shared with the first left out)"
        return cls(choose, score.subset(kept).with_concepts(choose.concepts), how, dropped)


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


def split_into_halves(labels: ConceptLabels, clusters: "SequenceClusters", salt: str = "concept-halves") -> ConceptLabels:
    """``labels`` with validation/test halves of whole sequence clusters, half the proteins each."""
    from interplm_plugins.core.inputs.homology import assign_clusters_to_splits

    halves = assign_clusters_to_splits(clusters, {"valid": 0.5, "test": 0.5}, salt=salt)
    missing = [pid for pid in labels.proteins if pid not in halves]
    if missing:
        raise InterPLMError(f"{len(missing)} labelled proteins are in no sequence cluster (first: {missing[0]})")
    settings = {
        **labels.settings,
        "halves": f"whole sequence clusters to validation or test, half the proteins each ({clusters.method})",
        "clustering": {"method": clusters.method, "min_seq_id": clusters.min_seq_id, "coverage": clusters.coverage,
                       "clusters": len(set(clusters.representative[p] for p in labels.proteins))},
    }  # fmt: skip
    return ConceptLabels(labels.concepts, labels.sequences, {p: labels.matrix(p) for p in labels.proteins}, halves, settings)
