"""The job status enum, its transition table, and the one function that changes a job's status."""

from __future__ import annotations

from enum import StrEnum

from sqlalchemy import select
from sqlalchemy.orm import Session

from studio.errors import Conflict, NotFound
from studio.jobs.results import JobResult
from studio.store.models import Job, JobEvent, utcnow


class JobStatus(StrEnum):
    QUEUED = "QUEUED"  # accepted and validated; waiting for the scheduler to submit it
    STARTING = "STARTING"  # submitted to Ray; waiting for resources / the entrypoint to start
    RUNNING = "RUNNING"  # workers are training
    CHECKPOINTING = "CHECKPOINTING"  # saving / registering a checkpoint or the final adapter
    SUCCEEDED = "SUCCEEDED"  # terminal: result registered
    FAILED = "FAILED"  # the last attempt failed; terminal unless retries are left
    RETRYING = "RETRYING"  # waiting out the backoff before the next attempt (resumes from checkpoint)
    CANCELLED = "CANCELLED"  # terminal: stopped on request

    def is_terminal(self) -> bool:
        """No further work happens on its own. FAILED's one exit is RETRYING, taken by the scheduler
        only while the job has retries left (``can_retry``)."""
        return self in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED)


_ACTIVE = (JobStatus.QUEUED, JobStatus.STARTING, JobStatus.RUNNING, JobStatus.CHECKPOINTING, JobStatus.RETRYING)

TRANSITIONS: dict[JobStatus, frozenset[JobStatus]] = {
    JobStatus.QUEUED: frozenset({JobStatus.STARTING, JobStatus.FAILED, JobStatus.CANCELLED}),
    JobStatus.STARTING: frozenset({JobStatus.RUNNING, JobStatus.FAILED, JobStatus.CANCELLED}),
    JobStatus.RUNNING: frozenset({JobStatus.CHECKPOINTING, JobStatus.FAILED, JobStatus.CANCELLED}),
    JobStatus.CHECKPOINTING: frozenset(
        {JobStatus.RUNNING, JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED}
    ),
    JobStatus.FAILED: frozenset({JobStatus.RETRYING}),
    JobStatus.RETRYING: frozenset({JobStatus.STARTING, JobStatus.FAILED, JobStatus.CANCELLED}),
    JobStatus.SUCCEEDED: frozenset(),
    JobStatus.CANCELLED: frozenset(),
}


class IllegalTransition(Conflict):
    pass


def is_active(status: str) -> bool:
    return JobStatus(status) in _ACTIVE


def can_retry(job: Job) -> bool:
    return job.status == JobStatus.FAILED.value and not job.cancel_requested and job.attempts <= job.max_retries


def will_retry(job: Job) -> bool:
    """The scheduler's retry decision: ``can_retry``, unless the entrypoint marked the failure as
    one a retry cannot fix (``result.error.retryable: false``, e.g. a preflight refusal)."""
    error = JobResult.of(job).error
    return can_retry(job) and not (error is not None and error.retryable is False)


def transition(session: Session, job_id: int, to: JobStatus | str, reason: str) -> Job:
    """Move a job to ``to`` and record the event, or raise ``IllegalTransition``.

    The row is locked (``SELECT … FOR UPDATE`` where the database has it) so the scheduler and the
    training entrypoint cannot both move the same job from the same state.
    """
    to = JobStatus(to)
    job = session.scalars(select(Job).where(Job.id == job_id).with_for_update()).first()
    if job is None:
        raise NotFound(f"job {job_id} does not exist", "see `studio jobs ls`")
    current = JobStatus(job.status)
    if to not in TRANSITIONS[current]:
        raise IllegalTransition(
            f"job {job_id} cannot go from {current} to {to}",
            f"allowed from {current}: {', '.join(sorted(TRANSITIONS[current])) or 'nothing (terminal)'}",
        )
    session.add(JobEvent(job_id=job_id, from_status=current.value, to_status=to.value, reason=reason[:4096]))
    job.status = to.value
    job.updated_at = utcnow()
    if to is JobStatus.FAILED:
        job.error = reason[:4096]
    session.flush()
    return job


def create_job(session: Session, *, name: str, spec: dict, max_retries: int, submitted_by: str | None,
               kind: str = "train", owner_key_id: int | None = None) -> Job:
    job = Job(kind=kind, name=name, spec=spec, status=JobStatus.QUEUED.value, attempts=0,
              max_retries=max_retries, submitted_by=submitted_by, result={}, owner_key_id=owner_key_id)
    session.add(job)
    session.flush()
    session.add(JobEvent(job_id=job.id, from_status=None, to_status=JobStatus.QUEUED.value,
                         reason=f"submitted by {submitted_by or 'unknown'}"))
    session.flush()
    return job
