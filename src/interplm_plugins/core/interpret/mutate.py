"""In-silico mutation scans: how each single-residue mutant changes an SAE feature's activation.

For each scanned position the mutants (all 19 other amino acids, or the ones asked for) go
through the model as **one batch**, and the SAE encodes them; what is kept per position is the
change of every feature at the mutated residue and summed over the chain (``[mutants, 2, F]``), so
a second scan of another feature is a lookup. Those arrays are cached in memory and on disk under
``$INTERPLM_CACHE_DIR/mutations``, keyed by the pipeline's identity, the sequence, the position
and the mutants, like the activations of :mod:`interplm_plugins.core.interpret.pipeline`.

The wild type is embedded once per scan by the same code path, so a change is mutant minus wild
type computed in float32 (not against the float16 disk cache of the activations).
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from interplm_plugins.core.atomic import atomic_path
from interplm_plugins.core.inputs.sequences import ProteinRecord, clean_sequence
from interplm_plugins.core.inputs.structure import STANDARD_AMINO_ACIDS, parse_resi
from interplm_plugins.core.interpret.chains import ChainActivations
from interplm_plugins.core.interpret.pipeline import ActivationCache, Pipeline, default_cache_dir
from interplm_plugins.core.plm.embed import MAX_WINDOW, embed_sequences, forward_layers
from interplm_plugins.core.plm.precision import compute_precision
from interplm_plugins.core.sae.encode import encode_features
from interplm_plugins.errors import InterPLMError

#: The 20 standard amino acids, one letter each, in alphabetical order of the letters.
AMINO_ACIDS = "".join(sorted(STANDARD_AMINO_ACIDS.values()))
#: Columns of a scan's table, one row per mutant.
SCAN_COLUMNS = ["position", "wild_type", "mutant", "site_before", "site_after", "site_change", "chain_before", "chain_after", "chain_change"]

_caches: dict[str, ActivationCache] = {}


def _scan_cache() -> ActivationCache:
    """The cache of per-position effects (one per cache folder: tests and users may move it)."""
    directory = default_cache_dir() / "mutations"
    return _caches.setdefault(str(directory), ActivationCache(directory, max_items=256))


def mutant_letters(to: str | Iterable[str] = "all") -> str:
    """The amino acids to mutate to: ``"all"`` (the 20), one-letter codes (``"A"``, ``"AG"``,
    ``"A,G"``) or three-letter names (``"ALA"``, ``"ala,gly"``), as one-letter codes."""
    words = [to] if isinstance(to, str) else list(to)
    letters = []
    for word in (w.strip().upper() for text in words for w in str(text).replace(",", " ").split()):
        if word == "ALL":
            letters.extend(AMINO_ACIDS)
        elif word in STANDARD_AMINO_ACIDS:
            letters.append(STANDARD_AMINO_ACIDS[word])
        elif word.isalpha() and set(word) <= set(AMINO_ACIDS):
            letters.extend(word)
        else:
            raise InterPLMError(f"to={word!r} is not an amino acid: use all, one-letter codes (A, AG) or three-letter names (ALA)")
    if not letters:
        raise InterPLMError("to= names no amino acid: use all, one-letter codes or three-letter names")
    return "".join(dict.fromkeys(letters))


def _embed_features(pipeline: Pipeline, sequence: str, position: int | None = None, letters: str = "") -> list[np.ndarray]:
    """``[L, F]`` activations of ``sequence`` (no ``position``), or of its mutants of ``position``
    to each of ``letters``, as one forward batch, in the order of ``letters``.

    The wild type is tokenised once and each mutant differs in one token (fair-esm's tokenizer
    costs a third of the forward pass otherwise); sequences longer than one window go through
    :func:`~interplm_plugins.core.plm.embed.embed_sequences`, which stitches windows.
    """
    variants = [sequence] if position is None else [sequence[:position] + a + sequence[position + 1 :] for a in letters]
    if len(sequence) > MAX_WINDOW:
        records = [ProteinRecord(str(i), s) for i, s in enumerate(variants)]
        by_id = {pid: reps[pipeline.layer] for pid, reps in embed_sequences(pipeline.plm, records, [pipeline.layer], precision=pipeline.precision)}
        return [encode_features(pipeline.sae, by_id[str(i)]) for i in range(len(records))]
    alphabet = pipeline.plm.alphabet
    _, _, tokens = alphabet.get_batch_converter()([("wild", sequence)])
    tokens = tokens.repeat(len(variants), 1)
    if position is not None:  # token 0 is <cls>: residue i is token i + 1
        tokens[:, position + 1] = torch.tensor([alphabet.get_idx(a) for a in letters])
    device = next(pipeline.plm.model.parameters()).device
    with torch.inference_mode(), compute_precision(pipeline.precision, device):
        reps = forward_layers(pipeline.plm, tokens.to(device), [pipeline.layer])[pipeline.layer][:, 1 : len(sequence) + 1]
    return [encode_features(pipeline.sae, rep.float().cpu().numpy()) for rep in reps]


def position_effects(pipeline: Pipeline, sequence: str, position: int, letters: str, wild: np.ndarray | None = None) -> np.ndarray:
    """``[len(letters), 2, F]``: per mutant of ``position`` (0-based) to each of ``letters``, the
    change of every feature at that residue (``[:, 0]``) and summed over the chain (``[:, 1]``).

    The mutants are one forward batch; the result is cached. ``wild`` is the wild type's ``[L, F]``
    activations when the caller has them (a scan embeds it once).
    """
    key = hashlib.sha256(f"{pipeline.identity}|{sequence}|{position}|{letters}".encode()).hexdigest()[:32]
    cache = _scan_cache()
    cached = cache.get(key)
    if cached is not None:
        return cached
    wild = _embed_features(pipeline, sequence)[0] if wild is None else wild
    mutants = _embed_features(pipeline, sequence, position, letters)
    effects = np.stack([np.stack([acts[position] - wild[position], acts.sum(axis=0) - wild.sum(axis=0)]) for acts in mutants])
    cache.put(key, effects.astype(np.float32))
    return effects


def mutation_scan(
    pipeline: Pipeline,
    sequence: str,
    feature: int,
    positions: Sequence[int] | None = None,
    to: str | Iterable[str] = "all",
    *,
    record: str | None = None,
    progress: bool = False,
) -> pd.DataFrame:
    """Every single-residue mutant of ``positions`` (0-based; default all) to ``to``, and what it
    does to ``feature``: one row per mutant with the columns :data:`SCAN_COLUMNS` (``position``
    1-based; ``site_*`` at the mutated residue, ``chain_*`` summed over the sequence; ``*_change``
    is mutant minus wild type). A position whose residue already is the only ``to`` has no row.
    """
    sequence = clean_sequence(sequence, record=record)
    feature = pipeline.check_feature(int(feature))
    letters = mutant_letters(to)
    positions = range(len(sequence)) if positions is None else [int(p) for p in positions]
    bad = [p for p in positions if not 0 <= p < len(sequence)]
    if bad:
        raise InterPLMError(f"position {bad[0] + 1} is outside the sequence (1..{len(sequence)})", record=record)
    wild = _embed_features(pipeline, sequence)[0]
    site_before, chain_before = wild[:, feature], float(wild[:, feature].sum())
    rows = []
    for position in tqdm(list(dict.fromkeys(positions)), desc="mutation scan", unit="position", disable=not progress):
        targets = "".join(a for a in letters if a != sequence[position])
        if not targets:
            continue
        effects = position_effects(pipeline, sequence, position, targets, wild)[:, :, feature]
        before = float(site_before[position])
        for letter, (site_change, chain_change) in zip(targets, effects.tolist()):
            rows.append([position + 1, sequence[position], letter, before, before + site_change, site_change,
                         chain_before, chain_before + chain_change, chain_change])  # fmt: skip
    return pd.DataFrame(rows, columns=SCAN_COLUMNS)


def largest_drops(table: pd.DataFrame, by: Sequence[str] = ("position",)) -> pd.Series:
    """Per scanned residue (grouped by the columns ``by``: ``position``, or ``chain`` and ``resi``),
    the largest fall of the feature at the mutated residue over its mutants (0 if no mutant lowers
    it): what the structure is coloured by."""
    return (-table.groupby(list(by), sort=False)["site_change"].min()).clip(lower=0.0)


def scan_chain(
    pipeline: Pipeline,
    chain: ChainActivations,
    feature: int,
    residues: Sequence[int] | None = None,
    to: str | Iterable[str] = "all",
    *,
    progress: bool = False,
) -> pd.DataFrame:
    """:func:`mutation_scan` of a structure chain's ``residues`` (indices into ``chain.chain.residues``;
    default all) in the sequence that was embedded for it (its own, or the full-length reference),
    with the residues' ``chain``, ``resi`` and ``resn`` in front. Residues that map nowhere are skipped."""
    indices = range(len(chain.chain.residues)) if residues is None else [int(i) for i in residues]
    by_position = {int(chain.positions[i]): chain.chain.residues[i] for i in indices if chain.positions[i] >= 0}
    table = mutation_scan(pipeline, chain.sequence, feature, sorted(by_position), to, record=f"chain {chain.chain.chain_id}", progress=progress)
    residue = [by_position[p - 1] for p in table["position"]]
    labels = pd.DataFrame({"chain": [r.chain for r in residue], "resi": [r.label for r in residue], "resn": [r.resn for r in residue]})
    return pd.concat([labels, table], axis=1)


def write_scan_table(table: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Write a scan's table as CSV (``.tsv``: tab-separated), atomically; returns the path."""
    path = Path(path)
    with atomic_path(path) as tmp:
        table.to_csv(tmp, sep="\t" if path.suffix.lower() == ".tsv" else ",", index=False, float_format="%.6g")
    return path


def select_labels(labels: Sequence[str], spec: str | None, *, record: str | None = None) -> list[int]:
    """Indices of the ``labels`` (residue numbers such as ``"52A"``, ``"-3"``; for a sequence
    ``"1"``, ``"2"``, ...) that ``spec`` names: ``"10-20,25,52A"``; ranges count by number,
    insertion codes included. ``None`` or ``"all"``: every one. Raises if it names none."""
    if spec is None or str(spec).strip().lower() in ("", "all"):
        return list(range(len(labels)))
    numbers = [parse_resi(label)[0] for label in labels]
    wanted: set[int] = set()
    for item in (part.strip() for part in str(spec).split(",") if part.strip()):
        bounds = re.fullmatch(r"(-?\d+)\s*-\s*(-?\d+)", item)
        if bounds:
            low, high = int(bounds.group(1)), int(bounds.group(2))
            wanted.update(i for i, n in enumerate(numbers) if low <= n <= high)
        else:
            number, icode = parse_resi(item, record=record)
            wanted.update(i for i, label in enumerate(labels) if label == f"{number}{icode}")
    if not wanted:
        raise InterPLMError(f"positions {spec!r} name no residue (they run {labels[0]}..{labels[-1]})", record=record)
    return sorted(wanted)
