"""Enqueue, cancel and retry backoff on a real database (no Ray needed for these paths)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import func, select

from studio.errors import Conflict, StudioError
from studio.jobs.queue import request_cancel
from studio.train.queue import enqueue_train_job
from studio.jobs.scheduler import reconcile_once
from studio.jobs.submission import SchedulerConfig
from studio.jobs.status import JobStatus, transition
from studio.store.db import session_scope
from studio.store.models import Job, utcnow
from studio.train.spec import TrainSpec
from tests.jobs.inputs import ingest_datasets, train_spec

pytestmark = pytest.mark.both_databases  # PostgreSQL too: locking, concurrent writers, constraints


def _enqueue(settings, spec: dict) -> int:
    with session_scope(settings.db_url) as s:
        return enqueue_train_job(s, TrainSpec.model_validate(spec), "test").id


def test_enqueue_pins_the_dataset_version_and_an_absolute_model_path(settings, model_dir, datasets, tmp_path,
                                                                     monkeypatch):
    monkeypatch.chdir(model_dir.parent)
    job_id = _enqueue(settings, train_spec("model", name="pinned"))  # a relative model path
    ingest_datasets(settings, tmp_path / "more")  # same content: still digits@1
    with session_scope(settings.db_url) as s:
        job = s.get(Job, job_id)
        assert (job.status, job.attempts, job.max_retries, job.submitted_by) == ("QUEUED", 0, 1, "test")
        assert job.spec["data"]["dataset"] == "digits@1"
        assert job.spec["base_model"] == str(model_dir)
        # What is stored is a valid TrainSpec again (the entrypoint re-validates it).
        assert TrainSpec.model_validate(job.spec).hyper.max_steps == 5
        assert [e.to_status for e in job.events] == ["QUEUED"]


def test_a_dataset_of_the_wrong_kind_creates_no_job(settings, model_dir, datasets):
    with pytest.raises(StudioError) as err:
        _enqueue(settings, train_spec(model_dir, dataset="prose"))
    assert "holds text rows" in err.value.problem and "chat or prompt_completion" in err.value.problem
    with session_scope(settings.db_url) as s:
        assert s.scalar(select(func.count()).select_from(Job)) == 0


def _job_at(settings, spec, *path: JobStatus, attempts: int = 1) -> int:
    job_id = _enqueue(settings, spec)
    with session_scope(settings.db_url) as s:
        for status in path:
            transition(s, job_id, status, "test setup")
        s.get(Job, job_id).attempts = attempts
    return job_id


def test_cancel(settings, model_dir, datasets):
    spec = train_spec(model_dir)
    queued = _enqueue(settings, spec)
    running = _job_at(settings, spec, JobStatus.STARTING, JobStatus.RUNNING)
    failed_with_retry = _job_at(settings, spec, JobStatus.STARTING, JobStatus.FAILED)
    failed_for_good = _job_at(settings, spec, JobStatus.STARTING, JobStatus.FAILED, attempts=2)
    with session_scope(settings.db_url) as s:
        assert request_cancel(s, queued, "alice").status == "CANCELLED"  # nothing on Ray: at once
        job = request_cancel(s, running, "alice")
        assert (job.status, job.cancel_requested) == ("RUNNING", True)  # the scheduler stops it
        job = request_cancel(s, failed_with_retry, "alice")
        assert (job.status, job.cancel_requested) == ("FAILED", True)
    for done in (queued, failed_for_good):
        with pytest.raises(Conflict, match="nothing left to cancel"), session_scope(settings.db_url) as s:
            request_cancel(s, done, "alice")
    # A pass of the scheduler does not retry the job whose retry was cancelled.
    report = reconcile_once(settings, None, SchedulerConfig(retry_backoff_s=0), now=utcnow())
    assert report.retrying == []
    with session_scope(settings.db_url) as s:
        assert s.get(Job, queued).events[-1].reason == "cancelled by alice before it ran"


def test_retry_backoff_doubles_and_waits(settings, model_dir, datasets):
    """FAILED → RETRYING with next_attempt_at = now + backoff·2^(attempts-1), capped; not started
    before then. (These steps need no Ray, so the pass gets no client.)"""
    spec = train_spec(model_dir, max_retries=5)
    first = _job_at(settings, spec, JobStatus.STARTING, JobStatus.FAILED, attempts=1)
    third = _job_at(settings, spec, JobStatus.STARTING, JobStatus.FAILED, attempts=3)
    fifth = _job_at(settings, spec, JobStatus.STARTING, JobStatus.FAILED, attempts=5)
    config = SchedulerConfig(retry_backoff_s=10, retry_backoff_max_s=30)
    now = utcnow()
    report = reconcile_once(settings, None, config, now=now)
    assert sorted(report.retrying) == [first, third, fifth] and report.errors == []
    with session_scope(settings.db_url) as s:
        waits = {j: s.get(Job, j).next_attempt_at - now for j in (first, third, fifth)}
        reasons = {j: s.get(Job, j).events[-1].reason for j in (first, third)}
    assert waits == {first: timedelta(seconds=10), third: timedelta(seconds=30), fifth: timedelta(seconds=30)}
    assert reasons[first] == "attempt 1 failed; attempt 2 of 6 in 10 s, from the start (no checkpoint yet)"
    report = reconcile_once(settings, None, config, now=now + timedelta(seconds=5))
    assert not report.changed()
    with session_scope(settings.db_url) as s:
        assert {s.get(Job, j).status for j in (first, third, fifth)} == {"RETRYING"}


def test_a_failure_the_entrypoint_marks_not_retryable_is_not_retried(settings, model_dir, datasets):
    job_id = _job_at(settings, train_spec(model_dir), JobStatus.STARTING, JobStatus.FAILED)
    with session_scope(settings.db_url) as s:
        s.get(Job, job_id).result = {"error": {"stage": "preflight", "retryable": False}}
    assert reconcile_once(settings, None, SchedulerConfig(retry_backoff_s=0)).retrying == []
    with pytest.raises(Conflict), session_scope(settings.db_url) as s:
        request_cancel(s, job_id, "alice")
