"""Health, authentication and the error shape of /api/*."""

from __future__ import annotations

from fastapi.testclient import TestClient

from studio import __version__
from studio.api.app import create_app
from studio.api.deps import get_settings
from studio.settings import StudioSettings
from tests.api.checks import assert_problem, bearer


def test_healthz_needs_no_key(client):
    r = client.get("/healthz")
    assert r.status_code == 200
    assert r.json() == {"status": "ok", "version": __version__}


def test_me_without_a_key_is_401_problem_json(client):
    r = client.get("/api/me")
    body = assert_problem(r, 401, "missing API key", "Authorization: Bearer")
    assert body["title"] == "Unauthorized"
    assert r.headers["www-authenticate"] == "Bearer"


def test_me_with_another_scheme_is_401(client, user_key):
    assert_problem(client.get("/api/me", headers={"Authorization": f"Basic {user_key}"}), 401,
                   "missing API key")


def test_me_with_a_wrong_key_is_401(client, user_key):
    assert_problem(client.get("/api/me", headers=bearer(user_key + "x")), 401, "invalid or revoked")
    assert_problem(client.get("/api/me", headers=bearer("sk-studio-nope")), 401, "invalid or revoked")


def test_me_with_a_key_names_it(client, user_key, admin_key):
    assert client.get("/api/me", headers=bearer(user_key)).json() == {"id": 1, "name": "alice", "role": "user"}
    assert client.get("/api/me", headers=bearer(admin_key)).json() == {"id": 2, "name": "root", "role": "admin"}


def test_metrics_need_a_key(client, user_key):
    assert_problem(client.get("/metrics"), 401)
    r = client.get("/metrics", headers=bearer(user_key))
    assert r.status_code == 200 and "python_info" in r.text


def test_unknown_route_is_404_problem_json(client, user_key):
    assert_problem(client.get("/api/nothing-here", headers=bearer(user_key)), 404, "Not Found")


def test_wrong_method_is_405_problem_json(client, user_key):
    assert_problem(client.put("/api/me", headers=bearer(user_key)), 405)


def test_unreachable_database_is_503_naming_it(settings, user_key):
    app = create_app(settings)
    down = StudioSettings(home=settings.home, database_url="postgresql://postgres@127.0.0.1:1/gone")
    app.dependency_overrides[get_settings] = lambda: down
    with TestClient(app) as client:
        r = client.get("/api/me", headers=bearer(user_key))
        assert_problem(r, 503, "cannot reach the database", "127.0.0.1:1/gone")
        assert "STUDIO_DATABASE_URL" in r.json()["fix"]
        assert client.get("/healthz").status_code == 200  # liveness does not touch the database


def test_unexpected_errors_keep_the_error_shape(settings):
    app = create_app(settings)

    @app.get("/api/boom")
    @app.get("/v1/boom")
    def boom():
        raise RuntimeError("internal detail")

    with TestClient(app, raise_server_exceptions=False) as client:
        r = client.get("/api/boom")
        assert_problem(r, 500, "internal error (RuntimeError)")
        assert "internal detail" not in r.text
        r = client.get("/v1/boom")
        assert r.status_code == 500
        assert r.json()["error"]["type"] == "server_error"
