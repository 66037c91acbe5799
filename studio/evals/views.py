"""Eval runs as typed views (API, CLI) and events (SSE): ``EvalSummary``, ``EvalDetail`` with the
live ``Leaderboard``, pages of per-datapoint ``EvalResultRow``, and ``EvalPoller`` — the event
stream behind ``GET /api/evals/{id}/events`` and ``studio eval show --watch``."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

from pydantic import Field
from sqlalchemy import select
from sqlalchemy.orm import Session

from studio.evals.leaderboard import progress, run_leaderboard
from studio.evals.queue import get_eval
from studio.evals.spec import EvalResult, stored_spec
from studio.jobs.follow import FollowEvent, follow_async, follow_sync, is_done
from studio.jobs.status import JobStatus
from studio.jobs.views import IsoDateTime, JobEventView, Progress, StoredJobView, View
from studio.scorer_specs import scorer_name
from studio.store.db import session_scope
from studio.store.models import ApiKey, EvalOutput, EvalScore, Job, JobEvent


class ScoreRow(View):
    """One model × scorer: the mean with its 95% confidence interval."""

    model: str = Field(description="The model (a dataset's leaderboard: the version that answered).")
    scorer: str = Field(description="The scorer's name.")
    n: int = Field(description="Scored datapoints.")
    mean: float | None = Field(description="Mean score; null when none was scored.")
    ci95: list[float] | None = Field(description="[low, high] of the 95% interval (Student's t); null below 2.")
    unscored: int = Field(description="Datapoints the scorer could not score (see the results' reasons).")


class WinRate(View):
    """How often ``model`` beat ``opponent`` on the datapoints both were scored on (ties count half)."""

    scorer: str = Field(description="The scorer.")
    model: str = Field(description="The model.")
    opponent: str = Field(description="The model it is compared with.")
    n: int = Field(description="Datapoints both were scored on.")
    wins: int = Field(description="Datapoints where model scored higher.")
    ties: int = Field(description="Datapoints with equal scores.")
    win_rate: float = Field(description="(wins + ties / 2) / n.")


class ModelPerformance(View):
    """Answers, errors, latency and cost of one model."""

    model: str = Field(description="The model.")
    answers: int = Field(description="Answers stored.")
    errors: int = Field(description="Answers that failed.")
    cache_hits: int = Field(description="Answers served from the gateway's cache.")
    cost_usd: float = Field(description="Total cost in USD.")
    latency_ms_mean: float | None = Field(description="Mean latency of uncached answers, in ms.")
    latency_ms_p50: float | None = Field(description="Median latency of uncached answers, in ms.")
    latency_ms_p95: float | None = Field(description="95th percentile latency of uncached answers, in ms.")
    cost_usd_per_answer: float | None = Field(description="cost_usd / answers.")


class Leaderboard(View):
    """Scores per model × scorer, pairwise win rates, and performance per model."""

    scores: list[ScoreRow] = Field(description="Mean ± 95% CI per model × scorer.")
    win_rates: list[WinRate] = Field(description="Every ordered pair of models, per scorer.")
    models: list[ModelPerformance] = Field(description="Answers, latency and cost per model.")


class DatasetLeaderboard(Leaderboard):
    """Every run on one dataset snapshot pooled; models keyed by the version that answered."""

    snapshot_id: str = Field(description="The dataset snapshot.")
    runs: list[int] = Field(description="The eval runs pooled, newest first.")


class EvalSummary(View):
    """An eval run as ``GET /api/evals`` lists it."""

    id: int = Field(description="The eval's job id.")
    name: str = Field(description="The run's name.")
    status: JobStatus = Field(description="Its job status.")
    dataset: str | None = Field(description="The dataset it reads (name, name@N or snapshot id).")
    models: list[str] = Field(description="The models answering.")
    scorers: list[str] = Field(description="The scorers' names.")
    progress: Progress = Field(description="Answers stored (unit row: one model's answer to one datapoint) "
                               "of rows × models, with rate and ETA.")
    attempts: int = Field(description="Attempts started so far.")
    error: str | None = Field(description="Why the last attempt failed.")
    submitted_by: str | None = Field(description="Who queued it.")
    owner_key_id: int | None = Field(description="The key that owns it.")
    cancel_requested: bool = Field(description="A cancel was asked.")
    created_at: IsoDateTime = Field(description="When it was queued (ISO 8601, UTC).")
    updated_at: IsoDateTime = Field(description="When its row last changed (ISO 8601, UTC).")
    heartbeat_at: IsoDateTime | None = Field(description="The last beat of the process running it (null before "
                                             "it started).")


class EvalDetail(EvalSummary, StoredJobView):
    """An eval run with its spec (owner and admins), result, live leaderboard and events."""

    spec: dict[str, Any] | None = Field(description="The EvalSpec, secrets redacted; null when hidden.")
    spec_hidden: str | None = Field(default=None, description="Present only when the spec is hidden: why.")
    result: EvalResult = Field(description="What the run recorded, without its stored leaderboard (see "
                               "leaderboard).")
    leaderboard: Leaderboard = Field(description="The leaderboard so far (live while the run goes).")
    events: list[JobEventView] = Field(description="Every status change, oldest first.")


class Verdict(View):
    """One scorer's verdict on one answer."""

    score: float | None = Field(description="The score; null when the scorer could not score it.")
    status: str = Field(description="scored, unscored, error or skipped.")
    reason: str | None = Field(description="The scorer's reason.")
    raw: str | None = Field(description="The scorer's raw reply (e.g. a judge's unparseable one).")


class EvalResultRow(View):
    """One model's answer to one datapoint, with every scorer's verdict."""

    id: int = Field(description="The answer's id (results are stored in this order).")
    datapoint: int = Field(description="The datapoint's index in the dataset.")
    model: str = Field(description="The model asked.")
    model_version: str | None = Field(description="The version that answered (name@N).")
    input: Any = Field(description="The messages sent.")
    reference: str | None = Field(description="The reference answer, if the dataset has one.")
    output: str | None = Field(description="The answer.")
    error: str | None = Field(description="Why there is no answer.")
    latency_ms: float | None = Field(description="Time to the answer, in ms.")
    cost_usd: float = Field(description="Its cost in USD.")
    cache_hit: bool = Field(description="Served from the gateway's cache.")
    scores: dict[str, Verdict] = Field(description="scorer name → verdict.")


class EvalResultsPage(View):
    eval_id: int = Field(description="The eval.")
    limit: int = Field(description="Most rows asked for.")
    offset: int = Field(description="Rows skipped.")
    results: list[EvalResultRow] = Field(description="The answers, in the order they were stored.")


def eval_summary(session: Session, job: Job) -> EvalSummary:
    spec = stored_spec(job)
    return EvalSummary(id=job.id, name=job.name, status=job.status, dataset=spec.dataset, models=spec.models,
                       scorers=[scorer_name(s) for s in spec.scorers], progress=progress(session, job),
                       attempts=job.attempts, error=job.error, submitted_by=job.submitted_by,
                       owner_key_id=job.owner_key_id, cancel_requested=job.cancel_requested,
                       created_at=job.created_at, updated_at=job.updated_at, heartbeat_at=job.heartbeat_at)


def eval_detail(session: Session, job: Job, key: ApiKey | None = None) -> EvalDetail:
    """The run with its result, live leaderboard and events; its spec (secrets redacted) for its
    owner and admins, like any job's (``key`` None: the trusted CLI)."""
    from studio.jobs.queue import HIDDEN_SPEC, job_events, visible_spec

    result = {k: v for k, v in (job.result or {}).items() if k != "leaderboard"}
    spec = visible_spec(job, key)
    return EvalDetail(**eval_summary(session, job).model_dump(), spec=spec,
                      spec_hidden=HIDDEN_SPEC if spec is None and job.spec else None,
                      result=EvalResult.model_validate(result), leaderboard=run_leaderboard(session, job),
                      events=job_events(session, job))


def results_page(session: Session, job: Job, *, limit: int = 50, offset: int = 0, model: str | None = None,
                 after_id: int | None = None) -> list[EvalResultRow]:
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
    scores: dict[tuple[int, str], dict[str, Verdict]] = {}
    for sc in session.scalars(select(EvalScore).where(EvalScore.job_id == job.id, EvalScore.datapoint.in_(dps))):
        scores.setdefault((sc.datapoint, sc.model), {})[sc.scorer] = Verdict(
            score=sc.score, status=sc.status, reason=sc.reason, raw=sc.raw)
    return [EvalResultRow(id=o.id, datapoint=o.datapoint, model=o.model, model_version=o.model_version,
                          input=o.input, reference=o.reference, output=o.output, error=o.error,
                          latency_ms=o.latency_ms, cost_usd=o.cost_usd, cache_hit=o.cache_hit,
                          scores=scores.get((o.datapoint, o.model), {})) for o in outs]


class EvalPoller:
    """``status`` on every transition, ``task`` per lm-eval task × model done (``result.lm_eval``),
    ``result`` per stored answer, ``leaderboard`` after each batch of new answers, ``end`` once
    nothing more will happen."""

    def __init__(self, db_url: str, eval_id: int, max_results: int = 200):
        self.db_url, self.eval_id, self.max_results = db_url, eval_id, max_results
        self.done = self.busy = False
        self._last_event, self._last_output, self._tasks = 0, 0, 0

    def poll(self) -> list[FollowEvent]:
        out = []
        with session_scope(self.db_url) as s:
            job = get_eval(s, self.eval_id)
            for e in s.scalars(select(JobEvent).where(JobEvent.job_id == self.eval_id,
                                                      JobEvent.id > self._last_event).order_by(JobEvent.id)):
                self._last_event = e.id
                out.append(FollowEvent("status", {"status": e.to_status, "reason": e.reason,
                                                  "at": e.at.isoformat()}))
            tasks = EvalResult.of(job).lm_eval or []
            for entry in tasks[self._tasks:]:
                out.append(FollowEvent("task", entry))
            self._tasks = len(tasks)
            new = results_page(s, job, limit=self.max_results, after_id=self._last_output)
            for r in new:
                self._last_output = r.id
                out.append(FollowEvent("result", r.model_dump(mode="json", exclude={"input"})))
            self.busy = len(new) == self.max_results  # a full page: more are stored already
            done = is_done(job)
            if new or done:
                out.append(FollowEvent("leaderboard", {"progress": progress(s, job).model_dump(mode="json"),
                                                       **run_leaderboard(s, job)}))
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
