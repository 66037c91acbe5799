"""Which key a job spends on (``studio.jobs.scheduler.submitter_key``), on a real database: the
owner's; for rows without an owner, the training job's submitter (after-training evals), the
operator's admin key (CLI), the key a legacy row names; none for a key that is gone or revoked."""

from __future__ import annotations

import pytest

from studio.jobs.submission import submitter_key
from studio.jobs.status import create_job
from studio.keys import create_key, revoke_key
from studio.store.db import session_scope
from studio.store.models import Job


def _job(s, submitted_by: str | None, owner: int | None = None) -> int:
    job = create_job(s, name="j", spec={}, max_retries=0, submitted_by=submitted_by)
    job.owner_key_id = owner
    s.flush()
    return job.id


@pytest.fixture
def keys(settings) -> dict[str, int]:
    with session_scope(settings.db_url) as s:
        return {name: create_key(s, name, role)[1].id
                for name, role in (("root", "admin"), ("root2", "admin"), ("alice", "user"))}


def test_the_key_a_job_spends_on(settings, keys):
    with session_scope(settings.db_url) as s:
        owned = _job(s, "alice", keys["alice"])
        cli_train = _job(s, "cli:operator")
        cases = {
            owned: "alice",
            _job(s, "cli"): "root",  # `studio data generate`
            cli_train: "root",  # the oldest live admin key
            _job(s, "gate:cli:operator"): "root",  # a gate eval the CLI's promote queued
            _job(s, f"job:{owned}"): "alice",  # an after-training eval of alice's job
            _job(s, f"job:{cli_train}"): "root",  # ... of a job the operator queued
            _job(s, "alice"): "alice",  # queued before owners were recorded
            _job(s, "ray job submit"): None,
            _job(s, "a-deleted-key"): None,
            _job(s, None): None,
        }
        got = {job_id: getattr(submitter_key(s, s.get(Job, job_id)), "name", None) for job_id in cases}
    assert got == cases


def test_a_revoked_owner_gives_no_key_and_the_next_admin_serves_the_cli(settings, keys):
    with session_scope(settings.db_url) as s:
        owned, cli = _job(s, "alice", keys["alice"]), _job(s, "cli:operator")
        revoke_key(s, "alice")
        revoke_key(s, "root")
    with session_scope(settings.db_url) as s:
        assert submitter_key(s, s.get(Job, owned)) is None
        assert submitter_key(s, s.get(Job, cli)).name == "root2"
