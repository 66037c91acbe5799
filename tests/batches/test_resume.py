"""A batch job killed mid-batch (``kill -9`` of the real ``python -m studio.batches.run`` process)
and run again, as the scheduler's retry does: every line ends up in the output exactly once, and no
line stored before the kill is asked (or billed) again; only the calls in flight at the kill may
be. The live gateway and its ledger are real; the upstream is the scripted fake."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter

import pytest
from openai.types import Batch
from sqlalchemy import select

from studio.batches.run import driver
from studio.jobs.status import JobStatus, transition
from studio.store.db import session_scope
from studio.store.models import Batch as BatchRow, BatchResult, UsageRecord
from tests.batches.conftest import bearer, job_key_for, job_of, line, new_batch

pytestmark = pytest.mark.both_databases  # PostgreSQL too: locking, concurrent writers, constraints

N, WIDTH = 60, 4


def start(settings, gateway, key: str, job_id: int) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STUDIO_", "RAY_"))}
    env.update(STUDIO_HOME=str(settings.home), STUDIO_DATABASE_URL=settings.db_url,
               STUDIO_GATEWAY_URL=gateway.url, STUDIO_API_KEY=key, STUDIO_JOB_ID=str(job_id),
               STUDIO_JOB_HEARTBEAT_S="1")
    return subprocess.Popen([sys.executable, "-m", "studio.batches.run", "--job-id", str(job_id)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)  # a subprocess each way: one database
def test_a_killed_batch_resumes_without_asking_a_stored_line_again(api, keys, settings, gateway,
                                                                     upstream):
    settings.batch_concurrency = WIDTH
    upstream.delay_s = 0.1
    # Calls after the 12th are held at the upstream: at the kill, 12 lines are answered (and, once
    # the row says so, written) and WIDTH calls are in flight, whatever the machine's load.
    upstream.hold_after = 12
    created = new_batch(api, keys["alice"], [line(f"r{i}", f"resume {i}", model="slow") for i in range(N)])
    job_id = job_of(settings, created["id"]).id

    first = start(settings, gateway, job_key_for(settings, created["id"]), job_id)
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            with session_scope(settings.db_url) as s:
                if s.get(BatchRow, created["id"]).completed >= 12 and len(upstream.asked) == 12 + WIDTH:
                    break
            assert first.poll() is None, first.communicate()[0]
            time.sleep(0.05)
    finally:
        first.kill()
        first.wait(10)
    with session_scope(settings.db_url) as s:
        stored = {json.loads(r)["custom_id"] for r in
                  s.scalars(select(BatchResult.record).where(BatchResult.batch_id == created["id"]))}
    assert len(stored) == 12, len(stored)
    upstream.released.set()  # the held calls answer a process that is gone

    # What the scheduler does with a job whose process died: FAILED, then a retry with a new key.
    assert driver(settings.db_url, job_id).fail("the process was killed (test)")
    with session_scope(settings.db_url) as s:
        transition(s, job_id, JobStatus.RETRYING, "retry after the kill")
    second = start(settings, gateway, job_key_for(settings, created["id"]), job_id)
    out, _ = second.communicate(timeout=60)
    assert second.returncode == 0, out
    assert f"{N - len(stored)} of {N} lines to run ({len(stored)} done before" in out, out

    done = Batch.model_validate(api.get(f"/v1/batches/{created['id']}", headers=bearer(keys["alice"])).json())
    assert done.status == "completed" and done.request_counts.completed == N and done.error_file_id is None
    lines = api.get(f"/v1/files/{done.output_file_id}/content", headers=bearer(keys["alice"])).text.splitlines()
    assert [json.loads(x)["custom_id"] for x in lines] == [f"r{i}" for i in range(N)]

    asked = Counter(upstream.asked)
    assert all(asked[f"resume {cid[1:]}"] == 1 for cid in stored)  # stored lines: asked once only
    assert set(asked) == {f"resume {i}" for i in range(N)}
    assert sum(asked.values()) == N + WIDTH  # only the calls in flight at the kill, again
    assert gateway.service.usage.flush()
    with session_scope(settings.db_url) as s:
        billed = s.scalars(select(UsageRecord).where(UsageRecord.job_id == created["id"])).all()
    assert len(billed) == sum(asked.values())  # each call is one usage row, no more
    assert job_of(settings, created["id"]).attempts == 2
