"""The batch job: ``python -m studio.batches.run --job-id N`` (the scheduler starts it as a Ray Job;
the same command runs one by hand).

1. check and claim the job row (``JobDriver``: STARTING → RUNNING, a heartbeat meanwhile); the
   batch goes ``in_progress``;
2. read the input file and check every line (``validation.read_plan``); refused lines are stored
   as error entries;
3. run the lines not stored yet (``runner.BatchRun``) through the gateway with the job's key;
4. CHECKPOINTING: the stored lines become the output and error files (``output.write_files``):
   the batch ``completed``, ``expired`` or ``cancelled``; the job SUCCEEDED (CANCELLED for a
   cancelled batch).

An error FAILS the job with its reason; the scheduler's retry starts again at 1 and skips every
line already stored, so no finished line is asked (or billed) twice.
"""

from __future__ import annotations

import asyncio
import sys
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from studio.batches.output import done_lines, not_run, recount, save, write_files
from studio.batches.queue import KIND, BatchJobSpec
from studio.batches.runner import BatchRun, expired_lines
from studio.batches.state import TERMINAL, locked
from studio.batches.validation import read_plan
from studio.errors import NotFound, StudioError
from studio.gateway.request import RequestCaps
from studio.jobs.driver import EXIT_FAILED, EXIT_REFUSED, JobDriver
from studio.jobs.entry import job_main
from studio.jobs.status import JobStatus, transition
from studio.settings import StudioSettings
from studio.store.artifacts import ArtifactStore
from studio.store.db import session_scope
from studio.store.models import StoredFile, utcnow


def say(msg: str) -> None:
    print(f"[studio.batches] {msg}", flush=True)


def driver(db_url: str, job_id: int) -> JobDriver:
    return JobDriver(db_url, job_id, kind=KIND, noun="batch job", listing="studio batches ls",
                     start_new="create a new batch (POST /v1/batches or `studio batches create`)")


@dataclass(frozen=True)
class Claimed:
    spec: BatchJobSpec
    endpoint: str
    input_key: str
    total: int
    expires_at: datetime | None
    status: str  # the batch's, once claimed


def claim(d: JobDriver) -> Claimed:
    with session_scope(d.db_url) as s:
        job = d.check(s)
        spec = BatchJobSpec.model_validate(job.spec)
        batch = locked(s, spec.batch_id)
        if batch is None:
            raise NotFound(f"batch {spec.batch_id} of job {d.job_id} does not exist",
                           "create a new batch")
        source = s.get(StoredFile, batch.input_file_id)
        if source is None and batch.status not in TERMINAL and batch.status != "cancelling":
            raise StudioError(f"the input file {batch.input_file_id} of batch {batch.id} was deleted",
                              "upload it again and create a new batch")
        attempt = d.claim(s, job, "batch entrypoint started")
        transition(s, d.job_id, JobStatus.RUNNING,
                   f"attempt {attempt}: {batch.total} lines to {batch.endpoint}, {spec.concurrency} "
                   "in flight")
        if batch.status in ("validating", "in_progress"):
            batch.status = "in_progress"
            batch.in_progress_at = batch.in_progress_at or utcnow()
        return Claimed(spec, batch.endpoint, source.key if source else "", batch.total,
                       batch.expires_at, batch.status)


def execute(settings: StudioSettings, c: Claimed, client: Any) -> str:
    """Steps 2 and 3: why the run stopped (done, cancelled, expired)."""
    batch_id = c.spec.batch_id
    data = ArtifactStore(settings.artifacts).get_bytes(c.input_key)
    plan = read_plan(data, c.endpoint, RequestCaps.of(settings), max(settings.batch_max_lines, c.total))
    with session_scope(settings.db_url) as s:
        done = done_lines(s, batch_id)
        batch = locked(s, batch_id)
        batch.total = plan.total
        recount(s, batch)
        save(s, batch_id, [not_run(batch_id, r.line, r.custom_id, r.code, r.message)
                           for r in plan.refused if r.line not in done])
    pending = [r for r in plan.requests if r.line not in done]
    say(f"batch {batch_id}: {len(pending)} of {plan.total} lines to run ({len(done)} done before, "
        f"{len(plan.refused)} refused by the checks)")
    outcome = "expired" if c.expires_at is not None and utcnow() >= c.expires_at else "done"
    if outcome == "done" and pending:
        run = BatchRun(settings.db_url, batch_id, c.endpoint, client, c.spec.concurrency, c.expires_at)
        outcome = asyncio.run(run.run(pending))
    if outcome == "expired":
        with session_scope(settings.db_url) as s:
            done = done_lines(s, batch_id)
            save(s, batch_id, expired_lines(batch_id, [r for r in plan.requests if r.line not in done]))
    return outcome


def finish(settings: StudioSettings, d: JobDriver, batch_id: str, outcome: str) -> dict[str, Any]:
    """Step 4: the files, the batch's end and the job's."""
    d.to(JobStatus.CHECKPOINTING, f"writing the output and error files ({outcome})")
    with session_scope(settings.db_url) as s:
        batch = locked(s, batch_id)
        status = "cancelled" if outcome == "cancelled" or batch.status == "cancelling" else (
            "expired" if outcome == "expired" else "completed")
        if batch.status == "in_progress":  # seen while the files are written; no cancel now
            batch.status, batch.finalizing_at = "finalizing", utcnow()
    with session_scope(settings.db_url) as s:
        batch = locked(s, batch_id)
        if batch.status not in TERMINAL:
            write_files(s, ArtifactStore(settings.artifacts), batch, status)
        summary = {"batch_id": batch.id, "status": batch.status, "total": batch.total,
                   "completed": batch.completed, "failed": batch.failed,
                   "output_file_id": batch.output_file_id, "error_file_id": batch.error_file_id}
    message = (f"batch {batch_id} {summary['status']}: {summary['completed']}/{summary['total']} "
               f"answered, {summary['failed']} failed")
    if summary["status"] == "cancelled":
        d.to(JobStatus.CANCELLED, message)
    else:
        d.succeed({"batch": summary}, message)
    return summary


def run_job(settings: StudioSettings, job_id: int, client: Any = None) -> int:
    """Run batch job ``job_id`` to its end here. ``client``: a gateway Client (default: one for
    this batch, ``concurrency`` wide, tagged service ``batch`` and the batch id)."""
    d = driver(settings.db_url, job_id)
    with d.beating(settings.job_heartbeat_s):
        try:
            claimed = claim(d)
        except StudioError as e:
            say(f"batch job {job_id} not started: {e}")
            return EXIT_REFUSED
        own = client is None
        if own:
            from studio.gateway import Client

            client = Client(service="batch", job_id=claimed.spec.batch_id,
                            max_concurrency=claimed.spec.concurrency, max_retries=0)
        try:
            outcome = "cancelled" if claimed.status in ("cancelling", *TERMINAL) else \
                execute(settings, claimed, client)
            summary = finish(settings, d, claimed.spec.batch_id, outcome)
            say(f"batch job {job_id}: {summary}")
            return 0
        except Exception as e:  # noqa: BLE001 — every failure ends the job row, with its reason
            reason = e.problem if isinstance(e, StudioError) else f"{type(e).__name__}: {e}"
            d.fail(reason.splitlines()[0][:1000] if reason else type(e).__name__)
            say(f"batch job {job_id} FAILED: {reason}")
            return EXIT_FAILED
        finally:
            if own:
                client.close()


def main(argv: list[str] | None = None) -> int:
    return job_main(argv, "python -m studio.batches.run", "Run a batch job (its row names the batch).",
                    "the batch's studio job id", run_job)


if __name__ == "__main__":
    sys.exit(main())
