"""Shared counters and cache entries: Redis when ``STUDIO_REDIS_URL`` is set (so limits and cache
hold across gateway replicas), in-process otherwise — and in-process while Redis is down, so a
Redis outage degrades the cache and limits to per-replica instead of failing calls.

After a Redis error the store skips Redis for ``retry_redis_after_s`` (a short circuit breaker):
otherwise every call would first wait for a connection timeout.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

logger = logging.getLogger("studio.gateway")


class KVStore:
    def __init__(self, redis_url: str | None, namespace: str, max_entries: int = 10_000,
                 retry_redis_after_s: float = 10.0):
        self.namespace = namespace
        self.redis_url = redis_url
        self._max_entries = max_entries
        self._local = None
        self._counters: dict[str, tuple[float, float]] = {}  # key -> (value, expires_at)
        self._redis = None
        self._redis_down_until = 0.0
        self._retry_s = retry_redis_after_s
        if redis_url:
            import redis.asyncio as aioredis

            self._redis = aioredis.from_url(redis_url, socket_connect_timeout=0.5,
                                            socket_timeout=0.5, decode_responses=True)

    @property
    def local(self):
        # LiteLLM's in-memory cache: TTL per entry and a size bound, the same store its Router
        # uses. Made on first use: the /v1 limits need only the counters, and importing LiteLLM
        # into the API process costs seconds and memory.
        if self._local is None:
            from litellm.caching.in_memory_cache import InMemoryCache

            self._local = InMemoryCache(max_size_in_memory=self._max_entries, default_ttl=3600)
        return self._local

    def k(self, *parts: Any) -> str:
        return ":".join([self.namespace, *map(str, parts)])

    @property
    def backend(self) -> str:
        return "redis" if self._redis_ok() else "memory"

    def _redis_ok(self) -> bool:
        return self._redis is not None and time.monotonic() >= self._redis_down_until

    def _redis_failed(self, e: Exception) -> None:
        logger.warning("redis at %s unavailable (%s); gateway cache and limits fall back to "
                       "in-process for %.0f s", self.redis_url, e, self._retry_s)
        self._redis_down_until = time.monotonic() + self._retry_s

    # ---- cache entries -------------------------------------------------------------------------
    async def get(self, key: str) -> str | None:
        if self._redis_ok():
            try:
                return await self._redis.get(key)
            except Exception as e:  # noqa: BLE001 — any Redis failure means: use the local store
                self._redis_failed(e)
        value = self.local.get_cache(key)
        # LiteLLM's InMemoryCache hands back JSON strings already decoded; keep one return type.
        return value if value is None or isinstance(value, str) else json.dumps(value)

    async def set(self, key: str, value: str, ttl_s: int) -> None:
        if self._redis_ok():
            try:
                await self._redis.set(key, value, ex=ttl_s)
                return
            except Exception as e:  # noqa: BLE001
                self._redis_failed(e)
        self.local.set_cache(key, value, ttl=ttl_s)

    # ---- counters ------------------------------------------------------------------------------
    async def incr(self, key: str, amount: float = 1, ttl_s: int = 120) -> float:
        if self._redis_ok():
            try:
                pipe = self._redis.pipeline()
                pipe.incrbyfloat(key, amount)
                pipe.expire(key, ttl_s)
                value, _ = await pipe.execute()
                return float(value)
            except Exception as e:  # noqa: BLE001
                self._redis_failed(e)
        now = time.monotonic()
        value, expires = self._counters.get(key, (0.0, 0.0))
        if expires <= now:
            value = 0.0
        value += amount
        self._counters[key] = (value, now + ttl_s)
        if len(self._counters) > 50_000:  # drop expired windows now and then
            self._counters = {k: v for k, v in self._counters.items() if v[1] > now}
        return value

    async def read(self, key: str) -> float:
        if self._redis_ok():
            try:
                value = await self._redis.get(key)
                return float(value or 0)
            except Exception as e:  # noqa: BLE001
                self._redis_failed(e)
        value, expires = self._counters.get(key, (0.0, 0.0))
        return value if expires > time.monotonic() else 0.0

    async def close(self) -> None:
        if self._redis is not None:
            try:
                await self._redis.aclose()
            except Exception:  # noqa: BLE001 — closing a dead connection
                pass
