"""/v1/* without a Serve application: auth, the 503 when the config serves no models, the request
fields, caps and key limits decided before the Router is asked, all in OpenAI's error shape; the
Router's bounded name cache. Serving itself is tested end to end in
tests/deployments/test_router.py."""

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


# ---- /v1 request fields, caps and the key's limits: all decided before the Router is asked, so
# they hold (and are tested) without engines; a valid request then meets the 503 above.

CHAT = [{"role": "user", "content": "hi"}]


def _post(client, key, body, path="/v1/chat/completions"):
    return client.post(path, headers={"Authorization": f"Bearer {key}"}, json=body)


def test_unknown_fields_are_one_400_naming_each(client, user_key):
    body = {"model": "tiny", "messages": CHAT, "api_base": "http://127.0.0.1:1",
            "request_id": "someone-elses", "priority": -100, "chat_template": "{{ evil }}",
            "kv_transfer_params": {}, "prompt_embeds": "AAAA", "guided_json": {}}
    r = _post(client, user_key, body)
    assert r.status_code == 400
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error" and error["code"] == 400
    for field in ("api_base", "request_id", "priority", "chat_template", "kv_transfer_params",
                  "prompt_embeds", "guided_json"):
        assert field in error["message"], field
    assert "structured_outputs" in error["message"]  # the hint for guided_json
    r = _post(client, user_key, {"model": "tiny", "prompt": "p", "mock_response": "x"},
              "/v1/completions")
    assert r.status_code == 400 and "mock_response" in r.json()["error"]["message"]


def test_engine_and_openai_fields_pass_validation(client, user_key):
    chat = {"model": "tiny", "messages": CHAT, "max_tokens": 8, "temperature": 0, "top_p": 1,
            "n": 8, "stop": ["a", "b", "c", "d"], "seed": 1, "user": "u", "logit_bias": {"7": -100},
            "logprobs": True, "top_logprobs": 2, "stream": True,
            "stream_options": {"include_usage": True}, "top_k": 4, "min_p": 0.1,
            "repetition_penalty": 1.1, "min_tokens": 2, "ignore_eos": True,
            "skip_special_tokens": False, "structured_outputs": {"regex": "[0-9]+"},
            "response_format": {"type": "json_object"}, "tool_choice": "none",
            "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]}
    assert _post(client, user_key, chat).status_code == 503  # valid: it got to the Router
    for prompt in ("p", ["p", "q"], [1, 2, 3], [[1, 2], [3]]):
        legacy = {"model": "tiny", "prompt": prompt, "echo": True, "suffix": "s", "best_of": 2,
                  "logprobs": 3, "max_tokens": 8192}
        assert _post(client, user_key, legacy, "/v1/completions").status_code == 503, prompt


@pytest.mark.parametrize(("change", "named"), [
    ({"n": 9}, "STUDIO_MAX_N"), ({"max_tokens": 8193}, "STUDIO_MAX_TOKENS"),
    ({"max_tokens": 0}, "max_tokens"), ({"model": "m" * 257}, "model"),
    ({"stop": [f"s{i}" for i in range(10_000)]}, "10000"), ({"stop": "s" * 257}, "stop"),
    ({"messages": CHAT * 2049}, "messages"), ({"seed": 2**70}, "seed"),
    ({"stream_options": {"include_usage": True, "x": 1}}, "stream_options.x"),
])
def test_caps_are_a_400_naming_the_field(client, user_key, change, named):
    r = _post(client, user_key, {"model": "tiny", "messages": CHAT, **change})
    assert r.status_code == 400, r.text
    assert named in r.json()["error"]["message"]


def test_caps_follow_the_settings(settings, user_key, monkeypatch):
    from fastapi.testclient import TestClient

    from studio.api.app import create_app

    body = {"model": "tiny", "prompt": "p", "n": 12, "best_of": 12, "max_tokens": 20_000}
    with TestClient(create_app(settings.model_copy(update={"max_n": 16,
                                                           "max_tokens": 32_768}))) as c:
        assert _post(c, user_key, body, "/v1/completions").status_code == 503
        assert _post(c, user_key, {**body, "n": 17}, "/v1/completions").status_code == 400


def test_malformed_bodies_are_400s(client, user_key):
    headers = {"Authorization": f"Bearer {user_key}", "Content-Type": "application/json"}
    r = client.post("/v1/chat/completions", headers=headers, content=b"{not json")
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]["message"]
    r = client.post("/v1/chat/completions", headers=headers, content=b"[1, 2]")
    assert r.status_code == 400 and "JSON object" in r.json()["error"]["message"]
    r = client.post("/v1/completions", headers=headers, content=b'{"model": "tiny"}')
    assert r.status_code == 400 and "prompt: Field required" in r.json()["error"]["message"]


def _limited_key(settings, name: str, **limits) -> str:
    from studio.gateway.limits import set_key_limits
    from studio.keys import create_key
    from studio.store.db import session_scope

    with session_scope(settings.db_url) as s:
        secret = create_key(s, name, "service")[0]
        set_key_limits(s, name, **limits)
    return secret


def test_v1_applies_the_keys_rpm(client, settings, user_key):
    import time

    key = _limited_key(settings, "v1-rpm", rpm=2)
    if time.time() % 60 > 55:  # keep the burst inside one fixed-minute window
        time.sleep(61 - time.time() % 60)
    body = {"model": "tiny", "messages": CHAT}
    statuses = [_post(client, key, body) for _ in range(4)]
    assert [r.status_code for r in statuses] == [503, 503, 429, 429]
    last = statuses[-1]
    assert 1 <= int(last.headers["retry-after"]) <= 60
    error = last.json()["error"]
    assert error["type"] == "rate_limit_error" and "2 requests per minute" in error["message"]
    assert _post(client, user_key, body).status_code == 503  # another key is not held back


def test_v1_applies_the_keys_tpm_and_budget(client, settings):
    import asyncio

    from studio.gateway.limits import KeyLimits
    from studio.gateway.usage import UsageRow, UsageWriter
    from studio.store.db import session_scope
    from studio.store.models import ApiKey

    tpm_key = _limited_key(settings, "v1-tpm", tpm=100)
    body = {"model": "tiny", "messages": CHAT}
    assert _post(client, tpm_key, body).status_code == 503
    with session_scope(settings.db_url) as s:
        row = s.query(ApiKey).filter_by(name="v1-tpm").one()
        limits = KeyLimits.of(row)
    limiter, _ = client.app.state.v1_limits
    asyncio.run(limiter.count_tokens(limits, 150))  # what a streamed answer's usage adds
    r = _post(client, tpm_key, body)
    assert r.status_code == 429 and "100 tokens per minute" in r.json()["error"]["message"]

    budget_key = _limited_key(settings, "v1-budget", budget_usd=0.5)
    with session_scope(settings.db_url) as s:
        key_id = s.query(ApiKey).filter_by(name="v1-budget").one().id
    writer = UsageWriter(settings.db_url)
    writer.record(UsageRow("api", "chat", "gpt", 1.0, key_id=key_id, key_name="v1-budget",
                           cost_usd=0.75))
    writer.close()
    r = _post(client, budget_key, body)
    assert r.status_code == 429 and "budget" in r.json()["error"]["message"]
    assert r.headers["retry-after"] == "3600"


def test_the_openapi_shows_the_request_schemas(client):
    spec = client.get("/api/openapi.json").json()
    for path, model in (("/v1/chat/completions", "ChatCompletionRequest"),
                        ("/v1/completions", "CompletionRequest"),
                        ("/gateway/v1/chat/completions", "ChatCompletionRequest")):
        ref = spec["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]
        assert ref["$ref"].endswith(model), (path, ref)
    assert "top_k" in spec["components"]["schemas"]["ChatCompletionRequest"]["properties"]


def test_the_routers_name_cache_is_bounded():
    from deployments.routing import NameCache

    cache = NameCache(max_size=100)
    for i in range(10_000):  # a caller sending endless made-up model names
        cache.put(f"no-such-model-{i}", {"error": 404}, ttl_s=60)
    assert len(cache) == 100
    assert cache.get("no-such-model-9999") == {"error": 404}
    assert cache.get("no-such-model-0") is None  # the oldest went first
    cache.put("tiny", "target", ttl_s=0)
    assert cache.get("tiny") is None  # expired
