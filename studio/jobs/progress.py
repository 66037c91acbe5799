"""How far a job is, with its total, rate and ETA: one ``Progress`` for every kind, computed on the
server from stored facts (never a client's clock) and shown the same way by the API, the CLI and
the UI (``text``).

Each kind counts its own unit from its own rows:

- train (and any kind reporting ``job_metrics``): ``step``, the highest step the current attempt
  logged; total ``result.total_steps``; epoch from the ``epoch`` metric, epochs ``result.epochs``
  (or the spec's ``hyper.epochs`` when no ``max_steps`` caps the run).
- eval: ``row``, one model's answer to one datapoint (``eval_outputs``); total ``result.total``.
- synth: ``chunk``, document chunks generated (``result.progress``, written by the entrypoint with
  the time of each write and where this attempt began).

Rate and ETA come from two points of the current attempt only (a retry starts over): its first
and its latest. Fewer than two points: no rate, no ETA. No total: ``?``, never a guess.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from pydantic import BaseModel, ConfigDict
from sqlalchemy import and_, case, func, or_, select, tuple_
from sqlalchemy.orm import Session

from studio.jobs.results import JobResult
from studio.jobs.status import JobStatus
from studio.jobs.views import Progress, Unit
from studio.store.models import EvalOutput, Job, JobEvent, JobMetric, utcnow

@dataclass(frozen=True)
class Point:
    """``done`` units were stored at ``at``."""

    at: datetime
    done: float


def measure(unit: Unit, done: int, total: int | None, first: Point | None, last: Point | None, *,
            now: datetime, running: bool, epoch: float | None = None, epochs: float | None = None,
            rows: int | None = None) -> Progress:
    """Progress from the current attempt's first and latest points (pure: tests pass ``now``)."""
    rate = None
    if first is not None and last is not None:
        seconds = (last.at - first.at).total_seconds()
        if seconds > 0 and last.done > first.done:
            rate = (last.done - first.done) / seconds
    eta = None
    if running and rate and total is not None and last is not None:
        since_last = max(0.0, (now - last.at).total_seconds())
        eta = max(0.0, (total - done) / rate - since_last)
    out = Progress(unit=unit, done=done, total=total, epoch=epoch, epochs=epochs, rows=rows, rate_per_s=rate,
                   eta_s=eta, updated_at=last.at if last else None, text="")
    out.text = progress_text(out)
    return out


def _num(x: float) -> str:
    return f"{x:.3g}" if x < 100 else f"{x:.0f}"


def duration_text(seconds: float) -> str:
    """``4s``, ``2m10s``, ``1h02m``."""
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def progress_text(p: Progress) -> str:
    total = "?" if p.total is None else str(p.total)
    parts = [f"{p.unit}{'' if p.unit == 'step' else 's'} {p.done}/{total}"]
    if p.unit == "step":
        if p.epoch is not None:
            parts.append(f"epoch {p.epoch:.1f}/" + ("?" if p.epochs is None else f"{p.epochs:g}"))
    else:
        if p.rows is not None:
            parts.append(f"{p.rows} rows")
        if p.rate_per_s is not None:
            parts.append(f"{_num(p.rate_per_s)} {p.unit}s/s")
    if p.eta_s is not None:
        parts.append(f"ETA {duration_text(p.eta_s)}")
    return " · ".join(parts)


def attempt_started_at(session: Session, job: Job) -> datetime | None:
    """When the current attempt began (its STARTING event); points before it belong to another."""
    return _attempt_starts(session, [job.id]).get(job.id)


def _attempt_starts(session: Session, job_ids: list[int]) -> dict[int, datetime]:
    if not job_ids:
        return {}
    return dict(session.execute(select(JobEvent.job_id, func.max(JobEvent.at)).where(
        JobEvent.job_id.in_(job_ids), JobEvent.to_status == JobStatus.STARTING).group_by(JobEvent.job_id)).all())


def _running(job: Job) -> bool:
    return job.status in (JobStatus.STARTING, JobStatus.RUNNING, JobStatus.CHECKPOINTING)


@dataclass(frozen=True)
class _Steps:
    """One attempt's ``job_metrics``: lowest and highest step, first and latest time, latest epoch."""

    lo: int | None = None
    hi: int | None = None
    first_at: datetime | None = None
    last_at: datetime | None = None
    epoch: float | None = None


def _current_attempt(job: Job) -> int:
    return max(job.attempts, 1)


def _steps_of(session: Session, jobs: list[Job]) -> dict[int, _Steps]:
    """Each job's current attempt's steps: two grouped queries whatever the number of jobs."""
    if not jobs:
        return {}
    # job_id IN (...) too: SQLite uses the job_id index for it, not for the pairs alone.
    mine = and_(JobMetric.job_id.in_([j.id for j in jobs]),
                tuple_(JobMetric.job_id, JobMetric.attempt).in_([(j.id, _current_attempt(j)) for j in jobs]))
    spans = {r.job_id: r for r in session.execute(
        select(JobMetric.job_id, func.min(JobMetric.step).label("lo"), func.max(JobMetric.step).label("hi"),
               func.min(JobMetric.at).label("first_at"), func.max(JobMetric.at).label("last_at"))
        .where(mine).group_by(JobMetric.job_id))}
    # The epoch of the highest step (the latest row of it): one row per job by a window.
    ranked = select(JobMetric.job_id, JobMetric.value, func.row_number().over(
        partition_by=JobMetric.job_id, order_by=(JobMetric.step.desc(), JobMetric.id.desc())).label("rank")
    ).where(mine, JobMetric.key == "epoch").subquery()
    epochs = dict(session.execute(select(ranked.c.job_id, ranked.c.value).where(ranked.c.rank == 1)).all())
    return {job_id: _Steps(r.lo, r.hi, r.first_at, r.last_at, epochs.get(job_id)) for job_id, r in spans.items()}


def _step_measure(job: Job, steps: _Steps, now: datetime) -> Progress:
    recorded = JobResult.of(job)
    total = recorded.total_steps if isinstance(recorded.total_steps, int) and recorded.total_steps > 0 else None
    epochs = recorded.epochs
    hyper = (job.spec or {}).get("hyper") or {}
    if epochs is None and not hyper.get("max_steps") and isinstance(hyper.get("epochs"), (int, float)):
        epochs = float(hyper["epochs"])  # no max_steps: the run makes exactly its epochs
    first = None if steps.lo is None else Point(steps.first_at, steps.lo)
    last = None if steps.hi is None else Point(steps.last_at, steps.hi)
    return measure("step", steps.hi or 0, total, first, last, now=now, running=_running(job), epoch=steps.epoch,
                   epochs=epochs)


def step_progress(session: Session, job: Job, now: datetime) -> Progress:
    """Steps of the current attempt from ``job_metrics`` (a resume's first row is its start step)."""
    return _step_measure(job, _steps_of(session, [job]).get(job.id, _Steps()), now)


class _EvalTotals(BaseModel):
    model_config = ConfigDict(extra="ignore")
    total: int | None = None


@dataclass(frozen=True)
class _Rows:
    """An eval's answers: all of them, and this attempt's count, first and latest time."""

    done: int = 0
    n: int = 0
    first_at: datetime | None = None
    last_at: datetime | None = None


def _rows_of(session: Session, job_ids: list[int]) -> dict[int, _Rows]:
    """Each eval's answers, those of its current attempt apart (stored since its latest STARTING):
    one grouped query whatever the number of jobs."""
    if not job_ids:
        return {}
    starts = (select(JobEvent.job_id, func.max(JobEvent.at).label("at"))
              .where(JobEvent.job_id.in_(job_ids), JobEvent.to_status == JobStatus.STARTING)
              .group_by(JobEvent.job_id).subquery())
    mine = or_(starts.c.at.is_(None), EvalOutput.created_at >= starts.c.at)
    stmt = (select(EvalOutput.job_id, func.count().label("done"), func.count(case((mine, 1))).label("n"),
                   func.min(case((mine, EvalOutput.created_at))).label("first_at"),
                   func.max(case((mine, EvalOutput.created_at))).label("last_at"))
            .outerjoin(starts, starts.c.job_id == EvalOutput.job_id)
            .where(EvalOutput.job_id.in_(job_ids)).group_by(EvalOutput.job_id))
    return {r.job_id: _Rows(r.done, r.n, r.first_at, r.last_at) for r in session.execute(stmt)}


def _row_measure(job: Job, rows: _Rows, now: datetime) -> Progress:
    first = Point(rows.first_at, rows.done - rows.n + 1) if rows.n else None
    last = Point(rows.last_at, rows.done) if rows.n else None
    total = _EvalTotals.model_validate(job.result or {}).total
    return measure("row", rows.done, total, first, last, now=now, running=_running(job))


def row_progress(session: Session, job: Job, now: datetime) -> Progress:
    """Answers stored (``eval_outputs``) of ``result.total``; the rate from this attempt's answers."""
    return _row_measure(job, _rows_of(session, [job.id]).get(job.id, _Rows()), now)


class _ChunkPoint(BaseModel):
    chunks_done: int = 0
    at: datetime | None = None


class _SynthProgress(_ChunkPoint):
    """``result.progress`` as the synthesis entrypoint writes it (``since``: this attempt's first write)."""

    model_config = ConfigDict(extra="ignore")
    chunks_total: int | None = None
    rows: int = 0
    since: _ChunkPoint | None = None


class _SynthResult(BaseModel):
    model_config = ConfigDict(extra="ignore")
    progress: _SynthProgress | None = None


def _chunk_measure(job: Job, start: datetime | None, now: datetime) -> Progress:
    p = _SynthResult.model_validate(job.result or {}).progress or _SynthProgress()
    first = last = None
    if p.since is not None and p.since.at is not None and p.at is not None and (start is None or p.since.at >= start):
        first, last = Point(p.since.at, p.since.chunks_done), Point(p.at, p.chunks_done)
    total = p.chunks_total if p.chunks_total else None
    return measure("chunk", p.chunks_done, total, first, last, now=now, running=_running(job), rows=p.rows)


def chunk_progress(session: Session, job: Job, now: datetime) -> Progress:
    """Chunks generated of those planned (``result.progress``); points older than this attempt are not its own."""
    return _chunk_measure(job, attempt_started_at(session, job), now)


def jobs_progress(session: Session, jobs: list[Job], now: datetime | None = None) -> dict[int, Progress | None]:
    """``job_progress`` of every job of a page, keyed by id, in a fixed number of grouped queries
    (one per kind's rows, whatever the page's length): a list must not ask once per row."""
    now = now or utcnow()
    of_kind = {kind: [j for j in jobs if j.kind == kind] for kind in ("train", "eval", "synth")}
    steps = _steps_of(session, of_kind["train"])
    rows = _rows_of(session, [j.id for j in of_kind["eval"]])
    starts = _attempt_starts(session, [j.id for j in of_kind["synth"]])
    out: dict[int, Progress | None] = {}
    for job in jobs:
        if job.kind == "train":
            out[job.id] = _step_measure(job, steps.get(job.id, _Steps()), now)
        elif job.kind == "eval":
            out[job.id] = _row_measure(job, rows.get(job.id, _Rows()), now)
        elif job.kind == "synth":
            out[job.id] = _chunk_measure(job, starts.get(job.id), now)
        else:
            out[job.id] = None  # a batch counts its requests itself (GET /v1/batches/{id} request_counts)
    return out


def job_progress(session: Session, job: Job, now: datetime | None = None) -> Progress | None:
    """The progress of a train, eval or synth job; None for other kinds (``now``: the server's
    clock unless a test sets it)."""
    return jobs_progress(session, [job], now)[job.id]
