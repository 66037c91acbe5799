"""``JobDriver``: what every job entrypoint (training, eval, synthesis) does with its own row, in one
place. The scheduler submits ``python -m <entrypoint> --job-id N`` as a Ray Job; the driver

1. **checks** the row: it exists, is of the entrypoint's kind, and is startable (QUEUED, RETRYING,
   or STARTING when the scheduler claimed it) — else a refusal that names how to start a new one;
2. **claims** it: STARTING (attempt + 1, and the Ray Job this process runs as, or none) when
   nobody did (a run by hand, ``ray job submit``), then RUNNING with a message; the claim is the
   first heartbeat;
3. **beats** while the entrypoint runs (``with driver.beating():``): a daemon thread writes
   ``heartbeat_at`` every ``STUDIO_JOB_HEARTBEAT_S``, so the scheduler can tell a job run outside
   Ray whose process died (no Ray record says so) from one still working;
4. **records a cancellation** the scheduler cannot (a run outside Ray has no scheduler stopping
   it; each entrypoint watches ``cancel_requested`` its own way, with its progress writes);
5. **ends** it: SUCCEEDED with the result merged into ``job.result``, or FAILED with a one-line
   reason (unless it already ended: a job cancelled while it ran stays CANCELLED).

Every change goes through ``studio.jobs.status.transition`` (the one place a status changes).
``ray_submission_id()`` is the Ray Job this process runs as, recorded on rows the driver creates.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

from pydantic import BaseModel
from sqlalchemy import update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from studio.errors import NotFound, StudioError
from studio.jobs.status import JobStatus, transition
from studio.settings import StudioSettings
from studio.store.db import session_scope
from studio.store.models import Job, utcnow

logger = logging.getLogger(__name__)

EXIT_FAILED, EXIT_REFUSED = 1, 2  # the entrypoints' exit codes: a failure, a refusal to start
STARTABLE = (JobStatus.QUEUED, JobStatus.RETRYING, JobStatus.STARTING)
BEATING = (JobStatus.STARTING, JobStatus.RUNNING, JobStatus.CHECKPOINTING)  # a process works on it
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
        attempt number. The claim is the first heartbeat."""
        if JobStatus(job.status) is not JobStatus.STARTING:
            transition(session, self.job_id, JobStatus.STARTING, started_by)
            job.attempts += 1
            # This attempt is this process, not a Ray Job an earlier attempt ran as: with no
            # submission id (a run by hand) the scheduler judges it by its heartbeat, not by Ray.
            job.ray_submission_id = ray_submission_id()
        job.attempts = max(job.attempts, 1)
        job.heartbeat_at = utcnow()
        return job.attempts

    def to(self, status: JobStatus, message: str) -> None:
        """One transition in a session of its own."""
        with session_scope(self.db_url) as s:
            transition(s, self.job_id, status, message)

    # -- 3. heartbeat ------------------------------------------------------------------------
    def beat(self) -> bool:
        """``heartbeat_at`` = now while the row is STARTING/RUNNING/CHECKPOINTING (one UPDATE in a
        session of its own; ``updated_at`` stays, a beat is not a change); whether it was written.
        A database that does not answer is logged, never raised: the job goes on, the next beat
        tries again."""
        try:
            with session_scope(self.db_url) as s:
                written = s.execute(
                    update(Job).where(Job.id == self.job_id, Job.status.in_(BEATING))
                    .values(heartbeat_at=utcnow(), updated_at=Job.updated_at)
                    .execution_options(synchronize_session=False)).rowcount
            return written > 0
        except (SQLAlchemyError, StudioError, OSError) as e:
            logger.warning("job %s: heartbeat not recorded (next try in a moment): %s", self.job_id,
                           str(e).splitlines()[0][:300] if str(e) else type(e).__name__)
            return False

    @contextmanager
    def beating(self, every_s: float | None = None) -> Iterator[None]:
        """Beat every ``every_s`` seconds (default ``STUDIO_JOB_HEARTBEAT_S``) from a daemon thread
        while the block runs; the beats stop when it exits. Rows that are not (yet, or any more)
        active are left alone, so the block may start before the claim and end after the job did."""
        every_s = StudioSettings().job_heartbeat_s if every_s is None else every_s
        stop = threading.Event()

        def loop() -> None:
            while not stop.wait(every_s):
                self.beat()

        thread = threading.Thread(target=loop, name=f"studio-job-{self.job_id}-heartbeat", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join(timeout=35)  # a beat in flight waits for the database at most ~30 s

    # -- 4. cancellation ---------------------------------------------------------------------
    def record_cancel(self, message: str) -> bool:
        """CANCELLED when a cancel was asked for and the row has not ended; whether it was."""
        with session_scope(self.db_url) as s:
            job = s.get(Job, self.job_id)
            if job is None or not job.cancel_requested or JobStatus(job.status).is_terminal():
                return False
            transition(s, self.job_id, JobStatus.CANCELLED, message)
            return True

    # -- 5. end ------------------------------------------------------------------------------
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
