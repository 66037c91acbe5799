"""Scorers: programmatic (exact match, regex, JSON / JSON Schema, numeric), embedding similarity,
LLM judges through the gateway (pointwise, pairwise) and your own HTTP evaluator.

Each pointwise scorer has ``async score(datapoint, output) -> ScoreResult``; the pairwise judge has
``async compare(datapoint, candidate_output, baseline_output)``."""

from __future__ import annotations

from typing import Any

from studio.evals.scorers.base import Datapoint, ScoreResult
from studio.evals.scorers.embedding import Embedding
from studio.evals.scorers.http import HttpEvaluator
from studio.evals.scorers.judge import Judge
from studio.evals.scorers.programmatic import ExactMatch, Json, Numeric, Regex
from studio.evals.spec import EvalSpec, scorer_name

__all__ = ["Datapoint", "ScoreResult", "build_scorers", "is_pairwise"]


def is_pairwise(spec: Any) -> bool:
    return spec.type == "judge" and spec.mode == "pairwise"


def build_scorers(spec: EvalSpec, client: Any = None) -> dict[str, Any]:
    """Scorer name → scorer object, in the spec's order. ``client`` (a gateway Client) is needed
    only by judges."""
    out: dict[str, Any] = {}
    for s in spec.scorers:
        if s.type == "exact_match":
            out[scorer_name(s)] = ExactMatch(s)
        elif s.type == "regex":
            out[scorer_name(s)] = Regex(s)
        elif s.type == "json":
            out[scorer_name(s)] = Json(s)
        elif s.type == "numeric":
            out[scorer_name(s)] = Numeric(s)
        elif s.type == "embedding":
            out[scorer_name(s)] = Embedding(s)
        elif s.type == "judge":
            out[scorer_name(s)] = Judge(s, client)
        elif s.type == "http":
            out[scorer_name(s)] = HttpEvaluator(s)
    return out
