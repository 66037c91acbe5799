"""Eval runs as JSON (API, CLI, SSE): summary, detail with the live leaderboard, pages of
per-datapoint results, and ``EvalPoller`` — the event stream behind ``GET /api/evals/{id}/events``
and ``studio eval show --watch``."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from studio.evals.leaderboard import progress, run_leaderboard
from studio.evals.queue import get_eval
from studio.evals.spec import scorer_name, stored_spec
from studio.jobs.follow import FollowEvent, follow_async, follow_sync, is_done
from studio.store.db import session_scope
from studio.store.models import ApiKey, EvalOutput, EvalScore, Job, JobEvent


def eval_summary(session: Session, job: Job) -> dict[str, Any]:
    spec = stored_spec(job)
    return {"id": job.id, "name": job.name, "status": job.status, "dataset": spec.dataset,
            "models": spec.models, "scorers": [scorer_name(s) for s in spec.scorers],
            "progress": progress(session, job), "attempts": job.attempts, "error": job.error,
            "submitted_by": job.submitted_by, "owner_key_id": job.owner_key_id,
            "cancel_requested": job.cancel_requested,
            "created_at": job.created_at.isoformat(), "updated_at": job.updated_at.isoformat()}


def eval_detail(session: Session, job: Job, key: ApiKey | None = None) -> dict[str, Any]:
    """The run with its result, live leaderboard and events; its spec (secrets redacted) for its
    owner and admins, like any job's (``key`` None: the trusted CLI)."""
    from studio.jobs.queue import HIDDEN_SPEC, visible_spec

    events = session.scalars(select(JobEvent).where(JobEvent.job_id == job.id).order_by(JobEvent.id))
    result = {k: v for k, v in (job.result or {}).items() if k != "leaderboard"}
    spec = visible_spec(job, key)
    hidden = {"spec_hidden": HIDDEN_SPEC} if spec is None and job.spec else {}
    return {**eval_summary(session, job), "spec": spec, **hidden, "result": result,
            "leaderboard": run_leaderboard(session, job),
            "events": [{"at": e.at.isoformat(), "from": e.from_status, "to": e.to_status, "reason": e.reason}
                       for e in events]}


def results_page(session: Session, job: Job, *, limit: int = 50, offset: int = 0, model: str | None = None,
                 after_id: int | None = None) -> list[dict[str, Any]]:
    """Answers in the order they were stored, each with every scorer's verdict."""
    stmt = select(EvalOutput).where(EvalOutput.job_id == job.id)
    if model:
        stmt = stmt.where(EvalOutput.model == model)
    if after_id is not None:
        stmt = stmt.where(EvalOutput.id > after_id)
    outs = list(session.scalars(stmt.order_by(EvalOutput.id).limit(limit).offset(offset)))
    if not outs:
        return []
    dps = {o.datapoint for o in outs}
    scores: dict[tuple[int, str], dict[str, Any]] = {}
    for sc in session.scalars(select(EvalScore).where(EvalScore.job_id == job.id, EvalScore.datapoint.in_(dps))):
        scores.setdefault((sc.datapoint, sc.model), {})[sc.scorer] = {
            "score": sc.score, "status": sc.status, "reason": sc.reason, "raw": sc.raw}
    return [{"id": o.id, "datapoint": o.datapoint, "model": o.model, "model_version": o.model_version,
             "input": o.input, "reference": o.reference, "output": o.output, "error": o.error,
             "latency_ms": o.latency_ms, "cost_usd": o.cost_usd, "cache_hit": o.cache_hit,
             "scores": scores.get((o.datapoint, o.model), {})} for o in outs]


class EvalPoller:
    """``status`` on every transition, ``result`` per stored answer, ``leaderboard`` after each
    batch of new answers, ``end`` once nothing more will happen."""

    def __init__(self, db_url: str, eval_id: int, max_results: int = 200):
        self.db_url, self.eval_id, self.max_results = db_url, eval_id, max_results
        self.done = self.busy = False
        self._last_event, self._last_output = 0, 0

    def poll(self) -> list[FollowEvent]:
        out = []
        with session_scope(self.db_url) as s:
            job = get_eval(s, self.eval_id)
            for e in s.scalars(select(JobEvent).where(JobEvent.job_id == self.eval_id,
                                                      JobEvent.id > self._last_event).order_by(JobEvent.id)):
                self._last_event = e.id
                out.append(FollowEvent("status", {"status": e.to_status, "reason": e.reason,
                                                  "at": e.at.isoformat()}))
            new = results_page(s, job, limit=self.max_results, after_id=self._last_output)
            for r in new:
                self._last_output = r["id"]
                out.append(FollowEvent("result", {k: v for k, v in r.items() if k != "input"}))
            self.busy = len(new) == self.max_results  # a full page: more are stored already
            done = is_done(job)
            if new or done:
                out.append(FollowEvent("leaderboard", {"progress": progress(s, job), **run_leaderboard(s, job)}))
            if done and not self.busy:
                out.append(FollowEvent("end", {"status": job.status, "error": job.error}))
                self.done = True
        return out


def follow_eval(db_url: str, eval_id: int, poll_s: float = 0.5, max_results: int = 200) -> Iterator[FollowEvent]:
    """The eval's events until it is done (``studio eval show --watch``)."""
    return follow_sync(EvalPoller(db_url, eval_id, max_results), poll_s)


def follow_eval_async(db_url: str, eval_id: int, poll_s: float = 0.5) -> AsyncIterator[FollowEvent]:
    """The same events for ``GET /api/evals/{id}/events``."""
    return follow_async(EvalPoller(db_url, eval_id), poll_s)
