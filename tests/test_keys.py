"""API keys against a real database: the secret is shown once and stored only as its SHA-256."""

from __future__ import annotations

import hashlib
from datetime import timedelta

import pytest
from sqlalchemy import literal, select, text

from studio.errors import Conflict, NotFound, StudioError
from studio.gateway.limits import set_key_limits
from studio.keys import (KEY_PREFIX, create_job_key, create_key, has_admin, last_use_is_stale, list_keys,
                         revoke_job_keys, revoke_key, touch_key, verify_key)
from studio.store.db import session_scope
from studio.store.models import ApiKey, utcnow

pytestmark = pytest.mark.both_databases  # PostgreSQL too: locking, concurrent writers, constraints


def test_create_returns_the_secret_once_and_stores_only_its_hash(settings):
    with session_scope(settings.db_url) as s:
        secret, info = create_key(s, "alice", "user")
    assert secret.startswith(KEY_PREFIX) and len(secret) > 40
    assert info.name == "alice" and info.role == "user" and not info.revoked
    assert secret.startswith(info.prefix) and len(info.prefix) < len(secret) - 30

    with session_scope(settings.db_url) as s:
        row = s.execute(text("SELECT * FROM api_keys WHERE name = 'alice'")).mappings().one()
    assert row["key_hash"] == hashlib.sha256(secret.encode()).hexdigest()
    # No column holds the secret (or any long part of it) in plain text.
    for column, value in row.items():
        assert secret not in str(value), column
        assert secret[len(info.prefix) :] not in str(value), column
    # And the listing never shows it.
    with session_scope(settings.db_url) as s:
        assert secret not in repr(list_keys(s))


def test_two_keys_get_different_secrets(settings):
    with session_scope(settings.db_url) as s:
        a, _ = create_key(s, "a", "user")
        b, _ = create_key(s, "b", "user")
    assert a != b


def test_verify_accepts_the_secret_and_rejects_others(settings):
    with session_scope(settings.db_url) as s:
        secret, _ = create_key(s, "svc", "service")
    with session_scope(settings.db_url) as s:
        key = verify_key(s, secret)
        assert key is not None and key.name == "svc" and key.role == "service"
        assert verify_key(s, secret + "x") is None
        assert verify_key(s, "sk-studio-wrong") is None
        assert verify_key(s, "") is None


def test_verify_is_read_only_and_a_touch_records_the_use(settings):
    with session_scope(settings.db_url) as s:
        secret, info = create_key(s, "u", "user")
    assert info.last_used_at is None
    with session_scope(settings.db_url) as s:
        key = verify_key(s, secret)
        assert last_use_is_stale(key)
    with session_scope(settings.db_url) as s:
        assert list_keys(s)[0].last_used_at is None  # verifying wrote nothing
        touch_key(s, key.id)
    with session_scope(settings.db_url) as s:
        key = verify_key(s, secret)
        assert key.last_used_at is not None and not last_use_is_stale(key)


def test_a_use_an_hour_old_is_stale(settings):
    with session_scope(settings.db_url) as s:
        secret, _ = create_key(s, "u", "user")
    old = utcnow() - timedelta(hours=1)
    with session_scope(settings.db_url) as s:
        s.scalars(select(ApiKey)).one().last_used_at = old
    with session_scope(settings.db_url) as s:
        assert last_use_is_stale(verify_key(s, secret))


def test_revoked_keys_fail_verification(settings):
    with session_scope(settings.db_url) as s:
        secret, _ = create_key(s, "temp", "user")
    with session_scope(settings.db_url) as s:
        info = revoke_key(s, "temp")
    assert info.revoked
    with session_scope(settings.db_url) as s:
        assert verify_key(s, secret) is None
        assert [k.revoked for k in list_keys(s)] == [True]
        # Revoking again is harmless.
        assert revoke_key(s, "temp").revoked


def test_revoking_an_unknown_key_is_not_found(settings):
    with session_scope(settings.db_url) as s, pytest.raises(NotFound, match="'ghost'"):
        revoke_key(s, "ghost")


def test_duplicate_name_is_a_conflict_and_keeps_the_first(settings):
    with session_scope(settings.db_url) as s:
        first, _ = create_key(s, "dup", "user")
    with pytest.raises(Conflict, match="'dup'"):
        with session_scope(settings.db_url) as s:
            create_key(s, "dup", "admin")
    with session_scope(settings.db_url) as s:
        keys = list_keys(s)
        assert [(k.name, k.role) for k in keys] == [("dup", "user")]
        assert verify_key(s, first) is not None


def test_duplicate_chosen_secret_is_a_conflict(settings):
    chosen = "a-chosen-admin-key-0123456789-abcdef"
    with session_scope(settings.db_url) as s:
        assert create_key(s, "one", "admin", secret=chosen)[0] == chosen
    with pytest.raises(Conflict):
        with session_scope(settings.db_url) as s:
            create_key(s, "two", "admin", secret=chosen)


@pytest.mark.parametrize(
    "name, role, secret, message",
    [
        ("x", "superuser", None, "unknown role 'superuser'"),
        ("", "user", None, "needs a name"),
        ("n" * 129, "user", None, "needs a name"),
        ("x", "user", "short", "too short"),
    ],
)
def test_bad_key_requests_are_studio_errors(settings, name, role, secret, message):
    with session_scope(settings.db_url) as s:
        with pytest.raises(StudioError, match=message):
            create_key(s, name, role, secret=secret)
        assert list_keys(s) == []


def test_has_admin_tracks_live_admin_keys(settings):
    with session_scope(settings.db_url) as s:
        assert not has_admin(s)
        create_key(s, "u", "user")
        assert not has_admin(s)
        create_key(s, "root", "admin")
        assert has_admin(s)
        revoke_key(s, "root")
        assert not has_admin(s)


# -- admin keys are long; job keys act for their submitter ----------------------------------------

def test_an_admin_key_shorter_than_32_characters_is_refused(settings):
    with session_scope(settings.db_url) as s:
        with pytest.raises(StudioError, match="at least 32 characters; this one has 31") as e:
            create_key(s, "root", "admin", secret="x" * 31)
        assert "STUDIO_ADMIN_KEY" in e.value.fix
        assert create_key(s, "svc", "service", secret="y" * 20)[0] == "y" * 20  # other roles: 16 is enough
        assert create_key(s, "root", "admin", secret="z" * 32)[0] == "z" * 32


def _job_key(settings, parent: str, job_id: int = 7, ttl=timedelta(hours=1)) -> str:
    with session_scope(settings.db_url) as s:
        submitter = s.scalars(select(ApiKey).where(ApiKey.name == parent)).one()
        return create_job_key(s, submitter, job_id, ttl)[0]


def test_a_job_key_carries_its_submitters_role_and_limits(settings):
    with session_scope(settings.db_url) as s:
        create_key(s, "alice", "user")
        set_key_limits(s, "alice", rpm=5, tpm=50, budget_usd=2.0)
    secret = _job_key(settings, "alice")
    with session_scope(settings.db_url) as s:
        key = verify_key(s, secret)
        alice = s.scalars(select(ApiKey).where(ApiKey.name == "alice")).one()
        assert (key.parent_id, key.job_id, key.role) == (alice.id, 7, "user")
        assert (key.rpm_limit, key.tpm_limit, key.budget_usd) == (5, 50, 2.0)
        assert utcnow() < key.expires_at <= utcnow() + timedelta(hours=1)
        # A job key made from a job key acts for the same submitter.
        assert create_job_key(s, key, 8, timedelta(hours=1))[1].job_id == 8
        assert s.scalars(select(ApiKey.parent_id).where(ApiKey.job_id == 8)).one() == alice.id
        # People's listings leave job keys out unless asked.
        assert [k.name for k in list_keys(s)] == ["alice"]
        assert [k.job_id for k in list_keys(s, job_keys=True)] == [None, 7, 8]


def test_a_job_key_is_refused_once_its_submitter_is_revoked_or_it_expires(settings):
    with session_scope(settings.db_url) as s:
        create_key(s, "alice", "user")
        create_key(s, "bob", "user")
    live, expired = _job_key(settings, "alice"), _job_key(settings, "bob", ttl=timedelta(seconds=-1))
    with session_scope(settings.db_url) as s:
        assert verify_key(s, live) is not None and verify_key(s, expired) is None
        revoke_key(s, "alice")
    with session_scope(settings.db_url) as s:
        assert verify_key(s, live) is None


def test_the_keys_of_jobs_off_ray_are_revoked(settings):
    with session_scope(settings.db_url) as s:
        create_key(s, "alice", "user")
    running, ended = _job_key(settings, "alice", job_id=1), _job_key(settings, "alice", job_id=2)
    with session_scope(settings.db_url) as s:
        assert revoke_job_keys(s, unless_job_in=select(literal(1))) == 1
    with session_scope(settings.db_url) as s:
        assert verify_key(s, running) is not None and verify_key(s, ended) is None
        assert verify_key(s, running).name.startswith("job-1-")


def test_a_budget_counts_the_spend_of_the_submitter_and_all_its_job_keys(settings):
    from studio.gateway.usage import key_spent_usd
    from studio.store.models import UsageRecord

    with session_scope(settings.db_url) as s:
        create_key(s, "alice", "user")
        create_key(s, "bob", "user")
    _job_key(settings, "alice", job_id=1)
    _job_key(settings, "alice", job_id=2)
    with session_scope(settings.db_url) as s:
        ids = dict(s.execute(select(ApiKey.name, ApiKey.id)).all())
        job1, job2 = (i for n, i in ids.items() if n.startswith("job-"))
        for key_id, cost in ((ids["alice"], 0.5), (job1, 0.25), (job2, 0.125), (ids["bob"], 4.0)):
            s.add(UsageRecord(key_id=key_id, cost_usd=cost, service="t", model_group="m", endpoint="chat",
                              latency_ms=1.0))
    with session_scope(settings.db_url) as s:
        assert key_spent_usd(s, ids["alice"]) == key_spent_usd(s, job1) == key_spent_usd(s, job2) == 0.875
        assert key_spent_usd(s, ids["bob"]) == 4.0
