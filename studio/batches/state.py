"""A batch's status: what the row says, and what its job says when the job ended without the
runner writing it (it died for good, or it was cancelled through the jobs API).

```
  POST /v1/batches        runner claims          every line done        output files written
  validating ───────────► in_progress ─────────► finalizing ──────────► completed
      │                       │   │  past expires_at (24 h): lines not run → error file ► expired
      │ cancel (not running)  │   └─ cancel: cancelling ─► (in-flight lines finish) ─► cancelled
      └──────────────► cancelled          the job FAILED with no retry left ─────────► failed
```

| status | meaning | who moves it on |
|---|---|---|
| `validating` | queued: the file passed the file-level checks; the job waits for the scheduler | the runner → in_progress; cancel → cancelled at once |
| `in_progress` | lines run; `request_counts` grow | the runner → finalizing; cancel → cancelling |
| `finalizing` | writing the output and error files | the runner → completed / expired / cancelled |
| `completed` | every line answered or refused (the refused ones, a budget run out included, are in the error file and counted `failed`) | — |
| `expired` | not done within `completion_window` (24 h of creation); lines never run are `batch_expired` entries | — |
| `cancelling` | cancel asked while a runner holds it: no new lines start | the runner → cancelled, with the partial output |
| `cancelled` | stopped on request; files hold what finished | — |
| `failed` | the job ended FAILED with no retry left (`errors` has its reason) | — |

A retried attempt (the scheduler retries FAILED jobs) resumes: lines in ``batch_results`` are
not run again.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from studio.errors import Conflict
from studio.jobs.status import JobStatus, transition, will_retry
from studio.store.models import Batch, Job, utcnow

TERMINAL = ("failed", "completed", "expired", "cancelled")
RUNNER_HOLDS = (JobStatus.STARTING, JobStatus.RUNNING, JobStatus.CHECKPOINTING)


def effective_status(session: Session, batch: Batch, job: Job | None = None
                     ) -> tuple[str, list[dict[str, Any]] | None, datetime | None]:
    """(status, errors, when) of ``batch``: the row's, unless its job ended without the runner
    recording the end (then ``failed`` with the job's reason, or ``cancelled``)."""
    if batch.status in TERMINAL:
        return batch.status, None, None
    job = job if job is not None else session.get(Job, batch.job_id)
    if job is None:
        return batch.status, None, None
    status = JobStatus(job.status)
    if status is JobStatus.CANCELLED:
        return "cancelled", None, job.updated_at
    if status is JobStatus.FAILED and not will_retry(job):
        reason = (job.error or "the batch job failed").splitlines()[0][:2000]
        return "failed", [{"code": "job_failed", "message": f"{reason} (studio job {job.id}: "
                           f"`studio jobs show {job.id}`)"}], job.updated_at
    return batch.status, None, None


def locked(session: Session, batch_id: str) -> Batch | None:
    return session.scalars(select(Batch).where(Batch.id == batch_id).with_for_update()).first()


def request_cancel(session: Session, batch: Batch, by: str) -> bool:
    """Cancel ``batch``. Nothing runs it (its job is queued, waiting to retry or failed): the job
    is cancelled and the batch too, now — True, the caller then writes its files. A runner holds
    it: ``cancelling``, and the runner stops taking lines, lets those in flight finish and writes
    the files. Ended batches: 409."""
    status = effective_status(session, batch)[0]
    if status in TERMINAL:
        raise Conflict(f"batch {batch.id} is already {status}; there is nothing to cancel",
                       "cancel a batch that is validating or in_progress")
    if status == "cancelling":
        return False
    if status == "finalizing":
        raise Conflict(f"batch {batch.id} is finalizing: every line has run and its files are being "
                       "written", f"read it in a moment (GET /v1/batches/{batch.id})")
    job = session.scalars(select(Job).where(Job.id == batch.job_id).with_for_update()).one()
    job_status = JobStatus(job.status)
    batch.status, batch.cancelling_at = "cancelling", utcnow()
    if job_status in RUNNER_HOLDS:
        # Not job.cancel_requested: the scheduler would stop the Ray job at once, and the lines
        # in flight and the partial output with it. The runner watches the batch row instead.
        return False
    if job_status is JobStatus.FAILED:
        job.cancel_requested = True  # no retry: nothing will run it again
    elif not job_status.is_terminal():  # QUEUED, RETRYING
        job.cancel_requested = True
        transition(session, job.id, JobStatus.CANCELLED, f"batch {batch.id} cancelled by {by} "
                   "before it ran")
    session.flush()
    return True
