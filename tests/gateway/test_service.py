"""GatewayService against a scripted OpenAI-compatible provider on loopback (the external edge):
fallbacks on 500 and on a hang, one clean error when all fail, the in-process cache, Redis down,
the missing-key message, and the usage rows, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import os
import uuid

import pytest
from sqlalchemy import select

import studio.gateway  # noqa: F401 — LITELLM_LOCAL_MODEL_COST_MAP before litellm loads
from studio.gateway.service import GatewayService
from studio.gateway.spec import load_gateway_spec
from studio.store.db import session_scope
from studio.store.models import UsageRecord
from tests.gateway.test_cache_and_limits import closed_port_url

MSG = [{"role": "user", "content": "hi"}]
CTX = {"key_id": 7, "key_name": "k7", "service": "eval", "job_id": "eval-1"}


def make_spec(provider, **extra):
    os.environ["GW_TEST_FAKE_KEY"] = "sk-fake-test-123"
    tag = uuid.uuid4().hex[:6]  # fresh model names: the fake counts calls per name
    groups = [
        {"name": "primary", "provider": "hosted_vllm", "model": f"broken-{tag}", "api_base": provider.base},
        {"name": "slow", "provider": "hosted_vllm", "model": f"hang-{tag}", "api_base": provider.base,
         "timeout_s": 1},
        {"name": "backup", "provider": "openai", "model": "gpt-4o-mini", "api_base": provider.base,
         "api_key_env": "GW_TEST_FAKE_KEY"},
        {"name": "nokey", "provider": "anthropic", "model": "claude-3-5-haiku-20241022",
         "api_key_env": "GW_TEST_SURELY_UNSET_KEY"},
    ]
    spec = {"groups": groups, "fallbacks": {"primary": ["backup"], "slow": ["backup"]},
            "router": {"num_retries": 1, "retry_after_s": 0, "cooldown_time_s": 60},
            "cache": {"namespace": f"studio-test-{tag}"}, **extra}
    return load_gateway_spec(spec), tag


def call(svc, endpoint, body, ctx=CTX):
    return asyncio.run(svc.handle(endpoint, body, ctx))


@pytest.fixture
def service(settings, provider):
    spec, tag = make_spec(provider)
    svc = GatewayService(spec, None, settings.db_url)
    svc.tag = tag
    yield svc
    svc.close()


def test_a_failing_primary_falls_back_after_its_retries(service, provider):
    status, body, _ = call(service, "chat", {"model": "primary", "messages": MSG, "temperature": 0.5})
    assert status == 200
    assert body["choices"][0]["message"]["content"] == "gpt-4o-mini says: hi"
    assert body["studio_gateway"]["model_group"] == "backup"
    assert body["studio_gateway"]["fallback_from"] == "primary"
    assert body["studio_gateway"]["deployment"] == "openai/gpt-4o-mini"
    assert body["studio_gateway"]["cost_usd"] > 0  # LiteLLM's price map knows gpt-4o-mini
    assert provider.calls[f"broken-{service.tag}"] == 2  # the call and one retry


def test_a_hanging_backend_times_out_and_falls_back(service, provider):
    status, body, _ = call(service, "completions", {"model": "slow", "prompt": "p", "max_tokens": 2})
    assert status == 200 and body["studio_gateway"]["model_group"] == "backup"
    assert provider.calls[f"hang-{service.tag}"] >= 1


def test_when_everything_fails_the_caller_gets_one_clean_error(settings, provider):
    spec, tag = make_spec(provider, fallbacks={"primary": ["nokey"]})
    svc = GatewayService(spec, None, settings.db_url)
    try:
        status, body, _ = call(svc, "chat", {"model": "primary", "messages": MSG})
    finally:
        svc.close()
    message = body["error"]["message"]
    assert status == 503 and "primary: group 'primary' failed" in message
    assert "GW_TEST_SURELY_UNSET_KEY" in message and "export GW_TEST_SURELY_UNSET_KEY" in message


def test_deterministic_repeat_is_served_from_the_in_process_cache(service, provider):
    body = {"model": "backup", "messages": [{"role": "user", "content": service.tag}], "temperature": 0}
    _, first, h1 = call(service, "chat", body)
    calls = provider.calls["gpt-4o-mini"]
    _, second, h2 = call(service, "chat", {**body, "user": "another-caller"})
    assert (h1["x-studio-cache"], h2["x-studio-cache"]) == ("miss", "hit")
    assert second["studio_gateway"]["cache_hit"] is True and second["studio_gateway"]["cost_usd"] == 0
    assert second["choices"] == first["choices"]
    assert provider.calls["gpt-4o-mini"] == calls  # the provider was not asked again
    _, third, _ = call(service, "chat", {**body, "temperature": 0.9})
    assert third["studio_gateway"]["cache_hit"] is False


def test_redis_down_still_answers_and_caches_in_process(settings, provider):
    spec, tag = make_spec(provider)
    svc = GatewayService(spec, None, settings.db_url, redis_url=closed_port_url())
    body = {"model": "backup", "messages": [{"role": "user", "content": tag}], "seed": 1}
    try:
        s1, b1, _ = call(svc, "chat", body)
        s2, b2, _ = call(svc, "chat", body)
    finally:
        svc.close()
    assert (s1, s2) == (200, 200)
    assert b2["studio_gateway"]["cache_hit"] is True


def test_bad_requests_and_unknown_groups_are_named(service):
    status, body, _ = call(service, "chat", {"model": "nope", "messages": MSG})
    assert status == 404
    assert "unknown model group 'nope'" in body["error"]["message"]
    assert "backup, nokey, primary, slow" in body["error"]["message"]
    status, body, _ = call(service, "chat", {"model": "backup"})
    assert status == 400 and "messages: Field required" in body["error"]["message"]
    status, body, _ = call(service, "chat", {"model": "backup", "messages": MSG, "stream": True})
    assert status == 400 and "stream" in body["error"]["message"]


def test_every_call_is_a_usage_row(service):
    call(service, "chat", {"model": "backup", "messages": MSG, "temperature": 0})
    call(service, "chat", {"model": "backup", "messages": MSG, "temperature": 0})
    call(service, "chat", {"model": "nope", "messages": MSG}, {**CTX, "service": "synth"})
    service.close()  # flushes the queue
    with session_scope(service.db_url) as s:
        rows = s.scalars(select(UsageRecord).order_by(UsageRecord.id)).all()
        got = [(r.service, r.job_id, r.key_name, r.model_group, r.deployment, r.cache_hit, r.status,
                r.prompt_tokens, r.completion_tokens, r.cost_usd > 0) for r in rows]
    assert got == [
        ("eval", "eval-1", "k7", "backup", "openai/gpt-4o-mini", False, 200, 7, 3, True),
        ("eval", "eval-1", "k7", "backup", "openai/gpt-4o-mini", True, 200, 0, 0, False),
        ("synth", "eval-1", "k7", "nope", None, False, 404, 0, 0, False),
    ]


def test_a_deployment_that_keeps_failing_is_cooled_down(settings, provider):
    tag = uuid.uuid4().hex[:6]
    pool = {"name": "pool", "provider": "hosted_vllm", "api_base": provider.base}
    spec = load_gateway_spec({"groups": [  # one group, two deployments, load-balanced
        {**pool, "model": f"broken-{tag}"}, {**pool, "model": f"echo-{tag}"}],
        "router": {"num_retries": 2, "allowed_fails": 1, "cooldown_time_s": 60},
        "cache": {"namespace": f"studio-test-{tag}"}})
    svc = GatewayService(spec, None, settings.db_url)
    try:
        answers = [call(svc, "chat", {"model": "pool",
                                      "messages": [{"role": "user", "content": str(i)}]})
                   for i in range(12)]
    finally:
        svc.close()
    assert [(s, b["studio_gateway"]["deployment"]) for s, b, _ in answers] == \
        [(200, f"hosted_vllm/echo-{tag}")] * 12  # the retry reaches the healthy deployment
    # Load-balanced at random, the broken one would be picked ~6 times in 12 calls; cooled down
    # after its allowed failure it is asked at most twice.
    assert provider.calls[f"broken-{tag}"] <= 2
