"""Follow a job until it is done: its status changes, its progress (``Progress``), and the Ray logs of
each attempt. One poller (``JobPoller``) feeds both ``GET /api/jobs/{id}/logs?follow=true`` (as Server-Sent
Events, through the async loop) and ``studio jobs logs --follow`` / ``studio train submit --follow``
(as terminal output, through the blocking one); eval and synth streams use the same two loops.

It polls (the database and Ray's log endpoint) instead of holding Ray's log websocket: a job spans
several Ray submissions when it retries, and status and progress come from the database anyway.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from sqlalchemy import select

from studio.jobs import ray_jobs
from studio.jobs.progress import job_progress
from studio.jobs.queue import get_job
from studio.jobs.status import JobStatus, will_retry
from studio.jobs.views import Progress
from studio.settings import StudioSettings
from studio.store.db import session_scope
from studio.store.models import Job, JobEvent

if TYPE_CHECKING:
    from ray.job_submission import JobSubmissionClient

T = TypeVar("T", covariant=True)


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
    progress: Progress | None
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
                         job.ray_submission_id, job.error, job_progress(s, job), is_done(job))


class _LogReader:
    """New complete lines of one submission's log since the last read."""

    def __init__(self, client: JobSubmissionClient, sid: str):
        self.client, self.sid, self.offset = client, sid, 0
        self._settle_by: float | None = None

    def read(self, final: bool = False) -> list[str]:
        text = ray_jobs.job_logs(self.client, self.sid)
        new = text[self.offset:]
        if not final:  # keep a half-written last line for the next read
            new = new[: new.rfind("\n") + 1]
        self.offset += len(new)
        return new.splitlines()

    def settled(self, wait_s: float = 10.0) -> bool:
        """Has the process exited (or ``wait_s`` passed since first asked)? Its last lines are
        read only then. One check per call: the caller polls, so no thread sleeps here."""
        if self._settle_by is None:
            self._settle_by = time.monotonic() + wait_s
        info = ray_jobs.job_info(self.client, self.sid)
        return info is None or info.status.is_terminal() or time.monotonic() >= self._settle_by


class Poller(Protocol[T]):
    """One round of a follow loop. ``poll`` does the blocking reads (database, Ray) and returns
    what is new; the loops below wait between rounds, in a thread (CLI) or on the event loop (API)."""

    done: bool  # nothing more will come
    busy: bool  # more is waiting already: poll again without waiting

    def poll(self) -> Sequence[T]: ...


def follow_sync(poller: Poller[T], interval_s: float) -> Iterator[T]:
    while True:
        yield from poller.poll()
        if poller.done:
            return
        if not poller.busy:
            time.sleep(interval_s)


async def follow_async(poller: Poller[T], interval_s: float) -> AsyncIterator[T]:
    """The same loop for the API's event loop: each round's reads in a worker thread, the wait
    an ``asyncio.sleep`` (a synchronous generator would hold one of Starlette's 40 threads for
    the whole stream, and ~40 open streams stall every request)."""
    while True:
        for item in await asyncio.to_thread(poller.poll):
            yield item
        if poller.done:
            return
        if not poller.busy:
            await asyncio.sleep(interval_s)


class JobPoller:
    """A job's status changes, progress and, with ``logs_client`` (a factory, called when the
    first attempt is on Ray), its attempts' log lines; without it only the database is read."""

    busy = False

    def __init__(self, settings: StudioSettings, job_id: int,
                 logs_client: Callable[[], JobSubmissionClient] | None = None):
        self.settings, self.job_id, self.logs_client = settings, job_id, logs_client
        self.done = False
        self._last_event_id, self._attempt = 0, 0
        self._last_progress: tuple | None = None
        self._reader: _LogReader | None = None
        self._client: JobSubmissionClient | None = None

    def poll(self) -> list[FollowEvent]:
        now = _snapshot(self.settings, self.job_id, self._last_event_id)
        self._last_event_id = now.last_event_id
        out = []
        for event in now.events:
            self._attempt += event["status"] == JobStatus.STARTING  # each attempt begins with STARTING
            out.append(FollowEvent("status", {**event, "attempt": self._attempt}))
        p = now.progress
        if p is not None and p.updated_at is not None and (p.done, p.updated_at) != self._last_progress:
            self._last_progress = (p.done, p.updated_at)
            # step/total as before; the rest is Progress (text, rate_per_s, eta_s, ...)
            out.append(FollowEvent("progress", {"step": p.done, **p.model_dump(mode="json")}))
        if self.logs_client is not None and now.sid:
            reader = self._reader
            if reader is None or reader.sid != now.sid:
                self._client = self._client or self.logs_client()
                if reader is not None:  # the attempt changed: the rest of the previous one first
                    out += _lines(reader, reader.read(final=True))
                reader = self._reader = _LogReader(self._client, now.sid)
            if now.done and not reader.settled():
                return out  # the process may still print its last lines: next round
            out += _lines(reader, reader.read(final=now.done))
        if now.done:
            out.append(FollowEvent("end", {"status": now.status, "error": now.error, "attempts": now.attempt}))
            self.done = True
        return out


def _lines(reader: _LogReader, lines: list[str]) -> list[FollowEvent]:
    return [FollowEvent("log", {"line": x, "sid": reader.sid}) for x in lines]


def follow_job(settings: StudioSettings, job_id: int, *,
               logs_client: Callable[[], JobSubmissionClient] | None = None,
               interval_s: float = 1.0) -> Iterator[FollowEvent]:
    """Yield events until the job is done (the CLI's and the demo's loop)."""
    return follow_sync(JobPoller(settings, job_id, logs_client), interval_s)


def follow_job_async(settings: StudioSettings, job_id: int, *,
                     logs_client: Callable[[], JobSubmissionClient] | None = None,
                     interval_s: float = 1.0) -> AsyncIterator[FollowEvent]:
    """The same events for ``GET /api/jobs/{id}/logs?follow=true``."""
    return follow_async(JobPoller(settings, job_id, logs_client), interval_s)
