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
from sqlalchemy import func, select
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
    return session.scalar(select(func.max(JobEvent.at)).where(JobEvent.job_id == job.id,
                                                              JobEvent.to_status == JobStatus.STARTING))


def _running(job: Job) -> bool:
    return job.status in (JobStatus.STARTING, JobStatus.RUNNING, JobStatus.CHECKPOINTING)


def step_progress(session: Session, job: Job, now: datetime) -> Progress:
    """Steps of the current attempt from ``job_metrics`` (a resume's first row is its start step)."""
    attempt = max(job.attempts, 1)
    mine = (JobMetric.job_id == job.id, JobMetric.attempt == attempt)
    lo, hi, first_at, last_at = session.execute(
        select(func.min(JobMetric.step), func.max(JobMetric.step), func.min(JobMetric.at),
               func.max(JobMetric.at)).where(*mine)).one()
    epoch = session.scalar(select(JobMetric.value).where(*mine, JobMetric.key == "epoch")
                           .order_by(JobMetric.step.desc(), JobMetric.id.desc()).limit(1))
    recorded = JobResult.of(job)
    total = recorded.total_steps if isinstance(recorded.total_steps, int) and recorded.total_steps > 0 else None
    epochs = recorded.epochs
    hyper = (job.spec or {}).get("hyper") or {}
    if epochs is None and not hyper.get("max_steps") and isinstance(hyper.get("epochs"), (int, float)):
        epochs = float(hyper["epochs"])  # no max_steps: the run makes exactly its epochs
    first = None if lo is None else Point(first_at, lo)
    last = None if hi is None else Point(last_at, hi)
    return measure("step", hi or 0, total, first, last, now=now, running=_running(job), epoch=epoch, epochs=epochs)


class _EvalTotals(BaseModel):
    model_config = ConfigDict(extra="ignore")
    total: int | None = None


def row_progress(session: Session, job: Job, now: datetime) -> Progress:
    """Answers stored (``eval_outputs``) of ``result.total``; the rate from this attempt's answers."""
    done = session.scalar(select(func.count()).select_from(EvalOutput).where(EvalOutput.job_id == job.id)) or 0
    stmt = select(func.count(), func.min(EvalOutput.created_at), func.max(EvalOutput.created_at)).where(
        EvalOutput.job_id == job.id)
    start = attempt_started_at(session, job)
    if start is not None:
        stmt = stmt.where(EvalOutput.created_at >= start)
    n, first_at, last_at = session.execute(stmt).one()
    first = Point(first_at, done - n + 1) if n else None
    last = Point(last_at, done) if n else None
    total = _EvalTotals.model_validate(job.result or {}).total
    return measure("row", done, total, first, last, now=now, running=_running(job))


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


def chunk_progress(session: Session, job: Job, now: datetime) -> Progress:
    """Chunks generated of those planned (``result.progress``); points older than this attempt are not its own."""
    p = _SynthResult.model_validate(job.result or {}).progress or _SynthProgress()
    start = attempt_started_at(session, job)
    first = last = None
    if p.since is not None and p.since.at is not None and p.at is not None and (start is None or p.since.at >= start):
        first, last = Point(p.since.at, p.since.chunks_done), Point(p.at, p.chunks_done)
    total = p.chunks_total if p.chunks_total else None
    return measure("chunk", p.chunks_done, total, first, last, now=now, running=_running(job), rows=p.rows)


def job_progress(session: Session, job: Job, now: datetime | None = None) -> Progress | None:
    """The progress of a train, eval or synth job; None for other kinds (``now``: the server's
    clock unless a test sets it)."""
    now = now or utcnow()
    if job.kind == "eval":
        return row_progress(session, job, now)
    if job.kind == "synth":
        return chunk_progress(session, job, now)
    if job.kind == "train":
        return step_progress(session, job, now)
    return None  # a batch counts its requests itself (GET /v1/batches/{id} request_counts)
