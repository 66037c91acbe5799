"""Per-key rate limits (requests and tokens per minute), budgets, and per-job concurrency caps.

Windows are fixed calendar minutes counted in :class:`~studio.gateway.store.KVStore` (Redis across
replicas, in-process otherwise). A request over a limit raises :class:`RateLimited` (HTTP 429 with
``Retry-After``: the seconds left in the minute). Tokens are counted after the call (they are only
known then), so a key may overshoot its TPM by one call; the next call in that minute is refused.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sqlalchemy import select
from sqlalchemy.orm import Session

from studio.errors import NotFound, StudioError
from studio.store.models import ApiKey

if TYPE_CHECKING:
    from studio.gateway.store import KVStore


class RateLimited(StudioError):
    status_code = 429

    def __init__(self, problem: str, fix: str, retry_after_s: float):
        super().__init__(problem, fix)
        self.retry_after_s = max(1, math.ceil(retry_after_s))


@dataclass(frozen=True)
class KeyLimits:
    key_id: int | None
    key_name: str | None
    rpm: int | None = None
    tpm: int | None = None
    budget_usd: float | None = None

    @classmethod
    def of(cls, key: ApiKey) -> KeyLimits:
        return cls(key.id, key.name, key.rpm_limit, key.tpm_limit, key.budget_usd)

    @property
    def any(self) -> bool:
        return self.rpm is not None or self.tpm is not None or self.budget_usd is not None


class SpentCache:
    """What each key has spent (the usage table), read at most every ``ttl_s`` per key: a budget
    check must not cost a database round trip per request."""

    def __init__(self, db_url: str, ttl_s: float = 5.0):
        self.db_url = db_url
        self.ttl_s = ttl_s
        self._spent: dict[int, tuple[float, float]] = {}  # key id → (expires, USD)

    async def spent_usd(self, key_id: int) -> float:
        now = time.monotonic()
        hit = self._spent.get(key_id)
        if hit is None or hit[0] < now:
            hit = (now + self.ttl_s, await asyncio.to_thread(self._read, key_id))
            if len(self._spent) > 10_000:  # keys come and go: forget the expired ones
                self._spent = {k: v for k, v in self._spent.items() if v[0] >= now}
            self._spent[key_id] = hit
        return hit[1]

    def _read(self, key_id: int) -> float:
        from studio.gateway.usage import key_spent_usd
        from studio.store.db import session_scope

        with session_scope(self.db_url) as s:
            return key_spent_usd(s, key_id)


class Limiter:
    def __init__(self, store: KVStore):
        self.store = store

    @staticmethod
    def _window() -> tuple[int, float]:
        now = time.time()
        return int(now // 60), 60 - (now % 60)

    async def admit(self, key: KeyLimits, spent_usd: float | None = None) -> None:
        """Count this request against the key's RPM; refuse it if RPM/TPM/budget is exhausted."""
        if key.key_id is None:
            return
        minute, left_s = self._window()
        if key.budget_usd is not None and spent_usd is not None and spent_usd >= key.budget_usd:
            raise RateLimited(f"key {key.key_name!r} has spent ${spent_usd:.4f} of its "
                              f"${key.budget_usd:.4f} budget",
                              "use another key or create one with a larger --budget-usd",
                              retry_after_s=3600)
        if key.tpm is not None:
            used = await self.store.read(self.store.k("tpm", key.key_id, minute))
            if used >= key.tpm:
                raise RateLimited(f"key {key.key_name!r} used {int(used)} tokens this minute, its "
                                  f"limit is {key.tpm} tokens per minute",
                                  f"retry after {math.ceil(left_s)} s or raise the key's --tpm",
                                  left_s)
        if key.rpm is not None:
            n = await self.store.incr(self.store.k("rpm", key.key_id, minute))
            if n > key.rpm:
                raise RateLimited(f"key {key.key_name!r} sent {int(n)} requests this minute, its "
                                  f"limit is {key.rpm} requests per minute",
                                  f"retry after {math.ceil(left_s)} s or raise the key's --rpm",
                                  left_s)

    async def count_tokens(self, key: KeyLimits, tokens: int) -> None:
        if key.key_id is None or key.tpm is None or tokens <= 0:
            return
        minute, _ = self._window()
        await self.store.incr(self.store.k("tpm", key.key_id, minute), tokens)

    async def acquire_job(self, job_id: str | None, cap: int | None, scope: int | None = None
                          ) -> bool:
        """Take one in-flight slot of ``job_id``; True if taken (release it with release_job).
        ``scope`` (the calling key's id) keeps one key's job ids from filling another's slots."""
        if not job_id or not cap:
            return False
        key = self.store.k("job", scope, job_id)
        n = await self.store.incr(key, 1, ttl_s=600)
        if n > cap:
            await self.store.incr(key, -1, ttl_s=600)
            raise RateLimited(f"job {job_id!r} already has {cap} calls in flight (its concurrency "
                              "cap)", "wait for calls to finish (Client(max_concurrency=...) "
                              "queues them for you)", retry_after_s=1)
        return True

    async def release_job(self, job_id: str, scope: int | None = None) -> None:
        await self.store.incr(self.store.k("job", scope, job_id), -1, ttl_s=600)


def stream_tokens(chunk: str) -> int:
    """Total tokens in the last, choice-less chunk of a stream (``stream_options.include_usage``;
    chunks with ``continuous_usage_stats`` carry running totals and are not counted); 0 if
    none."""
    total = 0
    for line in chunk.splitlines():
        if line.startswith("data:") and '"usage"' in line:
            try:
                data = json.loads(line[5:].strip())
                if not data.get("choices"):
                    total += int((data.get("usage") or {}).get("total_tokens") or 0)
            except (ValueError, AttributeError, TypeError):
                continue
    return total


def set_key_limits(session: Session, name: str, *, rpm: int | None = None, tpm: int | None = None,
                   budget_usd: float | None = None, clear: bool = False) -> ApiKey:
    """Set a key's gateway limits (None leaves one as it is; ``clear`` removes all first)."""
    key = session.scalars(select(ApiKey).where(ApiKey.name == name)).first()
    if key is None:
        raise NotFound(f"no key named {name!r}", "see `studio keys ls`")
    for label, value in (("--rpm", rpm), ("--tpm", tpm), ("--budget-usd", budget_usd)):
        if value is not None and value <= 0:
            raise StudioError(f"{label} must be positive, got {value}", f"pass {label} > 0 or omit it")
    if clear:
        key.rpm_limit = key.tpm_limit = key.budget_usd = None
    if rpm is not None:
        key.rpm_limit = rpm
    if tpm is not None:
        key.tpm_limit = tpm
    if budget_usd is not None:
        key.budget_usd = budget_usd
    return key
