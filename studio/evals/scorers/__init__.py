"""Scorers: programmatic (exact match, regex, JSON / JSON Schema, numeric), embedding similarity,
LLM judges through the gateway (pointwise, pairwise) and your own HTTP evaluator.

Each pointwise scorer has ``async score(datapoint, output) -> ScoreResult``; the pairwise judge has
``async compare(datapoint, candidate_output, baseline_output)``."""

from __future__ import annotations

from typing import Any

from studio.evals.scorers import embedding, http, judge, programmatic
from studio.evals.scorers.base import Datapoint, ScoreResult
from studio.evals.spec import EvalSpec
from studio.scorer_specs import is_lm_eval, scorer_name

__all__ = ["Datapoint", "ScoreResult", "build_scorers", "is_pairwise"]

# Each scorer module registers its scorers with their spec type (``studio.scorer_specs.register``)
# when imported: importing this package is what lets a scorer spec ``build()``.
REGISTERED = (programmatic, embedding, judge, http)


def is_pairwise(spec: Any) -> bool:
    return spec.type == "judge" and spec.mode == "pairwise"


def build_scorers(spec: EvalSpec, client: Any = None) -> dict[str, Any]:
    """Scorer name → scorer object, in the spec's order (each scorer spec ``build``s its own).
    ``client`` (a gateway Client) is needed only by judges. lm_eval scorers are no per-answer scorers
    (``studio.evals.harness`` runs them)."""
    return {scorer_name(s): s.build(client) for s in spec.scorers if not is_lm_eval(s)}
