"""Showing a protein's features to a person: which features to show, plots, and an HTML page.

Used by ``interplm demo``; the pictures of the structure itself come from the PyMOL plugin's
renderer, everything else (choice of features, activation plots, the page) lives here.
"""

from __future__ import annotations

import html
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Collection, Sequence

import numpy as np

from interplm_plugins.core.atomic import save_figure_png, write_text_atomic
from interplm_plugins.core.concepts.labels import build_concept_labels
from interplm_plugins.core.inputs.uniprot import UniProtEntry


@dataclass
class FeatureShowcase:
    """One feature on one protein: its values, best concept match, description and pictures."""

    feature: int
    values: np.ndarray  # per residue of the shown sequence, normalised activation (NaN = no value)
    concept: str | None = None
    concept_f1: float | None = None
    description: str | None = None
    images: dict[str, Path] = field(default_factory=dict)
    #: Where the protein's UniProt entry annotates the feature's concept: ``(first, last)`` indices
    #: of the shown residues, inclusive (empty: not annotated there, or no entry given).
    annotated: list[tuple[int, int]] = field(default_factory=list)
    annotated_where: str = ""  # the same, as residue numbers for people ("13-33, 42-62")
    concept_label: str = "no concept match"

    @property
    def max_activation(self) -> float:
        return float(np.nanmax(self.values)) if np.isfinite(self.values).any() else 0.0

    @property
    def active_residues(self) -> int:
        return int(np.nansum(self.values > 0))


def annotated_concepts(entry: UniProtEntry) -> dict[str, list[tuple[int, int]]]:
    """The concepts ``entry``'s feature table annotates, each with its 0-based inclusive residue runs (InterPLM's concepts)."""
    labels = build_concept_labels([entry], min_instances=1, min_proteins=1)
    dense = labels.dense(entry.accession) > 0
    runs: dict[str, list[tuple[int, int]]] = {}
    for j, name in enumerate(labels.names):
        marked = np.flatnonzero(dense[:, j])
        if marked.size:
            breaks = np.flatnonzero(np.diff(marked) > 1)
            starts, ends = np.r_[marked[0], marked[breaks + 1]], np.r_[marked[breaks], marked[-1]]
            runs[name] = [(int(a), int(b)) for a, b in zip(starts, ends)]
    return runs


def runs_on_residues(runs: Sequence[tuple[int, int]], positions: np.ndarray) -> list[tuple[int, int]]:
    """Sequence runs moved onto structure residues (``positions[i]``: residue i's sequence index, -1 if none)."""
    inside = np.zeros(len(positions), dtype=bool)
    for first, last in runs:
        inside |= (positions >= first) & (positions <= last)
    marked = np.flatnonzero(inside)
    if not marked.size:
        return []
    breaks = np.flatnonzero(np.diff(marked) > 1)
    return [(int(a), int(b)) for a, b in zip(np.r_[marked[0], marked[breaks + 1]], np.r_[marked[breaks], marked[-1]])]


def informative_features(
    activations: np.ndarray, k: int = 3, database=None, max_active_fraction: float = 0.6, annotated: Collection[str] = ()
) -> list[int]:
    """Up to ``k`` features worth showing on a protein, best first.

    A feature qualifies when it fires strongly somewhere but not everywhere (at most
    ``max_active_fraction`` of residues, at least 3); it scores its maximum activation times
    ``0.25 + validation F1`` of its best concept match in ``database`` (so features with a known meaning
    come first), and features whose best concept is already shown are passed over. Features whose
    best concept is in ``annotated`` (the concepts the protein's UniProt entry has) come before all
    others, so what is shown can be checked against the annotation.
    """
    acts = np.asarray(activations, dtype=np.float32)
    active = (acts > 0).sum(axis=0)
    ok = (active >= 3) & (active <= max_active_fraction * len(acts))
    candidates = np.flatnonzero(ok)
    if candidates.size == 0:
        candidates = np.flatnonzero(active > 0)
    score = acts[:, candidates].max(axis=0)
    best = {}
    if database is not None and candidates.size:
        best = database.best_concepts([int(f) for f in candidates])
        score = score * np.array([0.25 + (best[int(f)].valid_f1 if int(f) in best else 0.0) for f in candidates])  # chooses: validation only
    here = np.array([int(f) in best and best[int(f)].concept in set(annotated) for f in candidates], dtype=bool)
    chosen: list[int] = []
    shown_concepts: set[str] = set()
    for i in np.lexsort((-score, ~here)):  # annotated here first, then by score
        feature = int(candidates[i])
        concept = best[feature].concept if feature in best else None
        if concept is not None and concept in shown_concepts:
            continue
        chosen.append(feature)
        if concept is not None:
            shown_concepts.add(concept)
        if len(chosen) == k:
            break
    return chosen


def activation_profile_png(showcase: FeatureShowcase, residue_labels: Sequence[str], out_png: str | os.PathLike, title: str = "") -> Path:
    """A bar plot of one feature's activation along the sequence (residue labels on the x axis)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    values = np.nan_to_num(showcase.values, nan=0.0)
    if showcase.annotated:  # the UniProt annotation of the feature's concept, as a track under the bars
        fig, (ax, track) = plt.subplots(2, 1, figsize=(9, 2.9), dpi=110, sharex=True, gridspec_kw={"height_ratios": [5, 1]})
        for first, last in showcase.annotated:
            track.axvspan(first - 0.5, last + 0.5, color="#E69F00")
        track.set_yticks([])
        track.set_ylabel("UniProt", fontsize=7, rotation=0, ha="right", va="center")
        track.set_title(f"annotated {showcase.concept} (UniProt)", fontsize=7, loc="left")
    else:
        fig, ax = plt.subplots(figsize=(9, 2.4), dpi=110)
        track = ax
    x = np.arange(len(values))
    ax.bar(x, values, width=1.0, color=plt.cm.viridis(values), edgecolor="none")
    ax.set_xlim(-0.5, len(values) - 0.5)
    ax.set_ylim(0, max(1.0, float(values.max()) * 1.05))
    ax.set_ylabel("activation")
    step = max(1, len(values) // 20)
    track.set_xticks(x[::step])
    track.set_xticklabels([residue_labels[i] for i in x[::step]], fontsize=7, rotation=90)
    ax.set_title(title or f"feature {showcase.feature} — best concept: {showcase.concept_label}", fontsize=9)
    fig.tight_layout()
    return save_figure_png(fig, out_png)


def write_html_summary(out_html: str | os.PathLike, title: str, intro: str, showcases: Sequence[FeatureShowcase], facts: dict[str, str]) -> Path:
    """A self-contained page (images referenced relative to it) summarising the shown features."""
    out_html = Path(out_html)
    esc = html.escape

    def rel(path: Path) -> str:
        return esc(os.path.relpath(path, out_html.parent))

    rows = "".join(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in facts.items())
    sections = []
    for s in showcases:
        concept = f"best Swiss-Prot concept match: <b>{esc(s.concept_label)}</b>" if s.concept else "no concept match in the database"
        if s.concept and s.annotated:
            concept += f"; the protein's UniProt entry annotates it at residues {esc(s.annotated_where)}"
        elif s.concept:
            concept += "; not annotated in this protein's UniProt entry (or no entry given)"
        description = f"<p>{esc(s.description)}</p>" if s.description else ""
        images = "".join(f'<figure><img src="{rel(p)}" alt="{esc(name)}"><figcaption>{esc(name)}</figcaption></figure>' for name, p in s.images.items())
        sections.append(
            f"<section><h2>Feature {s.feature}</h2><p>{concept}; maximum activation on this protein "
            f"{s.max_activation:.2f}, active on {s.active_residues} residues.</p>{description}{images}</section>"
        )
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>
<style>body{{font-family:sans-serif;max-width:1000px;margin:2em auto;color:#222}}
img{{max-width:100%;border:1px solid #ddd}} figure{{margin:1em 0}} th{{text-align:left;padding-right:1em}}
section{{border-top:1px solid #ccc;margin-top:2em}}</style></head>
<body><h1>{esc(title)}</h1><p>{esc(intro)}</p><table>{rows}</table>{''.join(sections)}</body></html>
"""
    write_text_atomic(out_html, page)
    return out_html
