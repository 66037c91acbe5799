"""Follow a job until it is done: its status changes, its progress in steps, and the Ray logs of
each attempt. One generator feeds both ``GET /api/jobs/{id}/logs?follow=true`` (as Server-Sent
Events) and ``studio jobs logs --follow`` / ``studio train submit --follow`` (as terminal output).

It polls (the database and Ray's log endpoint) instead of holding Ray's log websocket: a job spans
several Ray submissions when it retries, and status and progress come from the database anyway.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from studio.jobs import ray_jobs
from studio.jobs.queue import get_job, latest_step, total_steps
from studio.jobs.status import JobStatus, will_retry
from studio.settings import StudioSettings
from studio.store.db import session_scope
from studio.store.models import Job, JobEvent

if TYPE_CHECKING:
    from ray.job_submission import JobSubmissionClient


@dataclass
class FollowEvent:
    kind: str  # status | progress | log | end
    data: dict[str, Any]

    def sse(self) -> str:
        return f"event: {self.kind}\ndata: {json.dumps(self.data)}\n\n"


def is_done(job: Job) -> bool:
    """Nothing more will happen: terminal, and not a FAILED job the scheduler will retry."""
    return JobStatus(job.status).is_terminal() and not will_retry(job)


@dataclass
class _Snapshot:
    events: list[dict[str, Any]]  # status changes since the last snapshot, oldest first
    last_event_id: int
    status: str
    attempt: int
    sid: str | None
    error: str | None
    step: int | None
    total: int | None
    done: bool


def _snapshot(settings: StudioSettings, job_id: int, after_event_id: int) -> _Snapshot:
    with session_scope(settings.db_url) as s:
        job = get_job(s, job_id)
        rows = list(s.scalars(select(JobEvent).where(JobEvent.job_id == job_id, JobEvent.id > after_event_id)
                              .order_by(JobEvent.id)))
        # Every transition, not just the status now: a tiny run passes several in one poll.
        events = [{"status": e.to_status, "from": e.from_status, "reason": e.reason, "at": e.at.isoformat()}
                  for e in rows]
        return _Snapshot(events, rows[-1].id if rows else after_event_id, job.status, job.attempts,
                         job.ray_submission_id, job.error, latest_step(s, job), total_steps(job), is_done(job))


class _LogReader:
    """New complete lines of one submission's log since the last read."""

    def __init__(self, client: JobSubmissionClient, sid: str):
        self.client, self.sid, self.offset = client, sid, 0

    def read(self, final: bool = False) -> list[str]:
        text = ray_jobs.job_logs(self.client, self.sid)
        new = text[self.offset:]
        if not final:  # keep a half-written last line for the next read
            new = new[: new.rfind("\n") + 1]
        self.offset += len(new)
        return new.splitlines()

    def settle(self, wait_s: float = 10.0) -> None:
        """Wait (briefly) for the process to exit, so the last lines it prints are read too."""
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            info = ray_jobs.job_info(self.client, self.sid)
            if info is None or info.status.is_terminal():
                return
            time.sleep(0.5)


def follow_job(settings: StudioSettings, job_id: int, *,
               logs_client: Callable[[], JobSubmissionClient] | None = None,
               interval_s: float = 1.0) -> Iterator[FollowEvent]:
    """Yield events until the job is done. ``logs_client`` (a factory, called when the first
    attempt is on Ray) adds the attempts' log lines; without it only the database is read."""
    last_event_id, last_step, attempt = 0, None, 0
    reader: _LogReader | None = None
    client: JobSubmissionClient | None = None
    while True:
        now = _snapshot(settings, job_id, last_event_id)
        last_event_id = now.last_event_id
        for event in now.events:
            attempt += event["status"] == JobStatus.STARTING  # each attempt begins with STARTING
            yield FollowEvent("status", {**event, "attempt": attempt})
        if now.step is not None and now.step != last_step:
            last_step = now.step
            yield FollowEvent("progress", {"step": now.step, "total": now.total})
        if logs_client is not None and now.sid:
            if reader is None or reader.sid != now.sid:
                client = client or logs_client()
                if reader is not None:  # the attempt changed: the rest of the previous one first
                    yield from (FollowEvent("log", {"line": x, "sid": reader.sid}) for x in reader.read(final=True))
                reader = _LogReader(client, now.sid)
            if now.done:
                reader.settle()
            yield from (FollowEvent("log", {"line": x, "sid": reader.sid}) for x in reader.read(final=now.done))
        if now.done:
            yield FollowEvent("end", {"status": now.status, "error": now.error, "attempts": now.attempt})
            return
        time.sleep(interval_s)
