"""``JobDriver``: what every job entrypoint (training, eval, synthesis) does with its own row, in one
place. The scheduler submits ``python -m <entrypoint> --job-id N`` as a Ray Job; the driver

1. **checks** the row: it exists, is of the entrypoint's kind, and is startable (QUEUED, RETRYING,
   or STARTING when the scheduler claimed it) — else a refusal that names how to start a new one;
2. **claims** it: STARTING (attempt + 1) when nobody did (a run by hand, ``ray job submit``), then
   RUNNING with a message;
3. **records a cancellation** the scheduler cannot (a run outside Ray has no scheduler stopping
   it; each entrypoint watches ``cancel_requested`` its own way, with its progress writes);
4. **ends** it: SUCCEEDED with the result merged into ``job.result``, or FAILED with a one-line
   reason (unless it already ended: a job cancelled while it ran stays CANCELLED).

Every change goes through ``studio.jobs.status.transition`` (the one place a status changes).
``ray_submission_id()`` is the Ray Job this process runs as, recorded on rows the driver creates.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any, TypeVar

from pydantic import BaseModel
from sqlalchemy.orm import Session

from studio.errors import NotFound, StudioError
from studio.jobs.status import JobStatus, transition
from studio.store.db import session_scope
from studio.store.models import Job

EXIT_FAILED, EXIT_REFUSED = 1, 2  # the entrypoints' exit codes: a failure, a refusal to start
STARTABLE = (JobStatus.QUEUED, JobStatus.RETRYING, JobStatus.STARTING)
SpecT = TypeVar("SpecT", bound=BaseModel)


def ray_submission_id() -> str | None:
    """The Ray Job's submission id when this process runs as one (Ray passes its metadata in env)."""
    raw = os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR")
    try:
        return (json.loads(raw).get("metadata") or {}).get("job_submission_id") if raw else None
    except (ValueError, AttributeError):
        return None


@dataclass(frozen=True)
class JobDriver:
    """One job row, seen from the process that runs it. ``noun`` names it in messages ("job",
    "eval", "synthesis job"); ``listing`` is the command that lists them; ``start_new`` says how to
    start a new one."""

    db_url: str
    job_id: int
    kind: str
    noun: str = "job"
    listing: str = "studio jobs ls"
    start_new: str = "submit a new job, or let the scheduler retry a failed one"

    # -- 1. check ----------------------------------------------------------------------------
    def check(self, session: Session) -> Job:
        """The row, when it is this kind's and startable; else ``NotFound`` / ``StudioError``."""
        job = session.get(Job, self.job_id)
        if job is None or job.kind != self.kind:
            raise NotFound(f"{self.noun} {self.job_id} does not exist", f"see `{self.listing}`")
        status = JobStatus(job.status)
        if status not in STARTABLE:
            raise StudioError(f"{self.noun} {self.job_id} is {status}; only a QUEUED, RETRYING or "
                              f"STARTING {self.noun} can start", self.start_new)
        return job

    def load(self, spec_model: type[SpecT]) -> tuple[SpecT, JobStatus]:
        """The row's spec (validated as ``spec_model``) and status, after ``check``."""
        with session_scope(self.db_url) as s:
            job = self.check(s)
            return spec_model.model_validate(job.spec), JobStatus(job.status)

    # -- 2. claim ----------------------------------------------------------------------------
    def claim(self, session: Session, job: Job, started_by: str) -> int:
        """STARTING (and one more attempt) unless the scheduler already moved it there; the
        attempt number."""
        if JobStatus(job.status) is not JobStatus.STARTING:
            transition(session, self.job_id, JobStatus.STARTING, started_by)
            job.attempts += 1
        job.attempts = max(job.attempts, 1)
        return job.attempts

    def to(self, status: JobStatus, message: str) -> None:
        """One transition in a session of its own."""
        with session_scope(self.db_url) as s:
            transition(s, self.job_id, status, message)

    # -- 3. cancellation ---------------------------------------------------------------------
    def record_cancel(self, message: str) -> bool:
        """CANCELLED when a cancel was asked for and the row has not ended; whether it was."""
        with session_scope(self.db_url) as s:
            job = s.get(Job, self.job_id)
            if job is None or not job.cancel_requested or JobStatus(job.status).is_terminal():
                return False
            transition(s, self.job_id, JobStatus.CANCELLED, message)
            return True

    # -- 4. end ------------------------------------------------------------------------------
    def succeed(self, result: dict[str, Any], message: str, *, merge: bool = True) -> None:
        """``result`` merged into ``job.result`` (or replacing it: ``merge=False``, so an earlier
        attempt's error does not outlive a success), then SUCCEEDED (from CHECKPOINTING)."""
        with session_scope(self.db_url) as s:
            job = s.get(Job, self.job_id)
            job.result = {**(job.result or {}), **result} if merge else dict(result)
            transition(s, self.job_id, JobStatus.SUCCEEDED, message)

    def fail(self, reason: str, **result: Any) -> bool:
        """FAILED with ``reason`` (``result`` merged into ``job.result``), unless the row already
        ended (e.g. CANCELLED while this ran); whether it was failed here."""
        with session_scope(self.db_url) as s:
            job = s.get(Job, self.job_id)
            if job is None or JobStatus(job.status).is_terminal():
                return False
            if result:
                job.result = {**(job.result or {}), **result}
            transition(s, self.job_id, JobStatus.FAILED, reason)
            return True
