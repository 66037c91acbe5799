"""The gateway in a live studio (`studio up` serving the tiny model, Redis cache): a call through
``studio.gateway.Client(service="eval")`` shows up in /api/usage tagged eval; a repeated
temperature-0 call is a cache hit served from Redis; a failing primary (a scripted provider that
answers 500) falls back to the studio's tiny model; a burst above a key's RPM gets 429 with
Retry-After; the official ``openai`` client works against /gateway/v1. On the tiny-model stack
shared with the evaluation e2e and the UI walk (tests/stacks.py); usage is read back by this
module's own job ids and groups."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import openai
import pytest
import redis

from studio.gateway import Client, GatewayError
from tests.e2e.test_stack import REPO, run
from tests.stacks import REDIS_URL

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
PROMPT = [{"role": "user", "content": "reverse: 1 2 3"}]


@pytest.fixture(scope="module")
def studio(tiny_stack):
    """The shared tiny-model stack (tests/stacks.py), whose gateway spec holds this module's groups
    (judge, flaky → the fake provider's 500s, ext, nokey), fallbacks, no retries and a Redis cache
    namespace of its own."""
    stack = tiny_stack.ensure()
    return {"env": stack.env, "base": stack.base, "gw": f"{stack.base}/gateway/v1",
            "namespace": stack.namespace, "admin": stack.admin}


@pytest.fixture(scope="module")
def provider(tiny_stack):
    """The fake provider the shared stack's flaky and ext groups call."""
    return tiny_stack.ensure().provider


def usage(studio, **params) -> list[dict]:
    r = httpx.get(f"{studio['base']}/api/usage", params=params,
                  headers={"Authorization": f"Bearer {studio['admin']}"})
    assert r.status_code == 200, r.text
    return r.json()["rows"]


def wait_usage(studio, predicate, **params) -> list[dict]:
    deadline = time.monotonic() + 30  # rows are written in the background, in batches
    while True:
        rows = usage(studio, **params)
        if predicate(rows) or time.monotonic() > deadline:
            return rows
        time.sleep(0.5)


def test_eval_call_is_cached_in_redis_and_recorded_as_eval(studio):
    client = Client(service="eval", job_id="eval-e2e", base_url=studio["gw"], api_key=studio["admin"])
    # min_tokens is a vLLM extension: it reaching the engine shows parameters pass through as sent.
    first = client.chat("tiny", PROMPT, max_tokens=8, min_tokens=8, temperature=0)
    assert first["object"] == "chat.completion" and first["usage"]["completion_tokens"] == 8
    assert first["studio_model_version"] == "tiny"
    info = first["studio_gateway"]
    assert info["cache_hit"] is False and info["model_group"] == "tiny"
    assert info["deployment"] == "studio/tiny"

    second = client.chat("tiny", PROMPT, max_tokens=8, min_tokens=8, temperature=0)
    assert second["studio_gateway"]["cache_hit"] is True
    assert second["studio_gateway"]["cost_usd"] == 0.0
    assert second["choices"] == first["choices"]
    assert list(redis.Redis.from_url(REDIS_URL).scan_iter(f"{studio['namespace']}:cache:*"))

    rows = wait_usage(studio, lambda rs: rs and rs[0]["calls"] >= 2, group_by="service,model,job",
                      service="eval", job="eval-e2e")
    assert [(r["service"], r["model"], r["job"], r["calls"], r["cache_hits"]) for r in rows] == \
        [("eval", "tiny", "eval-e2e", 2, 1)]
    assert rows[0]["prompt_tokens"] > 0 and rows[0]["completion_tokens"] == 8  # the hit adds none


def test_async_client_is_tagged_with_its_service(studio):
    client = Client(service="synth", job_id="synth-e2e", base_url=studio["gw"],
                    api_key=studio["admin"], max_concurrency=2)

    async def burst():
        return await asyncio.gather(*[client.acompletions("ext", f"row {i}", max_tokens=4)
                                      for i in range(4)])

    bodies = asyncio.run(burst())
    # LiteLLM sends a text completion for a chat model (gpt-4o-mini) to the chat endpoint.
    assert [b["choices"][0]["text"] for b in bodies] == [f"gpt-4o-mini says: row {i}" for i in range(4)]
    assert all(b["studio_gateway"]["cost_usd"] > 0 for b in bodies)  # LiteLLM's gpt-4o-mini price
    rows = wait_usage(studio, lambda rs: rs and rs[0]["calls"] >= 4, group_by="service,model",
                      service="synth", job="synth-e2e")
    assert [(r["service"], r["model"], r["calls"]) for r in rows] == [("synth", "ext", 4)]


def test_failing_primary_falls_back_to_the_studio_model(studio, provider):
    client = Client(service="grpo", job_id="grpo-e2e", base_url=studio["gw"], api_key=studio["admin"])
    body = client.chat("flaky", PROMPT, max_tokens=8, temperature=0.7)
    assert provider.calls["broken-e2e"] >= 1
    assert body["studio_gateway"]["model_group"] == "judge"
    assert body["studio_gateway"]["fallback_from"] == "flaky"
    assert body["studio_model_version"] == "tiny"
    rows = wait_usage(studio, lambda rs: bool(rs), group_by="service,model,deployment,job",
                      service="grpo", job="grpo-e2e")
    assert [(r["service"], r["model"], r["deployment"], r["job"], r["calls"]) for r in rows] == \
        [("grpo", "judge", "studio/tiny", "grpo-e2e", 1)]


def test_burst_over_the_keys_rpm_gets_429_with_retry_after(studio):
    r = run(["keys", "create", "--name", "bursty", "--role", "service", "--rpm", "3"], studio["env"])
    assert r.returncode == 0, r.stderr
    secret = r.stdout.strip().splitlines()[-1]
    if time.time() % 60 > 50:  # keep the burst inside one rate window
        time.sleep(61 - time.time() % 60)
    statuses, last = [], None
    with httpx.Client(base_url=studio["gw"], headers={"Authorization": f"Bearer {secret}",
                                                      "x-studio-service": "eval"}) as http:
        for i in range(5):
            last = http.post("/completions", json={"model": "ext", "prompt": f"b{i}", "max_tokens": 2})
            statuses.append(last.status_code)
    assert statuses == [200, 200, 200, 429, 429]
    assert int(last.headers["retry-after"]) >= 1
    assert "3 requests per minute" in last.json()["error"]["message"]
    client = Client(service="eval", base_url=studio["gw"], api_key=secret, max_retries=0)
    with pytest.raises(GatewayError) as err:
        client.completions("ext", "again", max_tokens=2)
    assert err.value.status == 429 and err.value.retry_after_s >= 1


def test_openai_client_against_the_gateway(studio):
    client = openai.OpenAI(base_url=studio["gw"], api_key=studio["admin"], max_retries=0)
    names = {m.id for m in client.models.list()}
    assert {"judge", "ext", "flaky", "tiny"} <= names
    out = client.chat.completions.create(model="ext", messages=[{"role": "user", "content": "hi"}])
    assert out.choices[0].message.content == "gpt-4o-mini says: hi"
    out = client.chat.completions.create(model="judge", messages=PROMPT, max_tokens=4)
    assert out.choices[0].message.content is not None
    with pytest.raises(openai.NotFoundError) as err:
        client.chat.completions.create(model="no-such-group", messages=PROMPT)
    assert "no-such-group" in str(err.value) and "judge" in str(err.value)
    with pytest.raises(openai.APIStatusError) as err:
        client.chat.completions.create(model="nokey", messages=PROMPT)
    assert err.value.status_code == 503 and "STUDIO_TEST_UNSET_KEY" in str(err.value)
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=studio["gw"], api_key="sk-studio-wrong-key-123",
                      max_retries=0).models.list()


def test_playground_streams_through_the_gateway(studio):
    headers = {"Authorization": f"Bearer {studio['admin']}", "x-studio-service": "playground"}
    body = {"model": "judge", "messages": PROMPT, "max_tokens": 6, "min_tokens": 6, "stream": True,
            "stream_options": {"include_usage": True}}
    with httpx.Client(base_url=studio["gw"], headers=headers, timeout=120) as http:
        with http.stream("POST", "/chat/completions", json=body) as r:
            assert r.status_code == 200, r.read()
            assert r.headers["content-type"].startswith("text/event-stream")
            assert r.headers["x-studio-model-version"] == "tiny"
            assert r.headers["x-studio-model-group"] == "judge"
            lines = [x for x in r.iter_lines() if x.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(x[6:]) for x in lines[:-1]]
    assert any(c["choices"] and c["choices"][0]["delta"].get("content") for c in chunks)
    assert chunks[-1]["usage"]["completion_tokens"] == 6
    rows = wait_usage(studio, lambda rs: bool(rs), group_by="service,model,deployment",
                      service="playground", model="judge")  # the UI walk's playground calls use others
    assert [(r["model"], r["deployment"], r["calls"], r["completion_tokens"]) for r in rows] == \
        [("judge", "studio/tiny", 1, 6)]


def test_synthetic_data_from_documents_on_the_tiny_model(studio, tmp_path):
    from tests.data.synth_e2e import check_synth_on_the_tiny_model
    from tests.e2e.test_stack import STUDIO

    check_synth_on_the_tiny_model(studio, tmp_path, STUDIO, REPO)
    # `studio data generate` called the tiny model through the gateway, tagged synth.
    rows = wait_usage(studio, lambda rs: any(r["model"] == "tiny" for r in rs),
                      group_by="service,model", service="synth")
    assert any(r["model"] == "tiny" and r["calls"] >= 1 for r in rows), rows
