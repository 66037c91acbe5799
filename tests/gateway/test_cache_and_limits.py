"""Cache keying, the Redis-or-in-process store (including Redis down), and the limiter."""

from __future__ import annotations

import asyncio
import socket
import uuid

import pytest
import redis

import studio.gateway  # noqa: F401 — LITELLM_LOCAL_MODEL_COST_MAP before litellm loads
from studio.gateway.cache import cache_key, is_cacheable
from studio.gateway.limits import KeyLimits, Limiter, RateLimited
from studio.gateway.store import KVStore

REDIS_URL = "redis://127.0.0.1:6379/0"
MSG = [{"role": "user", "content": "hi"}]


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"redis://127.0.0.1:{port}/0"  # nothing listens there once the socket is closed


@pytest.fixture
def namespace():
    ns = f"studio-test-{uuid.uuid4().hex[:8]}"
    yield ns
    try:
        r = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1)
        for k in r.scan_iter(f"{ns}:*"):
            r.delete(k)
    except redis.RedisError:
        pass


@pytest.mark.parametrize(("body", "cacheable"), [
    ({"model": "m", "messages": MSG, "temperature": 0}, True),
    ({"model": "m", "messages": MSG, "temperature": 0.7, "seed": 3}, True),
    ({"model": "m", "messages": MSG, "temperature": 0.7}, False),
    ({"model": "m", "messages": MSG}, False),  # OpenAI's default temperature is 1
    ({"model": "m", "messages": MSG, "temperature": 0, "stream": True}, False),
    ({"model": "m", "messages": MSG, "temperature": 0, "n": 2}, False),
])
def test_only_deterministic_requests_are_cacheable(body, cacheable):
    assert is_cacheable(body) is cacheable


def test_cache_key_depends_on_what_changes_the_answer_only():
    base = {"model": "m", "messages": MSG, "temperature": 0, "max_tokens": 8}
    key = cache_key("ns", "chat", base)
    assert key == cache_key("ns", "chat", dict(reversed(list(base.items()))))  # order-free
    assert key == cache_key("ns", "chat", {**base, "user": "someone-else"})  # labels ignored
    for change in ({"model": "m2"}, {"max_tokens": 9}, {"temperature": 0.0001},
                   {"messages": [{"role": "user", "content": "hi!"}]}, {"stop": ["x"]}):
        assert cache_key("ns", "chat", {**base, **change}) != key, change
    assert cache_key("ns", "completions", base) != key
    assert cache_key("other", "chat", base) != key


def test_cache_key_is_per_principal_key():
    body = {"model": "m", "messages": MSG, "temperature": 0}
    assert cache_key("ns", "chat", body, 1) == cache_key("ns", "chat", body, 1)
    assert cache_key("ns", "chat", body, 1) != cache_key("ns", "chat", body, 2)
    assert cache_key("ns", "chat", body, 1) != cache_key("ns", "chat", body)


def test_in_process_store_roundtrip(namespace):
    async def go():
        store = KVStore(None, namespace)
        assert store.backend == "memory"
        await store.set("a", '{"x": 1}', 60)
        assert await store.get("a") == '{"x": 1}'
        assert await store.get("missing") is None
        assert await store.incr("c") == 1 and await store.incr("c", 2) == 3
        assert await store.read("c") == 3
    asyncio.run(go())


def test_redis_store_is_shared_between_instances(namespace):
    async def go():
        a, b = KVStore(REDIS_URL, namespace), KVStore(REDIS_URL, namespace)
        await a.set(a.k("cache", "x"), "hello", 60)
        assert await b.get(b.k("cache", "x")) == "hello"  # another replica sees it
        await a.incr(a.k("rpm", 1, 0))
        assert await b.incr(b.k("rpm", 1, 0)) == 2
        assert a.backend == "redis"
        await a.close()
        await b.close()
    asyncio.run(go())
    assert redis.Redis.from_url(REDIS_URL).get(f"{namespace}:cache:x") == b"hello"


def test_redis_down_degrades_to_in_process(namespace, caplog):
    async def go():
        store = KVStore(closed_port_url(), namespace)
        await store.set("k", "v", 60)  # Redis refuses: the entry lands in-process
        assert store.backend == "memory"
        assert await store.get("k") == "v"
        assert await store.incr("n") == 1
    asyncio.run(go())
    assert "unavailable" in caplog.text and "in-process" in caplog.text


def test_rpm_limit_refuses_with_retry_after(namespace):
    async def go():
        limiter = Limiter(KVStore(None, namespace))
        key = KeyLimits(1, "k", rpm=2)
        await limiter.admit(key)
        await limiter.admit(key)
        with pytest.raises(RateLimited) as err:
            await limiter.admit(key)
        return err.value
    err = asyncio.run(go())
    assert err.status_code == 429 and 1 <= err.retry_after_s <= 60
    assert "2 requests per minute" in str(err) and "--rpm" in str(err)


def test_tpm_and_budget_limits(namespace):
    async def go():
        limiter = Limiter(KVStore(None, namespace))
        key = KeyLimits(2, "k", tpm=100, budget_usd=1.0)
        await limiter.admit(key, spent_usd=0.5)
        await limiter.count_tokens(key, 150)  # counted after the call: one overshoot allowed
        with pytest.raises(RateLimited, match="100 tokens per minute"):
            await limiter.admit(key, spent_usd=0.5)
        with pytest.raises(RateLimited, match=r"budget"):
            await limiter.admit(KeyLimits(3, "k3", budget_usd=1.0), spent_usd=1.0)
        await limiter.admit(KeyLimits(None, None, rpm=0))  # no key: nothing to count
    asyncio.run(go())


def test_job_concurrency_cap_is_shared_through_redis(namespace):
    async def go():
        a = Limiter(KVStore(REDIS_URL, namespace))
        b = Limiter(KVStore(REDIS_URL, namespace))
        assert await a.acquire_job("eval-9", 2)
        assert await b.acquire_job("eval-9", 2)
        with pytest.raises(RateLimited, match="2 calls in flight"):
            await a.acquire_job("eval-9", 2)
        await b.release_job("eval-9")
        assert await a.acquire_job("eval-9", 2)
        assert await a.acquire_job(None, 2) is False
    asyncio.run(go())
