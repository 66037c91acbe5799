"""The job heartbeat on a real database (SQLite and PostgreSQL): the driver beats while an entrypoint
runs and stops after; one reconcile pass fails a job run outside Ray whose beats stopped (and retries
it when it has retries), leaves a beating one alone, and leaves a job with a Ray submission to Ray.
No Ray: these passes reach no step that needs a client, except where a stand-in says Ray is down."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta

import pytest

from studio.data.ingest import ingest_path
from studio.data.synth import submit
from studio.data.synth.spec import SynthSpec
from studio.jobs.driver import JobDriver
from studio.jobs.scheduler import reconcile_once
from studio.jobs.status import JobStatus, create_job
from studio.jobs.submission import SchedulerConfig
from studio.store.db import session_scope
from studio.store.models import Job, JobEvent
from tests.data.fake_generator import FakeGenerator
from tests.loopback import free_port

pytestmark = pytest.mark.both_databases  # PostgreSQL too: locking, concurrent writers, constraints

CONFIG = SchedulerConfig(heartbeat_timeout_s=120, retry_backoff_s=60)  # no start within a test's pass


def claimed(settings, kind: str = "synth", max_retries: int = 0) -> JobDriver:
    """A job started by hand (no Ray submission): QUEUED → claimed → RUNNING."""
    with session_scope(settings.db_url) as s:
        job_id = create_job(s, name="j", spec={}, max_retries=max_retries, submitted_by="test", kind=kind).id
    driver = JobDriver(settings.db_url, job_id, kind)
    with session_scope(settings.db_url) as s:
        driver.claim(s, driver.check(s), "started by hand")
    driver.to(JobStatus.RUNNING, "working")
    return driver


def row(settings, job_id: int) -> Job:
    with session_scope(settings.db_url) as s:
        return s.get(Job, job_id)


def set_row(settings, job_id: int, **fields) -> None:
    with session_scope(settings.db_url) as s:
        job = s.get(Job, job_id)
        for k, v in fields.items():
            setattr(job, k, v)  # test setup: put the row where the case starts


def failed_reason(settings, job_id: int) -> str:
    with session_scope(settings.db_url) as s:
        return s.query(JobEvent).filter_by(job_id=job_id, to_status="FAILED").one().reason


def at(t: datetime) -> str:
    return t.isoformat(timespec="seconds")


# --- the driver --------------------------------------------------------------------------------


def test_the_beat_advances_while_the_block_runs_and_stops_after(settings):
    driver = claimed(settings)
    first = row(settings, driver.job_id)
    assert first.heartbeat_at is not None and first.ray_submission_id is None  # the claim is the first beat
    seen: set[datetime] = set()
    with driver.beating(every_s=0.05):
        deadline = time.monotonic() + 20
        while len(seen) < 4 and time.monotonic() < deadline:
            seen.add(row(settings, driver.job_id).heartbeat_at)
            time.sleep(0.02)
    assert len(seen) >= 4 and min(seen) >= first.heartbeat_at
    last = row(settings, driver.job_id)
    assert last.heartbeat_at > first.heartbeat_at
    assert last.updated_at == first.updated_at  # a beat is not a change of the row
    assert not [t for t in threading.enumerate() if t.name == f"studio-job-{driver.job_id}-heartbeat"]
    time.sleep(0.3)
    assert row(settings, driver.job_id).heartbeat_at == last.heartbeat_at  # no beat after the block


def test_a_beat_writes_only_an_active_row_and_a_lost_database_never_stops_the_job(settings, caplog):
    driver = claimed(settings)
    assert driver.beat() is True
    driver.fail("Boom: it broke")
    ended = row(settings, driver.job_id).heartbeat_at
    assert driver.beat() is False and row(settings, driver.job_id).heartbeat_at == ended

    gone = JobDriver(f"postgresql://nobody@127.0.0.1:{free_port()}/studio", driver.job_id, "synth")
    with caplog.at_level(logging.WARNING, logger="studio.jobs.driver"):
        assert gone.beat() is False  # logged, not raised
        with gone.beating(every_s=0.05):
            time.sleep(0.3)  # the block runs on while every beat fails
    assert f"job {driver.job_id}: heartbeat not recorded" in caplog.text
    assert "cannot reach the database" in caplog.text


def test_a_claim_by_hand_drops_the_ray_submission_of_an_earlier_attempt(settings):
    """A RETRYING job run by hand is this process now, not the Ray Job attempt 1 ran as: the
    scheduler must judge it by its heartbeat, not by that ended Ray Job."""
    with session_scope(settings.db_url) as s:
        job_id = create_job(s, name="j", spec={}, max_retries=2, submitted_by="test", kind="synth").id
    set_row(settings, job_id, status=JobStatus.RETRYING.value, attempts=1, ray_submission_id=f"studio-job-{job_id}-a1")
    driver = JobDriver(settings.db_url, job_id, "synth")
    with session_scope(settings.db_url) as s:
        assert driver.claim(s, driver.check(s), "started by hand") == 2
    job = row(settings, job_id)
    assert (job.status, job.ray_submission_id) == ("STARTING", None) and job.heartbeat_at is not None


# --- the scheduler -----------------------------------------------------------------------------


def test_a_silent_job_run_by_hand_is_failed_by_one_pass_and_retried(settings):
    driver = claimed(settings, max_retries=1)
    beat = row(settings, driver.job_id).heartbeat_at
    assert not reconcile_once(settings, None, CONFIG, now=beat + timedelta(seconds=119)).changed()
    report = reconcile_once(settings, None, CONFIG, now=beat + timedelta(seconds=121))
    assert (report.failed, report.retrying, report.errors) == ([driver.job_id], [driver.job_id], [])
    assert row(settings, driver.job_id).status == "RETRYING"
    assert failed_reason(settings, driver.job_id) == (
        f"the driver stopped beating: its last heartbeat was at {at(beat)} (121 s ago, heartbeat_timeout_s "
        "120) while RUNNING, and it runs outside Ray, so its process was killed or its machine lost; the "
        "scheduler retries it (attempt 2 of 2); to run it by hand instead, run "
        f"`python -m studio.data.synth.run --job-id {driver.job_id}` while it is RETRYING")


def test_a_row_that_never_beat_is_judged_by_its_last_change_and_without_retries_stays_failed(settings):
    driver = claimed(settings, kind="train")
    set_row(settings, driver.job_id, heartbeat_at=None)  # claimed by a driver from before heartbeats
    changed = row(settings, driver.job_id).updated_at
    report = reconcile_once(settings, None, CONFIG, now=changed + timedelta(seconds=300))
    assert (report.failed, report.retrying) == ([driver.job_id], [])
    job = row(settings, driver.job_id)
    assert job.status == "FAILED" and job.error == failed_reason(settings, driver.job_id)
    assert job.error.startswith(f"the driver stopped beating: it never beat; its last change was at {at(changed)} "
                                "(300 s ago")
    assert job.error.endswith("it has no retries left: submit it again")


def test_a_silent_trial_of_a_sweep_is_left_to_the_sweeps_retry(settings):
    sweep, trial = claimed(settings, kind="sweep", max_retries=1), claimed(settings, kind="train")
    set_row(settings, trial.job_id, parent_id=sweep.job_id)  # what sweep_run does with a trial's row
    beat = row(settings, trial.job_id).heartbeat_at
    report = reconcile_once(settings, None, CONFIG, now=beat + timedelta(seconds=300))
    assert (sorted(report.failed), report.retrying) == ([sweep.job_id, trial.job_id], [sweep.job_id])
    job = row(settings, trial.job_id)
    assert job.status == "FAILED"
    assert job.error.endswith(f"it is a trial of sweep {sweep.job_id}, whose retry runs it again")


def test_a_beating_job_is_left_alone(settings):
    driver = claimed(settings)
    set_row(settings, driver.job_id, heartbeat_at=row(settings, driver.job_id).heartbeat_at - timedelta(hours=1))
    assert driver.beat() is True  # it was silent for an hour, and beats again
    beat = row(settings, driver.job_id).heartbeat_at
    assert not reconcile_once(settings, None, CONFIG, now=beat + timedelta(seconds=60)).changed()
    assert row(settings, driver.job_id).status == "RUNNING"


class RayDown:
    """Ray's Jobs API, briefly unreachable (the external edge)."""

    def get_job_info(self, sid: str):
        raise ConnectionError(f"cannot reach the Ray Jobs API for {sid}")


def test_a_job_with_a_ray_submission_is_left_to_ray(settings):
    """Its heartbeat is hours old, and Ray does not answer: the pass reports the poll error and
    fails nothing, since only Ray says when a Ray Job ended."""
    driver = claimed(settings, max_retries=1)
    sid = f"studio-job-{driver.job_id}-a1"
    old = row(settings, driver.job_id).heartbeat_at - timedelta(hours=3)
    set_row(settings, driver.job_id, ray_submission_id=sid, heartbeat_at=old)
    report = reconcile_once(settings, RayDown(), CONFIG, now=old + timedelta(hours=4))
    assert report.failed == [] and report.retrying == []
    assert report.errors == [f"job {driver.job_id}: ConnectionError: cannot reach the Ray Jobs API for {sid}"]
    assert row(settings, driver.job_id).status == "RUNNING"


# --- a real entrypoint -------------------------------------------------------------------------


def test_the_synthesis_entrypoint_beats_while_it_runs(settings, tmp_path):
    """`python -m studio.data.synth.run --job-id N` run by hand (no Ray: synthesis calls the gateway,
    here a scripted OpenAI-compatible server): it beats while RUNNING, a scheduler with a 4 s timeout
    leaves it alone for longer than that timeout (a job that stopped beating would be failed), and it
    ends SUCCEEDED. The timeout is 40 beats: at 1 s (10 beats) a process of the background lane held
    back under load once missed it and was moved to RETRYING mid-run."""
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "rivers.md").write_text(" ".join(f"river{i} delta tide" for i in range(40)) + "\n")
    ingest_path(str(docs), "docs", settings, check_roots=False)
    spec = SynthSpec(source="docs", name="docs-qa", model="gen", chunk_tokens=16, overlap_tokens=4,
                     max_concurrency=1, max_chunks=8)
    job_id = submit(spec, settings, "test")  # QUEUED: the entrypoint claims it itself
    gen = FakeGenerator().start()
    gen.delay_s = 0.75  # 8 chunks, one at a time: RUNNING for 6 s or more, past the timeout
    timeout_s = 4.0
    env = {**os.environ, "STUDIO_HOME": str(settings.home), "STUDIO_DATABASE_URL": settings.db_url,
           "STUDIO_GATEWAY_URL": gen.base, "STUDIO_API_KEY": "sk-test", "STUDIO_JOB_HEARTBEAT_S": "0.1"}
    for var in ("STUDIO_ARTIFACTS_URI", "RAY_JOB_CONFIG_JSON_ENV_VAR"):
        env.pop(var, None)
    proc = subprocess.Popen([sys.executable, "-m", "studio.data.synth.run", "--job-id", str(job_id)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    beats: set[datetime] = set()
    failed: list[int] = []
    running: list[float] = []  # when the loop saw it RUNNING
    try:
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline:
            job = row(settings, job_id)
            if job.status == "RUNNING":
                running.append(time.monotonic())
                beats.add(job.heartbeat_at)
                failed += reconcile_once(settings, None, SchedulerConfig(heartbeat_timeout_s=timeout_s)).failed
            time.sleep(0.05)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        gen.stop()
    assert proc.returncode == 0, out
    job = row(settings, job_id)
    assert job.status == "SUCCEEDED" and job.ray_submission_id is None and failed == []
    assert len(beats) >= 3, f"saw beats {sorted(beats)}"
    # the reconciler watched it for longer than its timeout: without beats it would have failed it
    assert running[-1] - running[0] > timeout_s + 1, f"RUNNING for only {running[-1] - running[0]:.1f} s"
