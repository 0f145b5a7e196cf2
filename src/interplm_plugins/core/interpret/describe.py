"""LLM descriptions of SAE features, scored by how well they predict held-out activations (InterPLM).

For one feature, its example proteins (sequence windows around the strongest activation, with
per-residue activations and Swiss-Prot annotations) are split in two, alternating down the
activation ranking so both halves span strong to weak examples:

1. *describe*: Claude sees the first half (windows, activations, annotations, matched concepts)
   and writes a concise description;
2. *predict*: a second request sees only that description and the second half's sequences and
   annotations, and answers per-residue activations as JSON;
3. *score*: the Pearson correlation between predicted and real activations over all held-out
   residues. 1 means the description predicts where and how strongly the feature fires; 0 means it
   predicts nothing (a constant prediction scores 0); the score is ``None`` when the answer could
   not be parsed or the held-out activations are constant (the reason is kept in ``note``).

The API key is read from ``ANTHROPIC_API_KEY`` only, handed straight to the ``anthropic`` client
and kept nowhere else: not in options, reprs, logs, errors or the database.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from interplm_plugins.core.database.build import update_feature_database
from interplm_plugins.core.database.schema import FeatureDatabase
from interplm_plugins.errors import InterPLMError

log = logging.getLogger(__name__)

API_KEY_ENV = "ANTHROPIC_API_KEY"
DEFAULT_MODEL = "claude-sonnet-4-5"
#: Residues shown around an example's strongest activation (each side).
DEFAULT_HALF_WINDOW = 25

_SYSTEM = (
    "You are an expert protein biochemist interpreting features of a sparse autoencoder trained on "
    "ESM-2 protein language model embeddings. Each feature assigns every residue an activation "
    "between 0 (inactive) and 1 (its strongest activation)."
)


@dataclass(frozen=True)
class ExampleWindow:
    """A protein window and a feature's per-residue activations on it.

    ``start`` is the 1-based position of the window's first residue in the full protein;
    ``annotations`` are Swiss-Prot features overlapping the window, as readable strings.
    """

    protein_id: str
    sequence: str
    activations: np.ndarray
    start: int = 1
    name: str = ""
    annotations: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        acts = np.asarray(self.activations, dtype=np.float64)
        if acts.shape != (len(self.sequence),):
            raise InterPLMError(
                f"{acts.shape[0] if acts.ndim == 1 else acts.shape} activations for a window of {len(self.sequence)} residues",
                record=self.protein_id,
            )
        if not np.all(np.isfinite(acts)):
            raise InterPLMError("activations contain NaN or infinity", record=self.protein_id)
        object.__setattr__(self, "activations", acts)

    @property
    def max_activation(self) -> float:
        return float(self.activations.max()) if len(self.activations) else 0.0


@dataclass
class FeatureDescription:
    """A feature's description, its prediction score (Pearson r, or None) and how it was made."""

    feature: int
    model: str
    description: str
    score: float | None
    n_proteins: int
    created: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    note: str = ""


def window_example(
    protein_id: str,
    sequence: str,
    activations: Sequence[float] | np.ndarray,
    *,
    half_window: int = DEFAULT_HALF_WINDOW,
    name: str = "",
    annotations: Iterable[tuple[int, int, str]] = (),
) -> ExampleWindow:
    """Cut the window of ``±half_window`` residues around the strongest activation of a whole protein.

    ``annotations`` are ``(start, end, text)`` with 1-based inclusive positions in the protein; those
    overlapping the window are kept, written ``"text (start-end)"``.
    """
    acts = np.asarray(activations, dtype=np.float64)
    if acts.shape != (len(sequence),):
        raise InterPLMError(f"{acts.size} activations for a sequence of {len(sequence)} residues", record=protein_id)
    peak = int(np.argmax(acts)) if len(acts) else 0
    lo = max(0, peak - half_window)
    hi = min(len(sequence), peak + half_window + 1)
    kept = tuple(
        f"{text} ({a}-{b})" if a != b else f"{text} ({a})"
        for a, b, text in annotations
        if a <= hi and b >= lo + 1
    )
    return ExampleWindow(protein_id, sequence[lo:hi], acts[lo:hi], start=lo + 1, name=name, annotations=kept)


def split_examples(examples: Sequence[ExampleWindow]) -> tuple[list[ExampleWindow], list[ExampleWindow]]:
    """Split into (describe, held_out), alternating down the ranking by maximum activation."""
    ranked = sorted(examples, key=lambda e: (-e.max_activation, e.protein_id))
    return ranked[0::2], ranked[1::2]


def _active_residues(example: ExampleWindow, threshold: float = 0.05) -> str:
    hits = [
        f"{aa}{example.start + i}:{a:.2f}"
        for i, (aa, a) in enumerate(zip(example.sequence, example.activations))
        if a >= threshold
    ]
    return " ".join(hits) if hits else "none above 0.05"


def build_description_prompt(feature: int, examples: Sequence[ExampleWindow], concepts: Sequence[str] = ()) -> str:
    """The prompt asking for a description of ``feature`` from its examples and matched concepts."""
    lines = [
        f"Describe what SAE feature {feature} detects.",
        "",
        f"Below are {len(examples)} protein windows, from the strongest to the weakest maximum activation. "
        "Positions are 1-based in the full protein; 'active residues' lists residue, position and activation "
        "for every residue with activation of at least 0.05.",
    ]
    if concepts:
        lines += ["", "Swiss-Prot concepts statistically associated with this feature:"]
        lines += [f"- {c}" for c in concepts]
    for n, ex in enumerate(examples, 1):
        title = f"{ex.protein_id} {ex.name}".strip()
        lines += [
            "",
            f"Example {n}: {title}",
            f"max activation: {ex.max_activation:.2f}",
            f"window {ex.start}-{ex.start + len(ex.sequence) - 1}: {ex.sequence}",
            f"active residues: {_active_residues(ex)}",
        ]
        if ex.annotations:
            lines.append("Swiss-Prot annotations: " + "; ".join(ex.annotations))
    lines += [
        "",
        "In at most three sentences, say which residues the feature fires on and in what protein context "
        "(residue types, motifs, domains, binding sites, structure), and what makes it fire more or less "
        "strongly. Answer with the description only.",
    ]
    return "\n".join(lines)


def build_prediction_prompt(description: str, examples: Sequence[ExampleWindow]) -> str:
    """The prompt asking to predict per-residue activations of ``examples`` from ``description`` alone."""
    lines = [
        "A sparse autoencoder feature of a protein language model is described as follows:",
        "",
        description.strip(),
        "",
        "From this description alone, predict the feature's activation (0 to 1) at every residue of each "
        "protein window below.",
    ]
    for n, ex in enumerate(examples, 1):
        title = f"{ex.protein_id} {ex.name}".strip()
        lines += ["", f"Protein {n}: {title}", f"window {ex.start}-{ex.start + len(ex.sequence) - 1} ({len(ex.sequence)} residues): {ex.sequence}"]
        if ex.annotations:
            lines.append("Swiss-Prot annotations: " + "; ".join(ex.annotations))
    lines += [
        "",
        'Answer with one JSON object and nothing else, mapping each protein number (as a string) to a list '
        'with exactly one number per residue of its window, e.g. {"1": [0, 0, 0.8, ...], "2": [...]}.',
    ]
    return "\n".join(lines)


_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.DOTALL)


def parse_predictions(text: str, examples: Sequence[ExampleWindow]) -> list[np.ndarray]:
    """Parse the JSON answer of a prediction prompt; raise :class:`InterPLMError` saying what is wrong."""
    fenced = _FENCE.search(text)
    body = fenced.group(1) if fenced else text
    start, end = body.find("{"), body.rfind("}")
    if start < 0 or end < start:
        raise InterPLMError("the prediction answer holds no JSON object")
    try:
        data = json.loads(body[start : end + 1])
    except json.JSONDecodeError as exc:
        raise InterPLMError(f"the prediction answer is not valid JSON ({exc.msg} at character {exc.pos})") from None
    if not isinstance(data, dict):
        raise InterPLMError("the prediction answer is not a JSON object")
    predictions = []
    for n, ex in enumerate(examples, 1):
        values = data.get(str(n))
        if not isinstance(values, list):
            raise InterPLMError(f"the prediction answer has no list for protein {n}", record=ex.protein_id)
        if len(values) != len(ex.sequence):
            raise InterPLMError(
                f"protein {n}: {len(values)} predicted values for a window of {len(ex.sequence)} residues",
                record=ex.protein_id,
            )
        try:
            arr = np.array([float(v) for v in values], dtype=np.float64)
        except (TypeError, ValueError):
            raise InterPLMError(f"protein {n}: predictions are not all numbers", record=ex.protein_id) from None
        if not np.all(np.isfinite(arr)):
            raise InterPLMError(f"protein {n}: predictions contain NaN or infinity", record=ex.protein_id)
        predictions.append(arr)
    return predictions


def prediction_score(predictions: Sequence[np.ndarray], examples: Sequence[ExampleWindow]) -> tuple[float | None, str]:
    """Pearson r between predicted and real activations over all held-out residues, and a note.

    A constant prediction carries no information and scores 0; constant real activations leave the
    correlation undefined (``None``).
    """
    predicted = np.concatenate([np.asarray(p, dtype=np.float64) for p in predictions]) if predictions else np.zeros(0)
    actual = np.concatenate([ex.activations for ex in examples]) if examples else np.zeros(0)
    if predicted.shape != actual.shape:
        raise InterPLMError(f"{predicted.size} predictions for {actual.size} residues")
    if actual.size < 2 or np.ptp(actual) == 0:
        return None, "held-out activations are constant: correlation undefined"
    if np.ptp(predicted) == 0:
        return 0.0, "constant prediction"
    return float(np.corrcoef(predicted, actual)[0, 1]), ""


class LLMClient:
    """Claude through the ``anthropic`` SDK, with bounded exponential backoff on 429/529/5xx.

    The key comes from ``ANTHROPIC_API_KEY`` only; it is passed to the SDK client and never stored
    on this object; the repr leaves it out and error texts are scrubbed of it.
    """

    RETRYABLE_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504, 529})

    def __init__(
        self,
        model: str = DEFAULT_MODEL,
        *,
        base_url: str | None = None,
        max_attempts: int = 6,
        backoff_s: float = 1.0,
        max_backoff_s: float = 60.0,
        timeout_s: float = 120.0,
        max_tokens: int = 2048,
        sleep: Callable[[float], None] = time.sleep,
    ):
        try:
            import anthropic
        except ImportError:
            raise InterPLMError("describing features needs the anthropic package: pip install anthropic") from None

        key = os.environ.get(API_KEY_ENV, "").strip()
        if not key:
            raise InterPLMError(f"{API_KEY_ENV} is not set: export your Anthropic API key to describe features")
        self.model = model
        self.base_url = base_url
        self.max_attempts = max(1, int(max_attempts))
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.max_tokens = max_tokens
        self._sleep = sleep
        self._anthropic = anthropic
        # The SDK's own retries are off so that the attempt count and waits are ours alone (bounded).
        self._client = anthropic.Anthropic(api_key=key, base_url=base_url, max_retries=0, timeout=timeout_s)

    def __repr__(self) -> str:
        return f"LLMClient(model={self.model!r}, base_url={self.base_url!r})"

    def _scrub(self, text: str) -> str:
        key = getattr(self._client, "api_key", None)
        return text.replace(key, "[API key]") if key else text

    def _wait(self, attempt: int, headers) -> float:
        retry_after = None
        if headers is not None:
            for name, scale in (("retry-after-ms", 1e-3), ("retry-after", 1.0)):
                try:
                    retry_after = float(headers.get(name)) * scale
                    break
                except (TypeError, ValueError):
                    continue
        if retry_after is not None and retry_after >= 0:
            return min(retry_after, self.max_backoff_s)
        base = min(self.backoff_s * 2.0**attempt, self.max_backoff_s)
        return base * (0.75 + 0.25 * random.random())  # jitter so parallel clients spread out

    def ask(self, prompt: str, *, system: str = _SYSTEM, max_tokens: int | None = None) -> str:
        """Send one user message and return the text of Claude's answer."""
        sdk = self._anthropic
        last = ""
        for attempt in range(self.max_attempts):
            try:
                message = self._client.messages.create(
                    model=self.model,
                    max_tokens=max_tokens or self.max_tokens,
                    system=system,
                    messages=[{"role": "user", "content": prompt}],
                )
            except sdk.APIStatusError as exc:
                last = f"HTTP {exc.status_code}: {_api_error_message(exc)}"
                if exc.status_code not in self.RETRYABLE_STATUS:
                    raise InterPLMError(f"the Messages API refused the request for {self.model} ({self._scrub(last)})") from None
                headers = exc.response.headers
            except (sdk.APIConnectionError, sdk.APITimeoutError) as exc:
                last = f"{type(exc).__name__}: {exc}"
                headers = None
            else:
                text = "".join(getattr(block, "text", "") for block in message.content)
                if not text.strip():
                    raise InterPLMError(f"{self.model} answered no text (stop reason {message.stop_reason})")
                return text
            if attempt + 1 < self.max_attempts:
                wait = self._wait(attempt, headers)
                log.warning("Messages API busy (%s); retrying in %.1f s", self._scrub(last), wait)
                self._sleep(wait)
        raise InterPLMError(f"the Messages API still failed for {self.model} after {self.max_attempts} attempts ({self._scrub(last)})")


def _api_error_message(exc) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        err = body.get("error")
        if isinstance(err, dict) and err.get("message"):
            return f"{err.get('type', 'error')}: {err['message']}"
    return str(getattr(exc, "message", "")) or type(exc).__name__


def describe_feature(
    llm: LLMClient, feature: int, examples: Sequence[ExampleWindow], concepts: Sequence[str] = ()
) -> FeatureDescription:
    """Describe ``feature`` from half of ``examples`` and score the description on the other half."""
    if len(examples) < 2:
        raise InterPLMError(f"feature {feature} has {len(examples)} example protein(s); at least 2 are needed")
    shown, held_out = split_examples(examples)
    description = llm.ask(build_description_prompt(feature, shown, concepts)).strip()
    # room for every predicted number (a few tokens each), so a long answer is not cut off mid-JSON
    residues = sum(len(ex.sequence) for ex in held_out)
    answer = llm.ask(build_prediction_prompt(description, held_out), max_tokens=max(llm.max_tokens, 8 * residues + 256))
    try:
        score, note = prediction_score(parse_predictions(answer, held_out), held_out)
    except InterPLMError as err:
        score, note = None, f"unscored: {err}"
    return FeatureDescription(feature, llm.model, description, score, n_proteins=len(examples), note=note)


# --- the feature database ---------------------------------------------------------------------

Annotations = Mapping[str, Sequence[tuple[int, int, str]]]


def examples_from_database(
    db: FeatureDatabase,
    feature: int,
    *,
    top_k: int = 10,
    annotations: Annotations | None = None,
    half_window: int = DEFAULT_HALF_WINDOW,
) -> list[ExampleWindow]:
    """A feature's top and quantile example proteins as windows around their peaks (one per protein).

    ``annotations`` maps protein id (accession) to Swiss-Prot features ``(start, end, text)``.
    """
    seen: set[str] = set()
    windows = []
    for ex in [*db.top_examples(feature, top_k), *db.quantile_examples(feature)]:
        if ex.protein_id in seen:
            continue
        seen.add(ex.protein_id)
        windows.append(
            window_example(
                ex.protein_id,
                ex.sequence,
                ex.activations,
                half_window=half_window,
                name=ex.description,
                annotations=(annotations or {}).get(ex.protein_id, ()),
            )
        )
    return windows


def annotations_from_uniprot(path: str | os.PathLike) -> dict[str, list[tuple[int, int, str]]]:
    """Swiss-Prot features by accession, as ``(start, end, "type: description")``, from a UniProt file."""
    from interplm_plugins.core.inputs.uniprot import read_uniprot

    out: dict[str, list[tuple[int, int, str]]] = {}
    for entry in read_uniprot(path):
        rows = out.setdefault(entry.accession, [])
        for feat in entry.features:
            if feat.start is None or feat.end is None:
                continue
            text = feat.type + (f": {feat.description}" if feat.description else "")
            if getattr(feat, "ligand", None):
                text += f" ({feat.ligand})"
            rows.append((int(feat.start), int(feat.end), text))
    return out


def select_features(db: FeatureDatabase, n: int) -> list[int]:
    """The ``n`` features most worth describing: best concept's validation F1 first, then the most often active."""
    features = list(range(db.num_features))
    best = db.best_concepts(features)
    infos = {f: db.feature_info(f) for f in features}
    alive = [f for f in features if infos[f]["n_active_proteins"] >= 2]
    alive.sort(key=lambda f: (-(best[f].valid_f1 if f in best else -1.0), -infos[f]["n_active_proteins"], f))
    return alive[: max(0, int(n))]


def describe_features(
    db_path: str | os.PathLike,
    features: Sequence[int],
    llm: LLMClient,
    *,
    top_k: int = 10,
    annotations: Annotations | None = None,
    progress: bool = True,
) -> list[FeatureDescription]:
    """Describe and score ``features`` of a feature database, and store the results in it.

    Results are written (atomically, replacing the same feature and model) even when a later
    feature fails or the run is interrupted, so finished API calls are never lost.
    """
    from tqdm.auto import tqdm

    results: list[FeatureDescription] = []
    try:
        with FeatureDatabase(db_path) as db:
            jobs = []
            for feature in features:
                windows = examples_from_database(db, feature, top_k=top_k, annotations=annotations)  # checks the index
                if len(windows) < 2:  # found before any request is paid for
                    raise InterPLMError(f"feature {feature} is active in {len(windows)} example protein(s); at least 2 are needed", file=db_path)
                concepts = [m.label() for m in db.concepts_for_feature(feature, k=5)]
                jobs.append((int(feature), windows, concepts))
        for feature, windows, concepts in tqdm(jobs, desc="describe", unit="feature", disable=not progress):
            results.append(describe_feature(llm, feature, windows, concepts))
    finally:
        if results:
            store_descriptions(db_path, results)
    return results


def store_descriptions(db_path: str | os.PathLike, results: Sequence[FeatureDescription]) -> None:
    """Write descriptions and scores into the database's ``descriptions`` table (atomically)."""
    frame = pd.DataFrame(
        {
            "feature": [r.feature for r in results],
            "model": [r.model for r in results],
            "description": [r.description for r in results],
            "score": [r.score for r in results],
            "created": [r.created for r in results],
        }
    )
    update_feature_database(db_path, descriptions=frame)
