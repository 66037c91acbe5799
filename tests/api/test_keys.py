"""/api/keys: admin only; a key created over HTTP works until it is revoked."""

from __future__ import annotations

import pytest

from tests.api.checks import assert_problem, bearer

pytestmark = pytest.mark.both_databases  # PostgreSQL too: locking, concurrent writers, constraints


@pytest.mark.parametrize(
    "method, path, body",
    [("get", "/api/keys", None), ("post", "/api/keys", {"name": "x"}), ("delete", "/api/keys/root", None)],
)
def test_non_admin_keys_get_403(client, user_key, method, path, body):
    kwargs = {"json": body} if body else {}
    r = client.request(method, path, headers=bearer(user_key), **kwargs)
    assert_problem(r, 403, "needs an admin key", "'alice'", "'user'")


def test_keys_need_a_key(client):
    assert_problem(client.get("/api/keys"), 401)


def test_admin_creates_lists_and_revokes_keys(client, admin_key):
    admin = bearer(admin_key)
    r = client.post("/api/keys", json={"name": "ci", "role": "service"}, headers=admin)
    assert r.status_code == 201, r.text
    created = r.json()
    secret = created["key"]
    assert created["name"] == "ci" and created["role"] == "service" and not created["revoked"]
    assert secret.startswith(created["prefix"])

    # The new key works.
    me = client.get("/api/me", headers=bearer(secret)).json()
    assert (me["name"], me["role"]) == ("ci", "service")

    listed = client.get("/api/keys", headers=admin)
    assert listed.status_code == 200
    assert [(k["name"], k["role"], k["revoked"]) for k in listed.json()] == [
        ("root", "admin", False), ("ci", "service", False)]
    assert secret not in listed.text and "key_hash" not in listed.text

    r = client.delete("/api/keys/ci", headers=admin)
    assert r.status_code == 200 and r.json()["revoked"] is True

    # And stops working once revoked.
    assert_problem(client.get("/api/me", headers=bearer(secret)), 401, "invalid or revoked")
    assert [k["revoked"] for k in client.get("/api/keys", headers=admin).json()] == [False, True]


def test_role_defaults_to_user(client, admin_key):
    r = client.post("/api/keys", json={"name": "plain"}, headers=bearer(admin_key))
    assert r.status_code == 201 and r.json()["role"] == "user"


def test_duplicate_key_name_is_409(client, admin_key):
    r = client.post("/api/keys", json={"name": "root"}, headers=bearer(admin_key))
    assert_problem(r, 409, "'root'")
    assert [k["name"] for k in client.get("/api/keys", headers=bearer(admin_key)).json()] == ["root"]


@pytest.mark.parametrize(
    "body, field",
    [({"name": "x", "role": "god"}, "role"), ({"role": "user"}, "name"), ({"name": ""}, "name"),
     ({"name": "x", "colour": "red"}, "colour")],
)
def test_invalid_key_request_is_422_naming_the_field(client, admin_key, body, field):
    r = client.post("/api/keys", json=body, headers=bearer(admin_key))
    problem = assert_problem(r, 422, "invalid request", f"{field}:")
    assert field in [e["field"] for e in problem["errors"]]


def test_revoking_an_unknown_key_is_404(client, admin_key):
    assert_problem(client.delete("/api/keys/ghost", headers=bearer(admin_key)), 404, "'ghost'")


def test_a_request_records_the_keys_last_use_after_answering(client, admin_key, settings):
    """The key check is read-only; last_used_at is written off the request, once a minute at most."""
    import time

    from studio.keys import list_keys
    from studio.store.db import session_scope

    def last_used() -> str | None:
        with session_scope(settings.db_url) as s:
            return next(k.last_used_at for k in list_keys(s) if k.name == "root")

    assert client.get("/api/me", headers=bearer(admin_key)).status_code == 200
    deadline = time.monotonic() + 10
    while last_used() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    first = last_used()
    assert first is not None
    assert client.get("/api/me", headers=bearer(admin_key)).status_code == 200
    time.sleep(0.3)
    assert last_used() == first  # within the minute: not written again


def test_a_job_key_stops_working_when_its_submitter_is_revoked(client, admin_key, user_key, settings):
    from datetime import timedelta

    from sqlalchemy import select

    from studio.keys import create_job_key
    from studio.store.db import session_scope
    from studio.store.models import ApiKey

    with session_scope(settings.db_url) as s:
        alice = s.scalars(select(ApiKey).where(ApiKey.name == "alice")).one()
        job_secret = create_job_key(s, alice, 3, timedelta(hours=1))[0]
    assert client.get("/api/me", headers=bearer(job_secret)).json()["role"] == "user"
    listed = client.get("/api/keys", params={"job_keys": "true"}, headers=bearer(admin_key)).json()
    assert [k["job_id"] for k in listed] == [None, None, 3]
    assert [k["name"] for k in client.get("/api/keys", headers=bearer(admin_key)).json()] == ["root", "alice"]

    assert client.delete("/api/keys/alice", headers=bearer(admin_key)).status_code == 200
    assert_problem(client.get("/api/me", headers=bearer(job_secret)), 401, "invalid or revoked")
    # The gateway's surface checks the same way (before it looks for a deployed gateway).
    r = client.post("/gateway/v1/chat/completions", headers=bearer(job_secret),
                    json={"model": "tiny", "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 401
