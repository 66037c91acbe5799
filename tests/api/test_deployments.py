"""/api/deployments outside a running studio (the live lifecycle is tests/deployments/
test_lifecycle.py): listing shows the stored rows, deploying and evicting say how to fix it,
and need an admin key (restart too, and `studio serve restart`, which calls the route)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from studio.api.app import create_app
from tests.loopback import ServerThread

RECIPE = {"name": "tiny2", "deployment": {"engine": {"model": "org/model"}}}


def test_deployments_api_outside_a_studio_says_how_to_fix_it(client, admin_key, user_key):
    admin = {"Authorization": f"Bearer {admin_key}"}
    assert client.get("/api/deployments", headers=admin).json() == []  # stored rows; none here
    r = client.post("/api/deployments", json=RECIPE, headers=admin)
    assert r.status_code == 503 and "studio up" in r.json()["fix"]
    assert client.delete("/api/deployments/tiny2", headers=admin).status_code == 503
    r = client.post("/api/deployments", json=RECIPE,
                    headers={"Authorization": f"Bearer {user_key}"})
    assert r.status_code == 403


def test_restart_is_an_admins_and_needs_a_running_studio(client, admin_key, user_key):
    r = client.post("/api/deployments/tiny2/restart", headers={"Authorization": f"Bearer {user_key}"})
    assert r.status_code == 403 and "admin" in r.json()["detail"]
    r = client.post("/api/deployments/tiny2/restart", headers={"Authorization": f"Bearer {admin_key}"})
    assert r.status_code == 503 and "studio up" in r.json()["fix"]


def test_cli_restart_calls_the_route_and_says_why_it_was_refused(settings, admin_key, user_key):
    api = ServerThread(create_app(settings)).start()
    env = {k: v for k, v in os.environ.items() if k not in ("STUDIO_ADMIN_KEY", "STUDIO_API_KEY")}
    env.update(STUDIO_HOME=str(settings.home_abs), STUDIO_DATABASE_URL=settings.db_url,
               STUDIO_HTTP_HOST="127.0.0.1", STUDIO_HTTP_PORT=str(api.port))

    def restart(key: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(Path(sys.executable).with_name("studio")), "serve", "restart", "tiny2"],
                              env={**env, "STUDIO_API_KEY": key}, capture_output=True, text=True, timeout=120)

    try:
        r = restart(user_key)  # the route's own refusal, said by the CLI
        assert r.returncode == 1 and "restart of 'tiny2' refused (403)" in r.stderr, r.stderr
        assert "admin" in r.stderr
        r = restart(admin_key)  # an admin's call reaches the route: no studio runs here
        assert r.returncode == 1 and "refused (503)" in r.stderr and "studio up" in r.stderr, r.stderr
    finally:
        api.stop()
