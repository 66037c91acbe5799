"""A canary look from the tables the studio already writes (docs/loops.md, "Where a look's figures
come from"): the completion log (``completions``: which version answered, latency, tokens, ``user``;
written by the Router per answered request), the requests routed to a version that failed
(``request_failures``: counted as that arm's requests and errors), the feedback on the answers
(``feedback``) and the weights in force (the canary's experiment, ``experiments.arms``). Nothing is kept in memory between looks:
each look is recomputed from the raw rows up to ``now``, so a restarted runner sees what the old
one saw and ``explain`` can recompute every stored verdict.

The window: the canary began at the generation's first move into ``CANARY`` and the step in force
at its last ``canary_step`` move (``loop_transitions``); completions created in ``[start, now]`` on
the canary's alias count, with the ratings given on them up to ``now``. The candidate's arm is the
completions its version (``name@N``) answered; the control is the champion's answers through the same
alias in the same window — never the served name's other traffic.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from studio.errors import Conflict
from studio.experiments.ab import get_experiment
from studio.loops.states import Reason, State
from studio.loops.stats import ArmCounts, Look
from studio.store.log_models import RequestFailure
from studio.store.loop_models import LoopGeneration, LoopTransition
from studio.store.models import Completion, Feedback


@dataclass(frozen=True)
class Window:
    """When the canary and its step in force began (from the transition log)."""

    canary_start: datetime
    step_start: datetime


def canary_window(session: Session, gen: LoopGeneration) -> Window:
    moves = session.execute(
        select(LoopTransition.at, LoopTransition.from_state, LoopTransition.reason)
        .where(LoopTransition.generation_id == gen.id, LoopTransition.to_state == State.CANARY.value)
        .order_by(LoopTransition.id)).all()
    entries = [m for m in moves if m.from_state in (State.GATE.value, State.SHADOW.value)]
    if not entries:
        raise Conflict(f"generation {gen.id} has not entered CANARY (it is {gen.state})",
                       "look at a canary only after the gate (and shadow) passed")
    start = entries[-1].at
    steps = [m.at for m in moves if m.reason == Reason.CANARY_STEP.value and m.at >= start]
    return Window(canary_start=start, step_start=steps[-1] if steps else start)


def candidate_weight(arms: list[dict], candidate: str) -> float:
    """The candidate's share of the alias's traffic, from the arms' relative weights."""
    total = sum(a["weight"] for a in arms)
    share = sum(a["weight"] for a in arms if a["model"] == candidate) / total if total else 0.0
    if not 0.0 < share < 1.0:
        raise Conflict(f"the canary's arms {[a['model'] for a in arms]} do not split traffic between the "
                       f"candidate {candidate} and another arm", "set the experiment's arms to the "
                       "champion and the candidate, both with a weight above 0")
    return share


def _rows(session: Session, alias: str, refs: tuple[str, str], start: datetime, now: datetime):
    completions = session.execute(
        select(Completion.id, Completion.model_version, Completion.user, Completion.response,
               Completion.latency_ms, Completion.output_tokens, Completion.created_at)
        .where(Completion.experiment == alias, Completion.model_version.in_(refs),
               Completion.created_at >= start, Completion.created_at <= now)).all()
    ratings = session.execute(
        select(Feedback.completion_id, Feedback.rating, Feedback.created_at)
        .join(Completion, Completion.id == Feedback.completion_id)
        .where(Completion.experiment == alias, Completion.model_version.in_(refs),
               Completion.created_at >= start, Completion.created_at <= now,
               Feedback.rating.is_not(None), Feedback.created_at <= now)).all()
    failures = session.execute(
        select(RequestFailure.model_version, RequestFailure.user, RequestFailure.created_at)
        .where(RequestFailure.experiment == alias, RequestFailure.model_version.in_(refs),
               RequestFailure.created_at >= start, RequestFailure.created_at <= now)).all()
    return completions, ratings, failures


def _arm(rows, failures, mean_rating: dict[str, float]) -> ArmCounts:
    """An arm's answers and its failed requests: both are requests it ended; a failure is an error,
    as is an answer with no text (the tiny task's invalid format). Latency and tokens are the
    answers'."""
    rated = [mean_rating[r.id] for r in rows if r.id in mean_rating]
    latencies = [r.latency_ms for r in rows]
    tokens = [r.output_tokens for r in rows if r.output_tokens is not None]
    return ArmCounts(
        completions=len(rows) + len(failures), rated=len(rated), thumbs_up=sum(1 for m in rated if m > 0),
        errors=len(failures) + sum(1 for r in rows if not (r.response or "").strip()),
        latency_p95_ms=float(np.percentile(latencies, 95)) if latencies else None,
        tokens_per_answer=float(np.mean(tokens)) if tokens else None)


def _units(rows) -> int:
    """Units the router assigned: distinct users (the split is sticky per user), plus each
    request without a user on its own."""
    return len({r.user for r in rows if r.user}) + sum(1 for r in rows if not r.user)


def build_look(session: Session, gen: LoopGeneration, now: datetime) -> Look:
    """The generation's canary as the decision rule sees it at ``now``."""
    if not (gen.canary_alias and gen.champion and gen.candidate):
        raise Conflict(f"generation {gen.id} has no canary alias, champion and candidate recorded",
                       "the runner records them when the canary starts")
    window = canary_window(session, gen)
    weight = candidate_weight(get_experiment(session, gen.canary_alias).arms, gen.candidate)
    refs = (gen.champion, gen.candidate)
    completions, ratings, failures = _rows(session, gen.canary_alias, refs, window.canary_start, now)
    by_id: dict[str, list[float]] = defaultdict(list)
    for r in ratings:
        by_id[r.completion_id].append(r.rating)
    mean_rating = {cid: sum(v) / len(v) for cid, v in by_id.items()}
    arm = {ref: [r for r in completions if r.model_version == ref] for ref in refs}
    failed = {ref: [r for r in failures if r.model_version == ref] for ref in refs}
    in_step = {ref: [r for r in rows if r.created_at >= window.step_start] for ref, rows in arm.items()}
    # The SRM test's units: every request the router sent to the arm in the step, answered or not.
    routed = {ref: in_step[ref] + [r for r in failed[ref] if r.created_at >= window.step_start] for ref in refs}
    last_completion = max((r.created_at for r in (*completions, *failures)), default=window.canary_start)
    last_rating = max((r.created_at for r in ratings), default=window.canary_start)
    return Look(
        at_s=max(0.0, (now - window.canary_start).total_seconds()),
        step=gen.canary_step, weight=weight,
        champion=_arm(arm[gen.champion], failed[gen.champion], mean_rating),
        candidate=_arm(arm[gen.candidate], failed[gen.candidate], mean_rating),
        step_assigned_champion=_units(routed[gen.champion]),
        step_assigned_candidate=_units(routed[gen.candidate]),
        step_held_s=max(0.0, (now - window.step_start).total_seconds()),
        step_rated_champion=sum(1 for r in in_step[gen.champion] if r.id in mean_rating),
        step_rated_candidate=sum(1 for r in in_step[gen.candidate] if r.id in mean_rating),
        idle_traffic_s=max(0.0, (now - last_completion).total_seconds()),
        idle_feedback_s=max(0.0, (now - max(last_rating, window.canary_start)).total_seconds()))
