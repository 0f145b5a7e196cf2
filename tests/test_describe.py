"""LLM descriptions with the real ``anthropic`` client against a real local HTTP server speaking the
Messages API (tests/llm_server.py): prompt contents, scores computed by hand from the database,
descriptions stored, retries on 429/529, the missing-key error, and the key never written anywhere."""

from __future__ import annotations

import json
import logging
import re
import shutil

import numpy as np
import pytest

from interplm_plugins.cli import main
from interplm_plugins.core.database.schema import FeatureDatabase
from interplm_plugins.core.interpret.describe import LLMClient, describe_features, select_features
from interplm_plugins.errors import InterPLMError

from llm_server import Error, FakeMessagesServer

KEY = "sk-ant-test-4f1c9e0d2b7a-NEVER-WRITE-ME"
MODEL = "claude-test-model"
DESCRIPTION = "Fires on leucines in amphipathic helices, strongest at the helix centre."

_WINDOW = re.compile(r"^(?:Example|Protein) \d+: (\S+).*\n(?:max activation: \S+\n)?window (\d+)-(\d+)[^:]*: ([A-Z]+)$", re.M)


def windows_in(prompt: str) -> list[tuple[str, int, str]]:
    """``(protein_id, 1-based start, sequence)`` of each window a prompt shows, in order."""
    return [(pid, int(a), seq) for pid, a, b, seq in _WINDOW.findall(prompt) if int(b) - int(a) + 1 == len(seq)]


def is_prediction(body: dict) -> bool:
    return "predict the feature's activation" in body["messages"][0]["content"]


def answer_with(predict):
    """A server reply: the description for description requests; for prediction requests the JSON of
    ``predict(protein_id, start, sequence) -> list`` for every window the prompt shows."""

    def reply(body: dict) -> str:
        prompt = body["messages"][0]["content"]
        if not is_prediction(body):
            return DESCRIPTION
        windows = windows_in(prompt)
        return "Here you go:\n```json\n" + json.dumps({str(n): list(predict(*w)) for n, w in enumerate(windows, 1)}) + "\n```"

    return reply


@pytest.fixture(scope="module")
def real_activations(tiny_db_path):
    """``{feature: {protein_id: full-length activations}}`` read straight from the database."""
    with FeatureDatabase(tiny_db_path) as db:
        features = select_features(db, 3)
        return {f: {ex.protein_id: ex.activations for ex in db.top_examples(f, 10) + db.quantile_examples(f)} for f in features}


@pytest.fixture()
def db(tiny_db_path, tmp_path):
    return shutil.copy(tiny_db_path, tmp_path / "features.sqlite")


@pytest.fixture()
def key(monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)
    monkeypatch.delenv("ANTHROPIC_AUTH_TOKEN", raising=False)
    monkeypatch.delenv("ANTHROPIC_BASE_URL", raising=False)
    return KEY


def sent_key(headers: dict) -> str | None:
    """The credential a request carried (SDK versions differ: ``x-api-key`` or a Bearer token)."""
    bearer = headers.get("authorization", "")
    return headers.get("x-api-key") or (bearer[len("Bearer ") :] if bearer.startswith("Bearer ") else None)


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    x, y = x - x.mean(), y - y.mean()
    return float((x * y).sum() / np.sqrt((x * x).sum() * (y * y).sum()))


def actual_of(real: dict, windows) -> np.ndarray:
    return np.concatenate([real[pid][start - 1 : start - 1 + len(seq)] for pid, start, seq in windows]).astype(np.float64)


def test_prompts_show_examples_activations_annotations_and_hide_them_from_prediction(db, key, real_activations, swissprot_dat):
    feature = next(iter(real_activations))
    with FakeMessagesServer(default=answer_with(lambda pid, start, seq: [0.0] * len(seq))) as server:
        from interplm_plugins.core.interpret.describe import annotations_from_uniprot

        llm = LLMClient(MODEL, base_url=server.base_url)
        describe_features(db, [feature], llm, annotations=annotations_from_uniprot(swissprot_dat), progress=False)
    describe_req, predict_req = server.requests
    assert describe_req.path == "/v1/messages" and describe_req.body["model"] == MODEL
    assert sent_key(describe_req.headers) == KEY  # the real client sent the key from the environment
    prompt = describe_req.prompt
    assert f"SAE feature {feature}" in prompt and "protein biochemist" in describe_req.body["system"]
    shown = windows_in(prompt)
    real = real_activations[feature]
    assert len(shown) >= 2
    assert real[shown[0][0]].max() == max(a.max() for a in real.values())  # the top example comes first
    for pid, start, seq in shown:
        acts = real[pid][start - 1 : start - 1 + len(seq)]
        peak = int(np.argmax(acts))
        # the peak residue is listed with its position and activation (2 decimals), if it reaches
        # the listing threshold (0.05); a weaker window (a low quantile example) says so
        listed = f"{seq[peak]}{start + peak}:{acts[peak]:.2f}" in prompt
        assert listed if acts[peak] >= 0.05 else "none above 0.05" in prompt
    assert "Swiss-Prot annotations:" in prompt and re.search(r"CHAIN|SIGNAL|DOMAIN|HELIX|STRAND", prompt)

    predict = predict_req.prompt
    held_out = windows_in(predict)
    assert held_out and not {p for p, _, _ in held_out} & {p for p, _, _ in shown}  # held out means unseen
    assert DESCRIPTION in predict
    assert "max activation" not in predict and "active residues" not in predict  # the description alone
    assert len(shown) + len(held_out) == len(real)  # top and quantile examples, once per protein


def test_score_is_the_correlation_of_known_predictions_and_is_stored(db, key, real_activations, capsys):
    # predictions from the sequence alone: 1 on leucines, 0.3 on isoleucines, else 0
    rule = {"L": 1.0, "I": 0.3}

    def by_residue(pid, start, seq):
        return [rule.get(aa, 0.0) for aa in seq]

    features = list(real_activations)[:2]
    with FakeMessagesServer(default=answer_with(by_residue)) as server:
        code = main(["-q", "describe", str(db), "--features", ",".join(map(str, features)), "--llm", MODEL, "--base-url", server.base_url])
    assert code == 0
    out = capsys.readouterr().out
    prediction_prompts = [r.prompt for r in server.requests if is_prediction(r.body)]
    assert len(prediction_prompts) == 2
    with FeatureDatabase(db) as database:
        for feature, prompt in zip(features, prediction_prompts):
            windows = windows_in(prompt)
            predicted = np.concatenate([by_residue(*w) for w in windows])
            expected = pearson(predicted, actual_of(real_activations[feature], windows))
            assert np.isfinite(expected) and abs(expected) > 1e-3  # a real correlation, not a degenerate one
            rows = database._query("SELECT model, description, score FROM descriptions WHERE feature = ?", (feature,))
            assert rows == [(MODEL, DESCRIPTION, pytest.approx(expected, abs=1e-9))]
            assert database.description(feature) == DESCRIPTION  # what the plugins read
            assert f"feature {feature} (r={expected:+.3f}" in out
            assert database.feature_info(feature)["description"] == DESCRIPTION


@pytest.mark.parametrize(("transform", "score"), [(lambda a: a, 1.0), (lambda a: -a, -1.0), (lambda a: 0 * a + 0.5, 0.0)])
def test_perfect_inverted_and_constant_predictions_score_1_minus_1_and_0(db, key, real_activations, transform, score):
    feature = next(iter(real_activations))
    real = real_activations[feature]

    def oracle(pid, start, seq):
        return transform(real[pid][start - 1 : start - 1 + len(seq)].astype(np.float64)).tolist()

    with FakeMessagesServer(default=answer_with(oracle)) as server:
        [result] = describe_features(db, [feature], LLMClient(MODEL, base_url=server.base_url), progress=False)
    assert result.score == pytest.approx(score, abs=1e-3)  # float16 storage rounds the oracle slightly


def test_an_unparsable_prediction_keeps_the_description_unscored(db, key, real_activations):
    feature = next(iter(real_activations))
    with FakeMessagesServer(["A helix feature.", "I cannot predict this."]) as server:
        [result] = describe_features(db, [feature], LLMClient(MODEL, base_url=server.base_url), progress=False)
    assert result.score is None and "no JSON object" in result.note
    with FeatureDatabase(db) as database:
        assert database.description(feature) == "A helix feature."


def test_rate_limit_and_overload_are_retried_then_succeed(db, key, real_activations):
    feature = next(iter(real_activations))
    waits: list[float] = []
    script = [Error(429, "rate limited"), Error(529, "overloaded"), Error(529, "overloaded")]
    with FakeMessagesServer(script, default=answer_with(lambda pid, start, seq: [1.0] + [0.0] * (len(seq) - 1))) as server:
        llm = LLMClient(MODEL, base_url=server.base_url, backoff_s=1.0, sleep=waits.append)
        [result] = describe_features(db, [feature], llm, progress=False)
    # the SDK's own retries are off: exactly one request per attempt, 3 failures + 2 successes
    assert len(server.requests) == 5
    assert result.description == DESCRIPTION and result.score is not None
    # exponential backoff with jitter in [0.75, 1] of 1, 2, 4 s
    assert len(waits) == 3
    for attempt, wait in enumerate(waits):
        assert 0.75 * 2**attempt <= wait <= 2**attempt


def test_retry_after_is_honoured_and_attempts_are_bounded(key):
    waits: list[float] = []
    script = [Error(429, headers={"retry-after": "3"}), Error(529, headers={"retry-after-ms": "250"})]
    with FakeMessagesServer(script, default=Error(529)) as server:
        llm = LLMClient(MODEL, base_url=server.base_url, max_attempts=4, sleep=waits.append)
        with pytest.raises(InterPLMError, match="still failed .* after 4 attempts .*HTTP 529"):
            llm.ask("hello")
    assert len(server.requests) == 4
    assert waits[:2] == [3.0, 0.25] and len(waits) == 3


def test_other_errors_are_not_retried(key):
    with FakeMessagesServer([Error(400, "bad model")]) as server:
        with pytest.raises(InterPLMError, match="refused the request .*HTTP 400: invalid_request_error: bad model"):
            LLMClient(MODEL, base_url=server.base_url, sleep=lambda s: None).ask("hello")
    assert len(server.requests) == 1


def test_cli_retries_without_waiting_long(db, key, real_activations, capsys):
    feature = next(iter(real_activations))
    script = [Error(429, headers={"retry-after-ms": "10"}), Error(529, headers={"retry-after-ms": "10"})]
    with FakeMessagesServer(script, default=answer_with(lambda pid, start, seq: [0.5] * len(seq))) as server:
        # --top 1: the feature with the best concept match
        assert main(["-q", "describe", str(db), "--top", "1", "--llm", MODEL, "--base-url", server.base_url]) == 0
    assert len(server.requests) == 4
    assert f"feature {feature} (r=+0.000" in capsys.readouterr().out  # a constant prediction scores 0


def test_missing_key_is_one_line_exit_2_and_sends_nothing(db, monkeypatch, capsys):
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    with FakeMessagesServer(default=DESCRIPTION) as server:
        code = main(["describe", str(db), "--top", "2", "--base-url", server.base_url])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0
    assert err.startswith("interplm: error:") and "ANTHROPIC_API_KEY is not set" in err
    assert server.requests == []


def test_a_feature_without_enough_examples_fails_before_any_request(tmp_path, tiny_db_records, key):
    """A database whose feature 0 fires in one protein only (feature 1 in all): describing 0 is refused unpaid."""
    from interplm_plugins.core.database.build import build_feature_database

    def activations():
        for i, record in enumerate(tiny_db_records[:6]):
            acts = np.zeros((len(record.sequence), 2), dtype=np.float32)
            acts[:, 1] = 0.5
            if i == 0:
                acts[3, 0] = 1.0
            yield record, acts

    path = build_feature_database(tmp_path / "quiet.sqlite", activations(), provenance={}, progress=False)
    with FeatureDatabase(path) as database:
        assert database.feature_info(0)["n_active_proteins"] == 1
    with FakeMessagesServer(default=DESCRIPTION) as server:
        with pytest.raises(InterPLMError, match="at least 2 are needed"):
            describe_features(path, [0], LLMClient(MODEL, base_url=server.base_url), progress=False)
    assert server.requests == []


def test_the_key_appears_in_no_log_output_database_or_file(db, key, real_activations, tmp_path, capsys, caplog):
    caplog.set_level(logging.DEBUG)  # httpx's and our debug logs included
    # the SDK's own debug record ("Request options: %s" with a dict) cannot be formatted by logging
    # in anthropic 2.14; its INFO and above are still captured
    caplog.set_level(logging.INFO, logger="anthropic")
    feature = next(iter(real_activations))
    # the server echoes the key in an error message, as a misbehaving proxy might; it must be scrubbed
    script = [Error(429, f"slow down, {KEY}", headers={"retry-after-ms": "1"}), DESCRIPTION, Error(401, f"invalid x-api-key {KEY}")]
    with FakeMessagesServer(script) as server:
        assert main(["describe", str(db), "--features", str(feature), "--llm", MODEL, "--base-url", server.base_url]) == 2
        ok = answer_with(lambda pid, start, seq: [0.0] * len(seq))
        server.default = ok
        assert main(["describe", str(db), "--features", str(feature), "--llm", MODEL, "--base-url", server.base_url]) == 0
    assert all(sent_key(r.headers) == KEY for r in server.requests)  # it was really used
    captured = capsys.readouterr()
    assert "[API key]" in captured.err and "invalid x-api-key" in captured.err
    assert KEY not in captured.out and KEY not in captured.err
    assert KEY not in caplog.text and "retrying" in caplog.text
    secret = KEY.encode()
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert secret not in path.read_bytes(), path
    with FeatureDatabase(db) as database:
        assert database.description(feature) == DESCRIPTION
        dump = "\n".join(database._con.iterdump())
    assert KEY not in dump
