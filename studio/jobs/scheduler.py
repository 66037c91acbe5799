"""The reconcile loop: the ``jobs`` table ⇄ Ray Jobs.

``reconcile_once(settings, client)`` looks at the database and at Ray, and moves every job one step
towards where it should be. It keeps no state of its own between calls — the database and Ray's
record of each deterministic submission id (``studio-job-{id}-a{attempt}``) are the whole truth — so
a scheduler that restarts, or two that briefly overlap during a redeploy, lose and duplicate nothing:

1. cancel   cancel_requested + QUEUED/STARTING/RUNNING/CHECKPOINTING/RETRYING → CANCELLED; a Ray job
            of the attempt is stopped while the row is still locked, so the dying entrypoint cannot
            record FAILED over the cancel.
2. poll     STARTING/RUNNING/CHECKPOINTING: Ray says FAILED/STOPPED/SUCCEEDED but the row is still
            active → the process died without recording: FAILED with the tail of its logs. Ray has
            no record of a STARTING attempt → the submit was lost (crash between commit and
            submit, or a new cluster): submit it again under the same id.
2b. silent  STARTING/RUNNING/CHECKPOINTING with no submission id (a driver run by hand or in the
            submitting process: no Ray record will ever say it ended) whose heartbeat (``heartbeat_at``,
            written by ``JobDriver.beating``; ``updated_at`` if it never beat) is older than
            ``heartbeat_timeout_s`` → its process died: FAILED naming the last beat, so step 3
            retries it. A beat that lands meanwhile wins (the row is taken only while still silent).
3. retry    FAILED + ``will_retry`` → RETRYING, ``next_attempt_at`` = now + backoff (doubling).
4. start    RETRYING whose time has come, then QUEUED (oldest first) → STARTING: attempts += 1, the
            row is committed first, then ``submit_job`` — "already exists" means an earlier
            scheduler got there first, and the submission is adopted. A QUEUED row that already
            has a submission id belongs to a driver on Ray (``ray job submit … --recipe``): polled
            and cancellable, never started.
5. after    SUCCEEDED training job whose recipe has ``after_training``: its auto-eval is queued (an
            eval job, started by the next pass), then the version promoted through the gate or the
            refusal recorded in ``result.after_training``, by the hook the JobScheduler deployment
            hands in (``studio.evals.gate.advance_after_training``; without one, no step 5).
6. keys     every submission gets a key derived from its submitter's (``studio.keys.create_job_key``:
            same role and limits, expiring after ``job_key_ttl_h``) in STUDIO_API_KEY, never the
            admin key; the keys of jobs no longer on Ray are revoked each pass.

Rows with a submission id are judged by Ray alone (step 2), whatever their heartbeat says.
Everything the training run does in between (STARTING → RUNNING ⇄ CHECKPOINTING → SUCCEEDED, or
FAILED on a Python error) is recorded by the entrypoint itself, ``python -m studio.train.run --job-id N``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import requests
from sqlalchemy import func, select, update
from sqlalchemy.exc import SQLAlchemyError

from studio.errors import StudioError
from studio.jobs import ray_jobs
from studio.jobs.status import JobStatus, transition, will_retry
from studio.jobs.submission import (SchedulerConfig, entrypoint, entrypoint_module, job_runtime_env,
                                    submitter_key)
from studio.keys import create_job_key, revoke_job_keys, revoke_key_id
from studio.settings import StudioSettings
from studio.store.db import session_scope
from studio.store.models import Job, utcnow

if TYPE_CHECKING:
    from ray.job_submission import JobSubmissionClient

logger = logging.getLogger(__name__)
# (session, a SUCCEEDED training job[, models_available=]) -> its new after_training state, or None
AfterTraining = Callable[..., dict[str, Any] | None]

ON_RAY = (JobStatus.STARTING, JobStatus.RUNNING, JobStatus.CHECKPOINTING)
CANCELLABLE = (JobStatus.QUEUED, *ON_RAY, JobStatus.RETRYING)
POLLED = (JobStatus.QUEUED, *ON_RAY)  # QUEUED: only rows a driver on Ray created (see below)


@dataclass
class TickReport:
    """What one pass did: submission ids submitted or adopted, job ids moved, and per-job errors
    (left for the next pass to retry)."""

    submitted: list[str] = field(default_factory=list)
    adopted: list[str] = field(default_factory=list)
    failed: list[int] = field(default_factory=list)
    retrying: list[int] = field(default_factory=list)
    cancelled: list[int] = field(default_factory=list)
    after_training: list[int] = field(default_factory=list)  # SUCCEEDED jobs whose auto-eval moved on
    keys_revoked: int = 0  # job keys of jobs no longer on Ray
    errors: list[str] = field(default_factory=list)

    def changed(self) -> bool:
        return any((self.submitted, self.adopted, self.failed, self.retrying, self.cancelled, self.after_training,
                    self.errors))


# A pass must not stop at one bad job: Ray or the database may be briefly unreachable, or the
# entrypoint may move a job between our read and our write (IllegalTransition is a StudioError).
_PER_JOB_ERRORS = (RuntimeError, ConnectionError, requests.RequestException, SQLAlchemyError, StudioError)


def reconcile_once(settings: StudioSettings, client: JobSubmissionClient, config: SchedulerConfig | None = None,
                   *, now: datetime | None = None, models_available=None,
                   after_training: AfterTraining | None = None) -> TickReport:
    """One pass. ``after_training``: the step-5 hook (``studio.evals.gate.advance_after_training``,
    handed in by the JobScheduler deployment; None skips step 5), so jobs, the lowest service,
    knows nothing of evals."""
    config = config or SchedulerConfig()
    now = now or utcnow()
    report = TickReport()

    def each(ids: list[int], step) -> None:
        for job_id in ids:
            try:
                step(job_id)
            except _PER_JOB_ERRORS as e:
                report.errors.append(f"job {job_id}: {type(e).__name__}: {str(e).splitlines()[0][:300]}")
                logger.warning("scheduler: job %s: %s", job_id, e)

    ctx = _Pass(settings, client, config, now, report, models_available, after_training)
    each(_ids(settings, Job.cancel_requested.is_(True), Job.status.in_(CANCELLABLE)), ctx.cancel)
    each(_ids(settings, Job.status.in_(POLLED), Job.ray_submission_id.is_not(None)), ctx.poll)
    each(_ids(settings, *_silent(now - timedelta(seconds=config.heartbeat_timeout_s))), ctx.silent)
    each(_ids(settings, Job.status == JobStatus.FAILED, Job.cancel_requested.is_(False),
              Job.attempts <= Job.max_retries), ctx.schedule_retry)
    each(_ids(settings, Job.status == JobStatus.RETRYING, Job.cancel_requested.is_(False)),
         lambda i: ctx.start(i, JobStatus.RETRYING))
    # A QUEUED row with a submission id was made by a driver already on Ray (`ray job submit --
    # python -m studio.train.run --recipe …`, which claims it itself): never start it twice.
    each(_ids(settings, Job.status == JobStatus.QUEUED, Job.cancel_requested.is_(False),
              Job.ray_submission_id.is_(None)), lambda i: ctx.start(i, JobStatus.QUEUED))
    # 5. after training: a SUCCEEDED training job whose recipe has `after_training` gets its
    # auto-eval queued (started by the next pass) and, once that eval is done, its auto-promotion.
    if after_training is not None:
        each(_after_training_ids(settings), ctx.after_training)
    # 6. keys: a job that left Ray (ended, failed, waiting to retry) holds no live key.
    try:
        with session_scope(settings.db_url) as s:
            on_ray = select(Job.id).where(Job.status.in_(ON_RAY))
            report.keys_revoked = revoke_job_keys(s, unless_job_in=on_ray)
    except SQLAlchemyError as e:
        report.errors.append(f"revoking job keys: {type(e).__name__}: {str(e).splitlines()[0][:300]}")
    return report


def _ids(settings: StudioSettings, *where) -> list[int]:
    with session_scope(settings.db_url) as s:
        return list(s.scalars(select(Job.id).where(*where).order_by(Job.id)))


def _silent(cutoff: datetime) -> tuple:
    """A job run outside Ray (no submission id) whose process last beat before ``cutoff``."""
    return (Job.status.in_(ON_RAY), Job.ray_submission_id.is_(None), Job.cancel_requested.is_(False),
            func.coalesce(Job.heartbeat_at, Job.updated_at) < cutoff)


def _after_training_ids(settings: StudioSettings, newest: int = 200) -> list[int]:
    """SUCCEEDED training jobs (of the newest ``newest``) whose ``after_training`` is not done.
    Only the two small JSON members are read, not whole specs."""
    with session_scope(settings.db_url) as s:
        rows = s.execute(select(Job.id, Job.spec["after_training"], Job.result["after_training"])
                         .where(Job.kind == "train", Job.status == JobStatus.SUCCEEDED)
                         .order_by(Job.id.desc()).limit(newest)).all()
    return sorted(i for i, want, state in rows if want and not (isinstance(state, dict) and state.get("done")))


@dataclass
class _Pass:
    settings: StudioSettings
    client: JobSubmissionClient
    config: SchedulerConfig
    now: datetime
    report: TickReport
    models_available: Any = None  # () -> served model names; None: asked over HTTP (the CLI's way)
    after_training_hook: AfterTraining | None = None

    def cancel(self, job_id: int) -> None:
        with session_scope(self.settings.db_url) as s:
            job = s.get(Job, job_id)
            if job is None or not job.cancel_requested or JobStatus(job.status) not in CANCELLABLE:
                return
            sid = job.ray_submission_id if JobStatus(job.status) in POLLED else None
            transition(s, job_id, JobStatus.CANCELLED, f"cancelled on request while {job.status}"
                       + (f"; Ray job {sid} stopped" if sid else ""))
            if sid:
                # Inside the transaction on purpose: the row stays locked (PostgreSQL row lock,
                # SQLite write lock) until Ray has the stop, so the entrypoint, killed mid-write,
                # finds CANCELLED and cannot record FAILED over it. If Ray does not answer, the
                # rollback keeps the request for the next pass.
                ray_jobs.stop(self.client, sid)
        self.report.cancelled.append(job_id)

    def poll(self, job_id: int) -> None:
        with session_scope(self.settings.db_url) as s:
            sid = s.get(Job, job_id).ray_submission_id
        # Ask Ray first, then re-read the row: an entrypoint commits its last state before it
        # exits, so a row still active after Ray reports the end really was left behind.
        info = ray_jobs.job_info(self.client, sid)
        ended = info is not None and info.status.is_terminal()
        logs = ray_jobs.tail(ray_jobs.job_logs(self.client, sid)) if ended else ""
        resubmit = False
        with session_scope(self.settings.db_url) as s:
            job = s.get(Job, job_id)
            if JobStatus(job.status) not in POLLED or job.ray_submission_id != sid:
                return
            ours = sid == ray_jobs.submission_id(job_id, job.attempts)
            if info is None and job.status == JobStatus.STARTING and ours:
                resubmit = True
            elif info is None:
                transition(s, job_id, JobStatus.FAILED,
                           f"Ray has no record of {sid} while the job was {job.status}: the Ray "
                           "cluster was restarted or the job deleted, and the run is lost")
            elif ended:
                if info.status == "STOPPED":
                    # Stopped outside the studio (`ray job stop`): honour it as a cancel, no retries.
                    job.cancel_requested = True
                ray_said = (info.message or "").strip().splitlines()[:1]
                what = ("exited 0 without recording SUCCEEDED" if info.status == "SUCCEEDED"
                        else f"ended {info.status}: {ray_said[0] if ray_said else 'no message'}")
                transition(s, job_id, JobStatus.FAILED,
                           f"Ray job {sid} {what} (job was {job.status})\n--- last log lines ---\n{logs}")
            if JobStatus(job.status) is JobStatus.FAILED:
                self.report.failed.append(job_id)
        if resubmit:
            self._submit(job_id, sid, lost=True)

    def silent(self, job_id: int) -> None:
        timeout = self.config.heartbeat_timeout_s
        with session_scope(self.settings.db_url) as s:
            # One conditional UPDATE takes the row (PostgreSQL: its lock, re-checked after a beat in
            # flight commits; SQLite: the write lock) only while it is still silent: a beat that
            # lands between the listing and here keeps the job alive.
            taken = s.execute(update(Job).where(Job.id == job_id, *_silent(self.now - timedelta(seconds=timeout)))
                              .values(heartbeat_at=Job.heartbeat_at, updated_at=Job.updated_at)
                              .execution_options(synchronize_session=False)).rowcount
            if not taken:
                return
            job = s.get(Job, job_id)
            last, what = ((job.heartbeat_at, "its last heartbeat was") if job.heartbeat_at is not None
                          else (job.updated_at, "it never beat; its last change was"))
            again = f"`python -m {entrypoint_module(self.config, job.kind)} --job-id {job_id}`"
            todo = (f"the scheduler retries it (attempt {job.attempts + 1} of {job.max_retries + 1}); to run it "
                    f"by hand instead, run {again} while it is RETRYING" if job.attempts <= job.max_retries
                    else f"it is a trial of sweep {job.parent_id}, whose retry runs it again"
                    if job.parent_id is not None else "it has no retries left: submit it again")
            transition(s, job_id, JobStatus.FAILED,
                       f"the driver stopped beating: {what} at {last.isoformat(timespec='seconds')} "
                       f"({(self.now - last).total_seconds():.0f} s ago, heartbeat_timeout_s {timeout:g}) while "
                       f"{job.status}, and it runs outside Ray, so its process was killed or its machine lost; "
                       f"{todo}")
        self.report.failed.append(job_id)

    def schedule_retry(self, job_id: int) -> None:
        with session_scope(self.settings.db_url) as s:
            job = s.get(Job, job_id)
            if not will_retry(job):
                return
            delay = min(self.config.retry_backoff_max_s,
                        self.config.retry_backoff_s * 2 ** max(job.attempts - 1, 0))
            resume = (f", resuming from {job.checkpoint_uri}" if job.checkpoint_uri
                      else ", from the start (no checkpoint yet)")
            transition(s, job_id, JobStatus.RETRYING,
                       f"attempt {job.attempts} failed; attempt {job.attempts + 1} of {job.max_retries + 1} "
                       f"in {delay:g} s{resume}")
            job.next_attempt_at = self.now + timedelta(seconds=delay)
        self.report.retrying.append(job_id)

    def start(self, job_id: int, expected: JobStatus) -> None:
        with session_scope(self.settings.db_url) as s:
            job = s.get(Job, job_id)
            if job.status != expected.value or job.cancel_requested:
                return
            if job.next_attempt_at is not None and job.next_attempt_at > self.now:
                return
            if self.config.max_concurrent_jobs is not None:
                on_ray = s.scalar(select(func.count()).select_from(Job).where(Job.status.in_(ON_RAY)))
                if on_ray >= self.config.max_concurrent_jobs:
                    return
            previous = job.ray_submission_id
        if previous:
            # Never two attempts at once (they would share checkpoints): an entrypoint that
            # recorded FAILED may still be exiting.
            info = ray_jobs.job_info(self.client, previous)
            if info is not None and not info.status.is_terminal():
                ray_jobs.stop(self.client, previous)
                return
        with session_scope(self.settings.db_url) as s:
            job = s.get(Job, job_id)
            if job.status != expected.value or job.cancel_requested:
                return  # cancelled while we looked at Ray
            attempt = job.attempts + 1
            sid = ray_jobs.submission_id(job_id, attempt)
            resume = f", resuming from {job.checkpoint_uri}" if job.checkpoint_uri else ""
            transition(s, job_id, JobStatus.STARTING, f"attempt {attempt}: submitting Ray job {sid}{resume}")
            # A new attempt: the last one's error stays in its FAILED event, not on the job.
            job.attempts, job.ray_submission_id, job.next_attempt_at, job.error = attempt, sid, None, None
        self._submit(job_id, sid)

    def after_training(self, job_id: int) -> None:
        kwargs = {"models_available": self.models_available} if self.models_available else {}
        with session_scope(self.settings.db_url) as s:
            state = self.after_training_hook(s, s.get(Job, job_id), **kwargs)
            if state is not None:
                self.report.after_training.append(job_id)
                logger.info("scheduler: job %s after training: %s", job_id, state.get("reason"))

    def _submit(self, job_id: int, sid: str, lost: bool = False) -> None:
        """Submit the attempt the row already records. Runs after that row is committed, so a
        crash in between leaves a STARTING job whose id Ray does not know — `poll` resubmits it."""
        with session_scope(self.settings.db_url) as s:
            job = s.get(Job, job_id)
            kind, by, submitter = job.kind, job.submitted_by, submitter_key(s, job)
            key = (create_job_key(s, submitter, job_id, timedelta(hours=self.config.job_key_ttl_h))
                   if submitter is not None else None)
        if key is None:
            logger.warning("scheduler: job %s has no live submitter key (submitted by %s): it runs "
                           "without a studio key, and its gateway calls are refused", job_id, by)
        try:
            self.client.submit_job(entrypoint=entrypoint(self.config, job_id, kind), submission_id=sid,
                                   runtime_env=job_runtime_env(self.settings, self.config, job_id,
                                                               key[0] if key else None),
                                   metadata={"studio_job_id": str(job_id)})
        except (RuntimeError, ValueError, TypeError) as e:
            # ValueError/TypeError: the client rejected the runtime_env before sending anything.
            if isinstance(e, RuntimeError) and ray_jobs.already_submitted(e):
                # The running submission holds the key an earlier pass made; this one is unused.
                if key is not None:
                    with session_scope(self.settings.db_url) as s:
                        revoke_key_id(s, key[1].id)
                self.report.adopted.append(sid)
                return
            if isinstance(e, RuntimeError) and not ray_jobs.refused(e):
                # 5xx ("No available agent to submit job, please try again later" while the head
                # warms up) or no answer: the row stays STARTING with an id Ray does not know,
                # and the next pass's poll submits it again.
                raise
            # Refused (4xx, or a runtime_env the client rejects): sending it again cannot help.
            with session_scope(self.settings.db_url) as s:
                job = s.get(Job, job_id)
                if job.status == JobStatus.STARTING and job.ray_submission_id == sid:
                    transition(s, job_id, JobStatus.FAILED, f"Ray refused submission {sid}: {str(e)[:2000]}")
                    self.report.failed.append(job_id)
            return
        self.report.submitted.append(sid)
        if lost:
            logger.info("scheduler: resubmitted %s (Ray had no record of it)", sid)
