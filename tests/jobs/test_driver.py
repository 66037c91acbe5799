"""The job driver every entrypoint uses (train, eval, synth), on a real database: which rows it
starts, how it claims them, and how it ends them without overwriting an ending it did not make."""

from __future__ import annotations

import pytest
from pydantic import BaseModel

from studio.errors import NotFound, StudioError
from studio.jobs.driver import JobDriver, ray_submission_id
from studio.jobs.status import JobStatus, create_job, transition
from studio.store.db import session_scope
from studio.store.models import Job, JobEvent

pytestmark = pytest.mark.both_databases  # PostgreSQL too: locking, concurrent writers, constraints


class Spec(BaseModel):
    n: int


def _job(settings, kind: str = "synth", status: JobStatus = JobStatus.QUEUED, **kw) -> int:
    with session_scope(settings.db_url) as s:
        job = create_job(s, name="j", spec={"n": 3}, max_retries=1, submitted_by="test", kind=kind)
        job.status = status.value  # test setup: put the row where the case starts
        for k, v in kw.items():
            setattr(job, k, v)
        return job.id


def _row(settings, job_id: int) -> tuple[str, int, dict, list[str]]:
    with session_scope(settings.db_url) as s:
        job = s.get(Job, job_id)
        events = [e.to_status for e in s.query(JobEvent).filter_by(job_id=job_id).order_by(JobEvent.id)]
        return job.status, job.attempts, dict(job.result or {}), events


def test_only_a_startable_row_of_its_kind_is_loaded(settings):
    eval_id = _job(settings, kind="eval")
    with pytest.raises(NotFound, match=f"synthesis job {eval_id} does not exist") as e:
        JobDriver(settings.db_url, eval_id, "synth", noun="synthesis job").load(Spec)
    assert "studio jobs ls" in e.value.fix
    with pytest.raises(NotFound):
        JobDriver(settings.db_url, 10**6, "synth").load(Spec)
    for status in (JobStatus.RUNNING, JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED):
        job_id = _job(settings, status=status)
        with pytest.raises(StudioError, match=f"is {status.value}; only a QUEUED, RETRYING or STARTING"):
            JobDriver(settings.db_url, job_id, "synth", start_new="run it again").load(Spec)
    for status in (JobStatus.QUEUED, JobStatus.RETRYING, JobStatus.STARTING):
        spec, got = JobDriver(settings.db_url, _job(settings, status=status), "synth").load(Spec)
        assert spec == Spec(n=3) and got is status


def test_claim_moves_an_unclaimed_row_to_starting_once(settings):
    by_hand = _job(settings)  # QUEUED: nobody claimed it
    claimed = _job(settings, status=JobStatus.STARTING, attempts=2)  # the scheduler's attempt 2
    for job_id, attempt in ((by_hand, 1), (claimed, 2)):
        d = JobDriver(settings.db_url, job_id, "synth")
        with session_scope(settings.db_url) as s:
            assert d.claim(s, d.check(s), "started here") == attempt
        d.to(JobStatus.RUNNING, "working")
        status, attempts, _, events = _row(settings, job_id)
        assert (status, attempts) == ("RUNNING", attempt)
        assert events == (["QUEUED", "STARTING", "RUNNING"] if job_id == by_hand else ["QUEUED", "RUNNING"])


def test_fail_and_succeed_record_the_result_and_never_overwrite_an_ending(settings):
    job_id = _job(settings, status=JobStatus.RUNNING, result={"progress": 1})
    d = JobDriver(settings.db_url, job_id, "synth")
    assert d.fail("Boom: it broke", error={"stage": "x"}) is True
    status, _, result, _ = _row(settings, job_id)
    assert status == "FAILED" and result == {"progress": 1, "error": {"stage": "x"}}
    assert d.fail("again") is False  # already ended: nothing changes
    with session_scope(settings.db_url) as s:
        assert s.get(Job, job_id).error == "Boom: it broke"

    done = _job(settings, status=JobStatus.CHECKPOINTING, result={"error": {"old": 1}, "progress": 2})
    JobDriver(settings.db_url, done, "synth").succeed({"rows": 5}, "ok")
    assert _row(settings, done)[:3] == ("SUCCEEDED", 0, {"error": {"old": 1}, "progress": 2, "rows": 5})
    replaced = _job(settings, status=JobStatus.CHECKPOINTING, result={"error": {"old": 1}})
    JobDriver(settings.db_url, replaced, "synth").succeed({"model": "m@1"}, "ok", merge=False)
    assert _row(settings, replaced)[2] == {"model": "m@1"}


def test_a_cancel_is_recorded_only_when_asked_and_not_ended(settings):
    asked = _job(settings, status=JobStatus.RUNNING, cancel_requested=True)
    not_asked = _job(settings, status=JobStatus.RUNNING)
    ended = _job(settings, status=JobStatus.RUNNING, cancel_requested=True)
    with session_scope(settings.db_url) as s:
        transition(s, ended, JobStatus.FAILED, "failed first")
    assert [JobDriver(settings.db_url, i, "synth").record_cancel("stop") for i in (asked, not_asked, ended)] \
        == [True, False, False]
    assert [_row(settings, i)[0] for i in (asked, not_asked, ended)] == ["CANCELLED", "RUNNING", "FAILED"]


def test_the_ray_submission_id_comes_from_rays_job_metadata(monkeypatch):
    monkeypatch.delenv("RAY_JOB_CONFIG_JSON_ENV_VAR", raising=False)
    assert ray_submission_id() is None
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", '{"metadata": {"job_submission_id": "studio-7-1"}}')
    assert ray_submission_id() == "studio-7-1"
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", "not json")
    assert ray_submission_id() is None
