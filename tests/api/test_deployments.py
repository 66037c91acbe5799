"""/api/deployments outside a running studio (the live lifecycle is tests/deployments/
test_lifecycle.py): listing shows the stored rows, deploying and evicting say how to fix it,
and need an admin key (restart too)."""

from __future__ import annotations

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
