"""The gateway's HTTP surface without Ray (``tests/gateway/live.py``: the real API route and a real
GatewayService, the scripted provider at the edge): a burst over a key's RPM gets 429 with
Retry-After, and ``Client`` raises it as a GatewayError carrying the wait; the official ``openai``
client works against /gateway/v1; a group that hangs with no fallback is one clean 504;
``stream: true`` is refused for an external group and for a studio that serves no models, naming
why (the streamed answer itself is in the e2e test)."""

from __future__ import annotations

import time
import uuid

import httpx
import openai
import pytest

from studio.gateway import Client, GatewayError
from studio.gateway.limits import set_key_limits
from studio.keys import create_key
from studio.store.db import session_scope
from tests.gateway.live import start_live_gateway


@pytest.fixture
def live(settings, provider):
    tag = uuid.uuid4().hex[:6]
    gw, stop = start_live_gateway(settings, {
        "groups": [{"name": "ext", "provider": "hosted_vllm", "model": f"echo-{tag}",
                    "api_base": provider.base},
                   {"name": "stuck", "provider": "hosted_vllm", "model": f"hang-{tag}",
                    "api_base": provider.base, "timeout_s": 1}],
        "router": {"num_retries": 0}, "cache": {"namespace": f"studio-test-http-{tag}"}})
    gw.tag = tag
    yield gw
    stop()


def test_a_burst_over_the_keys_rpm_gets_429_with_retry_after(live, settings):
    with session_scope(settings.db_url) as s:
        secret, _ = create_key(s, "bursty", "service")
        set_key_limits(s, "bursty", rpm=3)
    if time.time() % 60 > 50:  # keep the burst inside one fixed-minute window
        time.sleep(61 - time.time() % 60)
    statuses, last = [], None
    with httpx.Client(base_url=live.url, headers={"Authorization": f"Bearer {secret}",
                                                  "x-studio-service": "eval"}) as http:
        for i in range(5):
            last = http.post("/completions", json={"model": "ext", "prompt": f"b{i}",
                                                   "max_tokens": 2})
            statuses.append(last.status_code)
    assert statuses == [200, 200, 200, 429, 429]
    assert 1 <= int(last.headers["retry-after"]) <= 60
    assert "3 requests per minute" in last.json()["error"]["message"]
    assert last.json()["error"]["type"] == "rate_limit_error"
    client = Client(service="eval", base_url=live.url, api_key=secret, max_retries=0)
    with pytest.raises(GatewayError) as err:
        client.completions("ext", "again", max_tokens=2)
    assert err.value.status == 429 and err.value.retry_after_s >= 1
    rows = live.usage(group_by="key", key="bursty")
    assert [(r["calls"], r["errors"]) for r in rows] == [(6, 3)]  # refusals are recorded too


def test_the_openai_client_works_against_the_gateway(live):
    client = openai.OpenAI(base_url=live.url, api_key=live.key, max_retries=0)
    assert {m.id for m in client.models.list()} == {"ext", "stuck"}
    out = client.chat.completions.create(model="ext", messages=[{"role": "user", "content": "hi"}])
    assert out.choices[0].message.content == f"echo-{live.tag} says: hi"
    with pytest.raises(openai.NotFoundError) as err:
        client.chat.completions.create(model="no-such-group", messages=[])
    assert "no-such-group" in str(err.value) and "ext, stuck" in str(err.value)
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=live.url, api_key="sk-studio-wrong-key-123",
                      max_retries=0).models.list()


def test_a_hanging_group_without_fallback_is_one_clean_504(live):
    client = Client(service="eval", base_url=live.url, api_key=live.key, max_retries=0)
    with pytest.raises(GatewayError) as err:
        client.chat("stuck", [{"role": "user", "content": "hi"}])
    assert err.value.status == 504
    assert "group 'stuck' timed out" in str(err.value)
    assert "timeout_s" in str(err.value) or "fallback" in str(err.value)


def test_streams_are_refused_where_the_gateway_cannot_stream(live):
    headers = {"Authorization": f"Bearer {live.key}", "x-studio-service": "playground"}
    with httpx.Client(base_url=live.url, headers=headers) as http:
        r = http.post("/chat/completions", json={"model": "ext", "stream": True,
                                                 "messages": [{"role": "user", "content": "hi"}]})
        assert r.status_code == 400
        assert "streams only studio-served models" in r.json()["error"]["message"]
        r = http.post("/chat/completions", json={"model": "tiny", "stream": True,
                                                 "messages": [{"role": "user", "content": "hi"}]})
        assert r.status_code == 503 and "serves no models" in r.json()["error"]["message"]
    rows = live.usage(group_by="service,model", service="playground")
    assert sorted((r["model"], r["calls"], r["errors"]) for r in rows) == \
        [("ext", 1, 1), ("tiny", 1, 1)]


def test_a_bad_job_concurrency_header_is_a_400(live):
    for value in ("two", "0", "-3"):
        r = httpx.post(f"{live.url}/chat/completions", json={"model": "ext", "messages": []},
                       headers={"Authorization": f"Bearer {live.key}",
                                "x-studio-job-concurrency": value})
        assert r.status_code == 400, (value, r.text)
        assert "x-studio-job-concurrency must be a positive integer" in r.json()["error"]["message"]
