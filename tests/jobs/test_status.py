"""The job state machine on a real database: every allowed transition works and is an event;
every other one raises IllegalTransition and changes nothing."""

from __future__ import annotations

import itertools

import pytest
from sqlalchemy import select

from studio.jobs.status import TRANSITIONS, IllegalTransition, JobStatus, can_retry, create_job, transition
from studio.store.db import session_scope
from studio.store.models import Job, JobEvent

pytestmark = pytest.mark.both_databases  # PostgreSQL too: locking, concurrent writers, constraints


def _job_in(session, status: JobStatus) -> int:
    job = create_job(session, name="t", spec={}, max_retries=1, submitted_by="test")
    job.status = status.value  # test setup: put the row where the case starts
    session.flush()
    return job.id


def test_transition_table_is_exhaustive(settings):
    pairs = list(itertools.product(JobStatus, JobStatus))
    allowed = [(a, b) for a, b in pairs if b in TRANSITIONS[a]]
    assert len(allowed) == 17  # the table as the architecture draws it; change both together
    for current, to in pairs:
        with session_scope(settings.db_url) as s:
            job_id = _job_in(s, current)
            events_before = s.scalar(select(JobEvent.id).where(JobEvent.job_id == job_id).order_by(JobEvent.id.desc()))
            if to in TRANSITIONS[current]:
                job = transition(s, job_id, to, f"case {current}->{to}")
                assert job.status == to.value
                last = s.scalars(select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.id.desc())).first()
                assert (last.from_status, last.to_status, last.reason) == (current.value, to.value, f"case {current}->{to}")
                assert last.at is not None and last.at.tzinfo is not None
                assert (job.error == f"case {current}->{to}") == (to is JobStatus.FAILED)
            else:
                with pytest.raises(IllegalTransition) as err:
                    transition(s, job_id, to, "must not happen")
                assert err.value.status_code == 409
                assert f"from {current} to {to}" in err.value.problem
                assert s.get(Job, job_id).status == current.value
                newest = s.scalar(select(JobEvent.id).where(JobEvent.job_id == job_id).order_by(JobEvent.id.desc()))
                assert newest == events_before


def test_terminal_states_and_retry_budget(settings):
    assert {s for s in JobStatus if s.is_terminal()} == {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED}
    with session_scope(settings.db_url) as s:
        job = s.get(Job, _job_in(s, JobStatus.FAILED))
        job.max_retries = 1
        job.attempts = 1
        assert can_retry(job)  # one failed attempt, one retry left
        job.attempts = 2
        assert not can_retry(job)
        job.attempts = 1
        job.cancel_requested = True
        assert not can_retry(job)
