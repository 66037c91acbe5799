"""Synthetic data from documents: QA pairs, chain-of-thought pairs and summaries, generated through
the gateway as a job (kind ``synth``, entrypoint ``python -m studio.data.synth.run --job-id N``).

``submit`` checks the recipe (the source exists and holds documents, the chunk plan is not empty)
and queues the job; the scheduler runs it on Ray. ``status`` and ``follow`` read its progress
(chunks done/total, rows, tokens, cost) from the job row, and ``draft_rows`` the rows generated so
far, while it runs.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

from studio.data.synth.spec import SynthResult, SynthSpec
from studio.data.synth.views import SynthDraftRows, SynthProgress, SynthStatus
from studio.errors import NotFound
from studio.jobs.follow import follow_async, follow_sync
from studio.settings import StudioSettings
from studio.store.db import session_scope

__all__ = ["SynthDraftRows", "SynthSpec", "SynthStatus", "draft_rows", "follow", "follow_events", "status",
           "submit"]


def submit(spec: SynthSpec, settings: StudioSettings, submitted_by: str | None,
           max_retries: int = 2, local: bool = False, owner_key_id: int | None = None) -> int:
    """Queue a synth job (``local``: mark it STARTING for an in-process run the scheduler leaves
    alone). Returns the job id."""
    from studio.data.synth.run import plan
    from studio.jobs.status import JobStatus, create_job, transition

    _, chunks = plan(spec, settings)  # fails now, naming the problem, rather than on the cluster
    with session_scope(settings.db_url) as s:
        job = create_job(s, name=spec.name, spec=spec.model_dump(mode="json"), max_retries=max_retries,
                         submitted_by=submitted_by, kind="synth", owner_key_id=owner_key_id)
        job.result = {"progress": {"chunks_done": 0, "chunks_total": len(chunks), "rows": 0,
                                   "parse_failures": 0, "tokens": 0, "cost_usd": 0.0}}
        if local:
            job.attempts = 1
            transition(s, job.id, JobStatus.STARTING, "running in the submitting process (--local)")
        return job.id


def status(settings: StudioSettings, job_id: int) -> SynthStatus:
    from studio.jobs.progress import chunk_progress
    from studio.store.models import Job, utcnow

    with session_scope(settings.db_url) as s:
        job = s.get(Job, job_id)
        if job is None or job.kind != "synth":
            raise NotFound(f"no synthesis job {job_id}", "list jobs with `studio jobs ls`")
        result = dict(job.result or {})
        stored = {k: v for k, v in (result.pop("progress", None) or {}).items() if k not in ("at", "since")}
        progress = SynthProgress.model_validate({**stored, **dict(chunk_progress(s, job, utcnow()))})
        return SynthStatus(id=job.id, name=job.name, status=job.status, attempts=job.attempts, error=job.error,
                           progress=progress, result=SynthResult.model_validate(result), spec=job.spec,
                           owner_key_id=job.owner_key_id, created_at=job.created_at, updated_at=job.updated_at)


class SynthPoller:
    """The job's status each time it changes (status or progress), until it ends."""

    busy = False

    def __init__(self, settings: StudioSettings, job_id: int, timeout_s: float | None = None):
        self.settings, self.job_id = settings, job_id
        self.deadline = None if timeout_s is None else time.monotonic() + timeout_s
        self.done = False
        self._last: tuple | None = None

    def poll(self) -> list[SynthStatus]:
        info = status(self.settings, self.job_id)
        # What is stored, not the ETA (it moves with the clock): a new event when the job moved.
        seen = (info.status, info.progress.model_dump(exclude={"eta_s", "text"}))
        new = [info] if seen != self._last else []
        self._last = seen
        self.done = info.ended or (self.deadline is not None and time.monotonic() > self.deadline)
        return new


def follow(settings: StudioSettings, job_id: int, interval_s: float = 0.5,
           timeout_s: float | None = None) -> Iterator[SynthStatus]:
    """Yield the job's status each time it changes, until it ends (SUCCEEDED, FAILED, CANCELLED)."""
    return follow_sync(SynthPoller(settings, job_id, timeout_s), interval_s)


def follow_events(settings: StudioSettings, job_id: int, interval_s: float = 0.5) -> AsyncIterator[SynthStatus]:
    """The same for ``GET /api/synth/{id}/events``."""
    return follow_async(SynthPoller(settings, job_id), interval_s)


def draft_rows(settings: StudioSettings, job_id: int, limit: int = 50, offset: int = 0) -> SynthDraftRows:
    """Rows generated so far (the draft), in chunk order, before curation."""
    from studio.data.synth.run import load_chunk
    from studio.store.artifacts import ArtifactStore

    info = status(settings, job_id)
    store = ArtifactStore(settings.artifacts)
    rows: list[dict[str, Any]] = []
    for i in range(info.progress.chunks_total):
        rec = load_chunk(store, f"job-{job_id}", i)
        if rec:
            rows += [{**r, "chunk": i, "source": rec["source"]} for r in rec["rows"]]
    return SynthDraftRows(job_id=job_id, status=info.status, total=len(rows), rows=rows[offset: offset + limit])
