"""/v1/* without a Serve application: auth, and the 503 when the config serves no models, both in
OpenAI's error shape. Serving itself is tested end to end in tests/deployments/test_router.py."""

from __future__ import annotations

import pytest


@pytest.mark.parametrize("path", ["/v1/models", "/v1/chat/completions", "/v1/completions"])
def test_v1_needs_a_key(client, path):
    r = client.get(path) if path.endswith("models") else client.post(path, json={"model": "x"})
    assert r.status_code == 401
    assert r.json()["error"]["type"] == "authentication_error" and r.json()["error"]["code"] == 401


def test_no_models_configured_is_a_503_that_says_how_to_fix_it(client, admin_key):
    headers = {"Authorization": f"Bearer {admin_key}"}
    for r in (client.get("/v1/models", headers=headers),
              client.post("/v1/chat/completions", headers=headers,
                          json={"model": "tiny", "messages": [{"role": "user", "content": "hi"}]})):
        assert r.status_code == 503
        error = r.json()["error"]
        assert error["type"] == "service_unavailable"
        assert "no models are served" in error["message"] and "models:" in error["message"]
