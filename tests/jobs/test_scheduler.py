"""The reconcile loop against a real local Ray head (started as `studio up` starts it, on free ports)
and the real JobSubmissionClient. The entrypoint is tests/jobs/fake_train.py, a real process that
keeps the training entrypoint's contract; the scheduler is pointed at it by configuration."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from studio import stack
from studio.api.app import create_app
from studio.jobs import ray_jobs
from studio.jobs.queue import request_cancel
from studio.train.queue import enqueue_train_job
from studio.jobs.scheduler import TickReport, reconcile_once
from studio.jobs.submission import SchedulerConfig, entrypoint, job_runtime_env
from studio.jobs.status import JobStatus, create_job, transition
from studio.keys import create_key
from studio.registry.versions import get_version
from studio.settings import StudioSettings
from studio.store import db as store_db
from studio.store.db import session_scope
from studio.store.models import Job
from studio.train.spec import TrainSpec
from tests.api.checks import bearer
from tests.jobs.inputs import ingest_datasets, make_model_dir, train_spec

pytestmark = [pytest.mark.slow, pytest.mark.no_engine]

REPO = Path(__file__).resolve().parents[2]
CONFIG = SchedulerConfig(entrypoint_module="tests.jobs.fake_train", retry_backoff_s=0.5,
                         runtime_env={"env_vars": {"PYTHONPATH": str(REPO)}})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ray_settings(tmp_path_factory) -> Iterator[StudioSettings]:
    home = tmp_path_factory.mktemp("sched-home")
    settings = StudioSettings(home=home, database_url=f"sqlite:///{home / 'studio.db'}", artifacts_uri=None,
                              mlflow_uri=None, redis_url=None, admin_key=None, http_port=free_port(),
                              ray_port=free_port(), dashboard_port=free_port())
    store_db.init_db(settings.db_url)
    ingest_datasets(settings, home / "data")
    make_model_dir(home / "models" / "model")
    stack.start_head(settings)
    try:
        yield settings
    finally:
        stack.down(settings)
        store_db.get_engine.cache_clear()


@pytest.fixture(scope="module")
def client(ray_settings):
    return ray_jobs.jobs_client(ray_settings)


def enqueue(settings: StudioSettings, name: str, **fields) -> int:
    spec = TrainSpec.model_validate(train_spec(settings.models_dir / "model", name=name, **fields))
    with session_scope(settings.db_url) as s:
        return enqueue_train_job(s, spec, "test").id


def job(settings, job_id: int) -> Job:
    with session_scope(settings.db_url) as s:
        j = s.get(Job, job_id)
        j.events  # noqa: B018 — load them while the session is open
        return j


def drive(settings, client, until: Callable[[], bool], timeout_s: float = 60,
          config: SchedulerConfig = CONFIG) -> list[TickReport]:
    """Run reconcile passes (as the JobScheduler deployment does) until ``until()`` holds."""
    reports = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        # Per-job errors are allowed on the way (a busy head answers "No available agent to
        # submit job, please try again later"); the scheduler must get there regardless.
        reports.append(reconcile_once(settings, client, config))
        if until():
            return reports
        time.sleep(0.3)
    raise AssertionError(f"condition not reached in {timeout_s} s; last reports: {reports[-3:]}")


def test_a_submission_ray_refuses_fails_the_job_with_the_reason(ray_settings, client, tmp_path):
    missing = tmp_path / "no-such-dir"
    config = CONFIG.model_copy(update={"runtime_env": {"working_dir": str(missing)}})
    job_id = enqueue(ray_settings, "ok-refused")
    report = reconcile_once(ray_settings, client, config)
    assert report.failed == [job_id] and report.submitted == []
    j = job(ray_settings, job_id)
    assert j.status == "FAILED" and j.error.startswith(f"Ray refused submission studio-job-{job_id}-a1: ")
    assert str(missing) in j.error
    with session_scope(ray_settings.db_url) as s:
        request_cancel(s, job_id, "test")  # no retries: the config is what is wrong


def status_is(settings, job_id, *statuses: JobStatus) -> Callable[[], bool]:
    return lambda: job(settings, job_id).status in statuses


def ray_jobs_of(client, job_id: int) -> list[str]:
    prefix = f"studio-job-{job_id}-"
    return sorted(j.submission_id for j in client.list_jobs() if (j.submission_id or "").startswith(prefix))


def wait_ray(client, sid: str, *statuses: str, timeout_s: float = 30) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = client.get_job_status(sid)
        if status in statuses:
            return status
        time.sleep(0.2)
    raise AssertionError(f"Ray job {sid} is {client.get_job_status(sid)}, not {statuses}")


def path_of(j: Job) -> list[str]:
    return [e.to_status for e in j.events]


def test_a_queued_job_runs_to_succeeded_and_the_api_shows_it(ray_settings, client):
    job_id = enqueue(ray_settings, "ok-first")
    reports = drive(ray_settings, client, status_is(ray_settings, job_id, JobStatus.SUCCEEDED))
    sid = f"studio-job-{job_id}-a1"
    assert reports[0].submitted == [sid]
    j = job(ray_settings, job_id)
    assert path_of(j) == ["QUEUED", "STARTING", "RUNNING", "CHECKPOINTING", "RUNNING", "CHECKPOINTING", "SUCCEEDED"]
    assert (j.attempts, j.ray_submission_id, j.result["model"]) == (1, sid, "ok-first@1")
    assert j.events[1].reason == f"attempt 1: submitting Ray job {sid}"
    with session_scope(ray_settings.db_url) as s:
        assert get_version(s, "ok-first@1").job_id == job_id
    # The job ran with the studio's settings and the merged runtime_env.
    info = client.get_job_info(sid)
    assert info.runtime_env["env_vars"] == job_runtime_env(ray_settings, CONFIG, job_id)["env_vars"]
    assert info.runtime_env["env_vars"]["STUDIO_HOME"] == str(ray_settings.home_abs)
    assert info.entrypoint.endswith(f"-m tests.jobs.fake_train --job-id {job_id}")
    wait_ray(client, sid, "SUCCEEDED")
    assert ray_jobs_of(client, job_id) == [sid]

    with session_scope(ray_settings.db_url) as s:  # logs are the owner's (and admins')
        key, info = create_key(s, "reader", "user")
        s.get(Job, job_id).owner_key_id = info.id
    with TestClient(create_app(ray_settings)) as http:
        logs = http.get(f"/api/jobs/{job_id}/logs", headers=bearer(key)).json()
        assert f"fake-train job {job_id} attempt 1 mode ok" in logs["logs"] and logs["submission_id"] == sid
        with http.stream("GET", f"/api/jobs/{job_id}/logs", params={"follow": "true"}, headers=bearer(key)) as r:
            assert r.headers["content-type"].startswith("text/event-stream")
            events = _sse_events(r.iter_lines())
        kinds = [k for k, _ in events]
        assert kinds[0] == "status" and kinds[-1] == "end" and "progress" in kinds
        assert events[-1][1] == {"status": "SUCCEEDED", "error": None, "attempts": 1}
        last = [d for k, d in events if k == "progress"][-1]
        assert (last["step"], last["done"], last["total"], last["unit"]) == (5, 5, 5, "step")
        assert last["text"].startswith("step 5/5")
        assert f"fake-train job {job_id} done" in [d["line"] for k, d in events if k == "log"]
        metrics = http.get(f"/api/jobs/{job_id}/metrics", headers=bearer(key)).json()["metrics"]
        assert [p["step"] for p in metrics["loss"]] == [1, 2, 3, 4, 5]


def _sse_events(lines) -> list[tuple[str, dict]]:
    events, kind = [], None
    for line in lines:
        if line.startswith("event: "):
            kind = line[len("event: "):]
        elif line.startswith("data: "):
            events.append((kind, json.loads(line[len("data: "):])))
    return events


def test_a_crash_is_retried_and_resumes_from_its_checkpoint(ray_settings, client):
    job_id = enqueue(ray_settings, "crashonce-a")
    drive(ray_settings, client, status_is(ray_settings, job_id, JobStatus.SUCCEEDED))
    j = job(ray_settings, job_id)
    assert path_of(j) == ["QUEUED", "STARTING", "RUNNING", "CHECKPOINTING", "RUNNING", "FAILED", "RETRYING",
                          "STARTING", "RUNNING", "CHECKPOINTING", "RUNNING", "CHECKPOINTING", "SUCCEEDED"]
    first_ckpt = f"fake://job-{job_id}/a1/step-5"
    reasons = {e.to_status: e.reason for e in j.events[:8]}
    assert reasons["FAILED"] == "RuntimeError: fake training diverged"  # recorded by the entrypoint
    assert reasons["RETRYING"].startswith(f"attempt 1 failed; attempt 2 of 2 in 0.5 s, resuming from {first_ckpt}")
    assert reasons["STARTING"] == f"attempt 2: submitting Ray job studio-job-{job_id}-a2, resuming from {first_ckpt}"
    assert (j.attempts, j.result["resumed_from"]) == (2, first_ckpt)
    assert ray_jobs_of(client, job_id) == [f"studio-job-{job_id}-a1", f"studio-job-{job_id}-a2"]
    assert client.get_job_status(f"studio-job-{job_id}-a1") == "FAILED"


def test_a_silent_death_is_failed_with_the_log_tail_then_retried(ray_settings, client):
    job_id = enqueue(ray_settings, "dieonce-a")
    drive(ray_settings, client, status_is(ray_settings, job_id, JobStatus.SUCCEEDED))
    j = job(ray_settings, job_id)
    assert path_of(j)[:4] == ["QUEUED", "STARTING", "FAILED", "RETRYING"]
    reason = j.events[2].reason
    assert reason.startswith(f"Ray job studio-job-{job_id}-a1 ended FAILED: Job entrypoint command failed "
                             "with exit code 3")
    assert "(job was STARTING)" in reason and "boom: the process dies without a word" in reason
    # The job succeeded in the end: its error is the history's, not the job's.
    assert (j.status, j.attempts, j.error) == ("SUCCEEDED", 2, None)


def test_when_retries_are_exhausted_the_job_stays_failed(ray_settings, client):
    job_id = enqueue(ray_settings, "crashalways-a", max_retries=1)
    drive(ray_settings, client, lambda: (lambda j: j.status == "FAILED" and j.attempts == 2)(job(ray_settings, job_id)))
    for _ in range(3):  # more passes change nothing
        assert not reconcile_once(ray_settings, client, CONFIG).changed()
    j = job(ray_settings, job_id)
    assert (j.status, j.attempts, j.error) == ("FAILED", 2, "RuntimeError: fake training diverged")
    assert path_of(j).count("STARTING") == 2
    assert ray_jobs_of(client, job_id) == [f"studio-job-{job_id}-a1", f"studio-job-{job_id}-a2"]


@pytest.mark.parametrize("name, on_ray", [("slowstart-a", JobStatus.STARTING), ("hang-a", JobStatus.RUNNING)])
def test_cancel_stops_the_ray_job(ray_settings, client, name, on_ray):
    job_id = enqueue(ray_settings, name)
    sid = f"studio-job-{job_id}-a1"
    drive(ray_settings, client, lambda: bool(ray_jobs_of(client, job_id)) and client.get_job_status(sid) == "RUNNING")
    drive(ray_settings, client, status_is(ray_settings, job_id, on_ray))
    with session_scope(ray_settings.db_url) as s:
        request_cancel(s, job_id, "alice")
    report = reconcile_once(ray_settings, client, CONFIG)
    assert report.cancelled == [job_id]
    wait_ray(client, sid, "STOPPED")
    for _ in range(3):  # the dying entrypoint cannot turn the cancel into a failure, nor the scheduler
        reconcile_once(ray_settings, client, CONFIG)
    j = job(ray_settings, job_id)
    assert (j.status, j.attempts) == ("CANCELLED", 1)
    assert j.events[-1].reason == f"cancelled on request while {on_ray}; Ray job {sid} stopped"


def test_a_restarted_scheduler_adopts_instead_of_duplicating(ray_settings, client):
    # 1. A job running under one scheduler; a new one (new client, no memory) takes over.
    running = enqueue(ray_settings, "hang-restart")
    drive(ray_settings, client, status_is(ray_settings, running, JobStatus.RUNNING))
    fresh = ray_jobs.jobs_client(ray_settings)
    for _ in range(3):
        report = reconcile_once(ray_settings, fresh, CONFIG)
        assert not report.submitted and not report.adopted
    assert ray_jobs_of(client, running) == [f"studio-job-{running}-a1"] and job(ray_settings, running).attempts == 1

    # 2. The scheduler died after committing STARTING but before submitting: resubmitted, same id.
    lost = enqueue(ray_settings, "ok-lost")
    lost_sid = f"studio-job-{lost}-a1"
    with session_scope(ray_settings.db_url) as s:
        transition(s, lost, JobStatus.STARTING, f"attempt 1: submitting Ray job {lost_sid}")
        s.get(Job, lost).attempts, s.get(Job, lost).ray_submission_id = 1, lost_sid
    # 3. The scheduler died after submitting but before committing: Ray's record is adopted.
    orphan = enqueue(ray_settings, "ok-orphan")
    orphan_sid = f"studio-job-{orphan}-a1"
    client.submit_job(entrypoint=entrypoint(CONFIG, orphan), submission_id=orphan_sid,
                      runtime_env=job_runtime_env(ray_settings, CONFIG))
    report = reconcile_once(ray_settings, fresh, CONFIG)
    assert report.submitted == [lost_sid] and report.adopted == [orphan_sid]
    drive(ray_settings, fresh, lambda: job(ray_settings, lost).status == job(ray_settings, orphan).status == "SUCCEEDED")
    for job_id, sid in ((lost, lost_sid), (orphan, orphan_sid)):
        assert (job(ray_settings, job_id).attempts, ray_jobs_of(client, job_id)) == (1, [sid])

    with session_scope(ray_settings.db_url) as s:
        request_cancel(s, running, "test")
    drive(ray_settings, fresh, status_is(ray_settings, running, JobStatus.CANCELLED))


def test_a_job_a_recipe_driver_created_is_never_started_twice(ray_settings, client):
    """`ray job submit -- python -m studio.train.run --recipe …` creates its own QUEUED row with its
    submission id, then claims it: the scheduler watches it and can cancel it, never submits it."""
    with session_scope(ray_settings.db_url) as s:
        job_id = create_job(s, name="by-hand", spec={}, max_retries=0, submitted_by="ray job submit").id
        s.get(Job, job_id).ray_submission_id = f"by-hand-{job_id}"
    client.submit_job(entrypoint="sleep 60", submission_id=f"by-hand-{job_id}")
    for _ in range(3):
        assert not reconcile_once(ray_settings, client, CONFIG).changed()
    assert ray_jobs_of(client, job_id) == [] and job(ray_settings, job_id).status == "QUEUED"
    with session_scope(ray_settings.db_url) as s:
        assert request_cancel(s, job_id, "alice").status == "QUEUED"  # its driver is on Ray
    assert reconcile_once(ray_settings, client, CONFIG).cancelled == [job_id]
    wait_ray(client, f"by-hand-{job_id}", "STOPPED")
    assert job(ray_settings, job_id).status == "CANCELLED"


def test_max_concurrent_jobs_keeps_the_rest_queued(ray_settings, client):
    config = CONFIG.model_copy(update={"max_concurrent_jobs": 1})
    first, second = enqueue(ray_settings, "hang-c1"), enqueue(ray_settings, "ok-c2")
    drive(ray_settings, client, status_is(ray_settings, first, JobStatus.RUNNING), config=config)
    for _ in range(2):
        reconcile_once(ray_settings, client, config)
    assert job(ray_settings, second).status == "QUEUED"
    with session_scope(ray_settings.db_url) as s:
        request_cancel(s, first, "test")
    drive(ray_settings, client, status_is(ray_settings, second, JobStatus.SUCCEEDED), config=config)
