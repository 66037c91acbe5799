"""What the API and the CLI share about jobs of every kind: cancel, list, show (each kind's
service enqueues its own: ``studio.train.queue``, ``studio.evals.queue``, ``studio.data.synth``).

Both front doors only touch the database; the scheduler (a Serve deployment of ``studio up``)
takes QUEUED jobs to Ray. So a job can be queued while the studio is down and starts when it is up.
"""

from __future__ import annotations

from typing import Any, Literal

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from studio.access import owns, require_owner
from studio.egress import redact_url
from studio.errors import Conflict, NotFound
from studio.jobs.progress import job_progress, jobs_progress
from studio.jobs.results import JobResult
from studio.jobs.status import JobStatus, transition, will_retry
from studio.jobs.views import JobDetail, JobEventView, JobSummary, MetricPoint, Progress, TrialView
from studio.store.models import ApiKey, Job, JobEvent, JobMetric


def get_job(session: Session, job_id: int) -> Job:
    job = session.get(Job, job_id)
    if job is None:
        raise NotFound(f"job {job_id} does not exist", "see `studio jobs ls` (or GET /api/jobs)")
    return job


def request_cancel(session: Session, job_id: int, by: str | None, key: ApiKey | None = None) -> Job:
    """Cancel a job. QUEUED and RETRYING jobs have nothing running on Ray and are CANCELLED now;
    STARTING/RUNNING/CHECKPOINTING ones are marked, and the scheduler stops their Ray job and
    records CANCELLED within a tick. A FAILED job with retries left is kept from retrying.
    With the calling ``key``: only the job's owner or an admin (403 otherwise)."""
    job = get_job(session, job_id)
    if key is not None:
        require_owner(key, job.owner_key_id, f"{job.kind} job {job_id}", "cancel it")
    if job.parent_id is not None:  # its Ray Job is the sweep's: stopping it would stop every trial
        raise Conflict(f"job {job_id} is a trial of sweep {job.parent_id}; a trial is cancelled with its sweep",
                       f"cancel the sweep: studio jobs cancel {job.parent_id} (POST /api/jobs/{job.parent_id}/cancel)")
    status = JobStatus(job.status)
    who = f" by {by}" if by else ""
    if status in (JobStatus.SUCCEEDED, JobStatus.CANCELLED) or (status is JobStatus.FAILED and not will_retry(job)):
        raise Conflict(f"job {job_id} is already {status} and has nothing left to cancel",
                       "cancel only jobs that are queued, running or waiting to retry")
    job.cancel_requested = True
    # A sweep is cancelled as a whole: its trials that have not ended with it (the scheduler stops
    # them with the sweep's Ray Job, which runs them).
    for child in session.scalars(select(Job).where(Job.parent_id == job_id)):
        if not JobStatus(child.status).is_terminal():
            child.cancel_requested = True
    # A QUEUED job with a submission id is a `ray job submit … --recipe` driver already on Ray:
    # the scheduler stops it like a running one.
    if status is JobStatus.RETRYING or (status is JobStatus.QUEUED and job.ray_submission_id is None):
        transition(session, job_id, JobStatus.CANCELLED, f"cancelled{who} before it ran")
    session.flush()
    return job


def list_jobs(session: Session, statuses: list[str] | None = None, limit: int = 100,
              offset: int = 0) -> list[Job]:
    stmt = select(Job).order_by(Job.id.desc()).limit(limit).offset(offset)
    if statuses:
        stmt = stmt.where(Job.status.in_([JobStatus(s).value for s in statuses]))
    return list(session.scalars(stmt))


def latest_step(session: Session, job: Job) -> int | None:
    """Highest step the current attempt reported in ``job_metrics`` (drives progress bars)."""
    return session.scalar(select(func.max(JobMetric.step)).where(
        JobMetric.job_id == job.id, JobMetric.attempt == max(job.attempts, 1)))


def total_steps(job: Job) -> int | None:
    """Steps the run will take, as its service recorded them (``result.total_steps``: a training
    job's ``hyper.max_steps`` when it is queued); None when only the run itself can tell."""
    recorded = JobResult.of(job).total_steps
    return recorded if isinstance(recorded, int) and recorded > 0 else None


def job_summary(session: Session, job: Job, progress: Progress | None | Literal["ask"] = "ask") -> JobSummary:
    """``job`` as a list row; ``progress`` when the caller already computed it (``job_summaries``)."""
    spec = job.spec or {}
    return JobSummary(
        id=job.id, kind=job.kind, name=job.name, method=spec.get("method"), status=job.status,
        attempts=job.attempts, max_retries=job.max_retries, cancel_requested=job.cancel_requested,
        submitted_by=job.submitted_by, owner_key_id=job.owner_key_id, ray_submission_id=job.ray_submission_id,
        error=job.error, created_at=job.created_at, updated_at=job.updated_at, next_attempt_at=job.next_attempt_at,
        heartbeat_at=job.heartbeat_at, parent_id=job.parent_id,
        progress=job_progress(session, job) if isinstance(progress, str) else progress)


def job_summaries(session: Session, jobs: list[Job]) -> list[JobSummary]:
    """A page of jobs as list rows, every row's progress from the same few grouped queries."""
    progress = jobs_progress(session, jobs)
    return [job_summary(session, j, progress[j.id]) for j in jobs]


HIDDEN_SPEC = "hidden: a job's spec is shown to its owner and admins only"


def redact_spec(spec: Any) -> Any:
    """A stored job spec fit for a response, whatever its kind: the values of every ``headers``
    mapping become "***" (an evaluator's or reward's request headers may hold its secret) and
    every ``url`` loses its user info and query. ``headers_env`` holds only variable names."""
    if isinstance(spec, list):
        return [redact_spec(v) for v in spec]
    if not isinstance(spec, dict):
        return spec
    out = {}
    for k, v in spec.items():
        if k == "headers" and isinstance(v, dict):
            out[k] = {name: "***" for name in v}
        elif k == "url" and isinstance(v, str):
            out[k] = redact_url(v)
        else:
            out[k] = redact_spec(v)
    return out


def visible_spec(job: Job, key: ApiKey | None) -> dict[str, Any] | None:
    """The job's spec for ``key`` (None: the caller is trusted, e.g. the CLI in-process)."""
    return redact_spec(job.spec) if key is None or owns(key, job.owner_key_id) else None


def job_events(session: Session, job: Job) -> list[JobEventView]:
    """Every status change of ``job``, oldest first."""
    return [JobEventView(at=e.at, from_=e.from_status, to=e.to_status, reason=e.reason) for e in
            session.scalars(select(JobEvent).where(JobEvent.job_id == job.id).order_by(JobEvent.id))]


def job_detail(session: Session, job: Job, key: ApiKey | None = None) -> JobDetail:
    """The job with its spec, result and events; the spec only for its owner or an admin."""
    spec = visible_spec(job, key)
    return JobDetail(
        **dict(job_summary(session, job)), spec=spec, spec_hidden=HIDDEN_SPEC if spec is None and job.spec else None,
        result=None if job.result is None else JobResult.of(job), checkpoint_uri=job.checkpoint_uri,
        mlflow_run_id=job.mlflow_run_id, step=latest_step(session, job), total_steps=total_steps(job),
        events=job_events(session, job), trials=sweep_trials(session, job) if job.kind == "sweep" else None)


def sweep_trials(session: Session, sweep: Job) -> list[TrialView]:
    """A sweep's trials, oldest first: params, last eval_loss, exact match, state, time, and the
    version the best one registered."""
    from studio.store.models import utcnow

    children = list(session.scalars(select(Job).where(Job.parent_id == sweep.id).order_by(Job.id)))
    ids = [c.id for c in children]
    losses: dict[int, float] = {}
    for job_id, value in session.execute(select(JobMetric.job_id, JobMetric.value).where(
            JobMetric.job_id.in_(ids), JobMetric.key == "eval_loss").order_by(JobMetric.step, JobMetric.id)):
        losses[job_id] = value  # the last one wins
    started = dict(session.execute(select(JobEvent.job_id, func.min(JobEvent.at)).where(
        JobEvent.job_id.in_(ids), JobEvent.to_status == JobStatus.STARTING.value).group_by(JobEvent.job_id)).all())
    # When each ended: its terminal event, not updated_at (registering the best trial writes its row later).
    terminal = [st.value for st in JobStatus if st.is_terminal()]
    ended = dict(session.execute(select(JobEvent.job_id, func.max(JobEvent.at)).where(
        JobEvent.job_id.in_(ids), JobEvent.to_status.in_(terminal)).group_by(JobEvent.job_id)).all())
    out = []
    for c in children:
        result = c.result or {}
        metrics = result.get("metrics") or {}
        end = (ended.get(c.id) or c.updated_at) if JobStatus(c.status).is_terminal() else utcnow()
        t0 = started.get(c.id)
        if t0 is not None and t0.tzinfo is None and end.tzinfo is not None:
            end = end.replace(tzinfo=None)
        out.append(TrialView(job_id=c.id, trial=result.get("sweep_trial"), params=result.get("params") or {},
                             status=c.status, eval_loss=metrics.get("eval_loss", losses.get(c.id)),
                             score=metrics.get("exact_match"), registered=result.get("model"),
                             wall_s=round((end - t0).total_seconds(), 1) if t0 is not None else None))
    return out


def metrics_by_key(session: Session, job_id: int) -> dict[str, list[MetricPoint]]:
    """``job_metrics`` rows as one series per key (chart-ready), ordered by attempt then step."""
    get_job(session, job_id)
    rows = session.scalars(select(JobMetric).where(JobMetric.job_id == job_id)
                           .order_by(JobMetric.key, JobMetric.attempt, JobMetric.step, JobMetric.id))
    series: dict[str, list[MetricPoint]] = {}
    for m in rows:
        series.setdefault(m.key, []).append(MetricPoint(step=m.step, value=m.value, attempt=m.attempt, at=m.at))
    return series
