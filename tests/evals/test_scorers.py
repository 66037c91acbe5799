"""Scorers on their own: normalisation, regex, JSON / JSON Schema, numeric tolerance, the
embedding scorer's skip, judge reply parsing, and a BYO evaluator over HTTP (up, down, slow)."""

from __future__ import annotations

import asyncio

import pytest

from studio.evals.scorers import Datapoint
from studio.evals.scorers.embedding import Embedding
from studio.evals.scorers.http import HttpEvaluator
from studio.evals.scorers.judge import parse_score, parse_winner
from studio.evals.scorers.programmatic import ExactMatch, Json, Numeric, Regex, first_number
from studio.scorer_specs import (EmbeddingScorer, ExactMatchScorer, HttpScorer, JsonScorer, Normalize, NumericScorer,
                                 RegexScorer)
from studio.settings import StudioSettings

# The scripted evaluator listens on loopback: the egress guard lets it through only when allowed.
LOOPBACK = StudioSettings(egress_allow="127.0.0.1")


def score(scorer, output, reference=None):
    return asyncio.run(scorer.score(Datapoint(0, [{"role": "user", "content": "q"}], reference), output))


@pytest.mark.parametrize(("norm", "output", "ref", "want"), [
    ({}, "  8 4 0 6\n", "8 4 0 6", 1.0),
    ({}, "8  4 0 6", "8 4 0 6", 1.0),  # whitespace collapsed by default
    ({"collapse_whitespace": False}, "8  4 0 6", "8 4 0 6", 0.0),
    ({}, "Paris", "paris", 0.0),
    ({"lowercase": True}, "Paris", "paris", 1.0),
    ({"lowercase": True, "remove_punctuation": True}, "Paris!", "paris", 1.0),
    ({}, "8 4 0", "8 4 0 6", 0.0),
])
def test_exact_match_normalisation(norm, output, ref, want):
    assert score(ExactMatch(ExactMatchScorer(type="exact_match", normalize=Normalize(**norm))), output, ref).score == want


def test_regex_search_and_full_match():
    assert score(Regex(RegexScorer(type="regex", pattern=r"\d+")), "abc 42").score == 1.0
    assert score(Regex(RegexScorer(type="regex", pattern=r"[0-9 ]+", full_match=True)), "4 2 x").score == 0.0
    assert score(Regex(RegexScorer(type="regex", pattern="yes", ignore_case=True)), "YES").score == 1.0


def test_json_valid_and_schema():
    plain = Json(JsonScorer(type="json"))
    assert score(plain, '{"a": 1}').score == 1.0
    assert score(plain, '```json\n{"a": 1}\n```').score == 1.0
    bad = score(plain, "{a: 1}")
    assert bad.score == 0.0 and "not JSON" in bad.reason
    schema = Json(JsonScorer(type="json", schema={"type": "object", "required": ["name"],
                                                   "properties": {"name": {"type": "string"}}}))
    assert score(schema, '{"name": "x"}').score == 1.0
    wrong = score(schema, '{"name": 3}')
    assert wrong.score == 0.0 and "name" in wrong.reason


def test_an_invalid_schema_is_refused_when_the_scorer_is_built():
    import jsonschema

    with pytest.raises(jsonschema.SchemaError):
        Json(JsonScorer(type="json", schema={"type": "nonsense"}))


def test_numeric_tolerance():
    assert first_number("the answer is -3.5 apples") == -3.5
    assert first_number("1,5") == 1.5 and first_number("1,000,000") == 1e6
    s = Numeric(NumericScorer(type="numeric", abs_tolerance=0.01))
    assert score(s, "about 3.141", "3.14").score == 1.0
    assert score(s, "3.2", "3.14").score == 0.0
    assert score(s, "no idea", "3.14").score == 0.0
    rel = Numeric(NumericScorer(type="numeric", abs_tolerance=0, rel_tolerance=0.1))
    assert score(rel, "105", "100").score == 1.0 and score(rel, "111", "100").score == 0.0
    unscored = score(s, "3", "three")
    assert unscored.score is None and unscored.status == "unscored"


def test_embedding_scorer_is_skipped_with_the_reason_when_no_model_is_installed():
    s = Embedding(EmbeddingScorer(type="embedding", model="/nonexistent/embedding-model"))
    r = score(s, "a", "b")
    assert r.score is None and r.status == "skipped"
    assert "sentence-transformers" in r.reason or "not available locally" in r.reason


@pytest.mark.parametrize(("reply", "want"), [
    ("Score: 7", 7.0), ("score - 10", 10.0), ("8", 8.0), ("8/10", 8.0), ("I think Score: 3.5 overall", 3.5),
    ("Score: 11", None), ("Score: 0", None), ("great answer", None), ("", None),
])
def test_judge_score_parsing(reply, want):
    assert parse_score(reply) == want


@pytest.mark.parametrize(("reply", "want"), [
    ("Winner: A", "a"), ("winner: b.", "b"), ("Winner: tie", "tie"), ("B", "b"), ("both are fine", None),
])
def test_judge_winner_parsing(reply, want):
    assert parse_winner(reply) == want


def test_byo_evaluator_scores_over_http(evaluator):
    s = HttpEvaluator(HttpScorer(type="http", url=f"{evaluator.url}/score"), LOOPBACK)
    assert score(s, "3 2 1", "3 2 1").score == 1.0
    r = score(s, "1 2 3", "3 2 1")
    assert r.score == 0.0 and r.reason == "differs"


def test_byo_evaluator_down_is_retried_then_marked(evaluator, evaluator_calls):
    before = evaluator_calls["down"]
    r = score(HttpEvaluator(HttpScorer(type="http", url=f"{evaluator.url}/down", retries=2), LOOPBACK), "x", "y")
    assert r.score is None and r.status == "error" and "500" in r.reason and "3 tries" in r.reason
    assert evaluator_calls["down"] - before == 3


def test_byo_evaluator_slow_times_out_then_is_marked(evaluator):
    r = score(HttpEvaluator(HttpScorer(type="http", url=f"{evaluator.url}/slow", timeout_s=0.3, retries=1),
                           LOOPBACK), "x")
    assert r.score is None and r.status == "error" and "timed out" in r.reason


def test_byo_evaluator_unreachable_is_marked():
    from tests.evals.scripted import free_port

    r = score(HttpEvaluator(HttpScorer(type="http", url=f"http://127.0.0.1:{free_port()}/x", retries=0), LOOPBACK), "x")
    assert r.status == "error" and "unreachable" in r.reason
