"""Which adapters an engine knows (registered: id → local directory) and which it holds loaded.

At most ``capacity`` are loaded; loading another evicts the least recently used one that no request
is using. A registered adapter that was evicted loads again when a request names it. Adapters that
requests are using are never evicted (the request would lose its adapter mid-flight); when all
loaded ones are busy the set grows past ``capacity`` for a moment and shrinks as requests finish —
the engine itself still bounds how many adapters share one batch.

The engine supplies ``load(id, path)`` and ``unload(id)``; everything here runs on one event loop.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any

from studio.errors import Conflict, NotFound, StudioError


class AdapterLRU:
    def __init__(self, capacity: int, load: Callable[[str, str], Awaitable[None]],
                 unload: Callable[[str], Awaitable[None]]):
        self.capacity = capacity
        self._load, self._unload = load, unload
        self.registered: dict[str, str] = {}
        self.loaded: OrderedDict[str, None] = OrderedDict()  # least recently used first
        self.in_use: Counter[str] = Counter()
        self.last_used: dict[str, float] = {}
        self.loads = self.evictions = 0
        self._lock = asyncio.Lock()  # one load/evict at a time: no double loads of one id
        self._tasks: set[asyncio.Task] = set()

    async def add(self, adapter_id: str, path: str) -> None:
        known = self.registered.get(adapter_id)
        if known == path:
            return
        if known is not None:
            raise Conflict(
                f"adapter id {adapter_id!r} is already served from {known}; the weights behind an "
                "id never change (a same-name reload would mix old and new weights in caches)",
                "register the new weights as a new version (a new adapter id, e.g. name@N+1)",
            )
        self.registered[adapter_id] = path
        try:
            await self._ensure_loaded(adapter_id)
        except BaseException:
            del self.registered[adapter_id]
            raise

    async def remove(self, adapter_id: str) -> None:
        if adapter_id not in self.registered:
            raise NotFound(f"adapter {adapter_id!r} is not loaded here", "see adapters()")
        async with self._lock:
            del self.registered[adapter_id]
            if adapter_id in self.loaded:
                del self.loaded[adapter_id]
                await self._unload(adapter_id)

    async def acquire(self, adapter_id: str) -> Callable[[], None]:
        """Make sure a registered adapter is loaded and mark it in use until the returned release
        function is called. Ids that are not registered (the base model, unknown names) pass
        through untouched: the engine's serving layer answers those."""
        if adapter_id not in self.registered:
            return _noop
        self.in_use[adapter_id] += 1
        try:
            await self._ensure_loaded(adapter_id)
        except BaseException:
            self._release(adapter_id)
            raise
        return lambda: self._release(adapter_id)

    def _release(self, adapter_id: str) -> None:
        self.in_use[adapter_id] -= 1
        if self.in_use[adapter_id] <= 0:
            del self.in_use[adapter_id]
        if len(self.loaded) > self.capacity:
            task = asyncio.get_running_loop().create_task(self._shrink())
            self._tasks.add(task)  # the loop keeps only a weak reference to tasks
            task.add_done_callback(self._tasks.discard)

    async def _shrink(self) -> None:
        async with self._lock:
            await self._evict_idle(len(self.loaded) - self.capacity)

    async def _ensure_loaded(self, adapter_id: str) -> None:
        self.last_used[adapter_id] = time.time()
        if adapter_id in self.loaded:
            self.loaded.move_to_end(adapter_id)
            return
        async with self._lock:
            if adapter_id in self.loaded:  # loaded while we waited for the lock
                self.loaded.move_to_end(adapter_id)
                return
            if adapter_id not in self.registered:
                raise NotFound(f"adapter {adapter_id!r} was removed", "load it again")
            await self._evict_idle(len(self.loaded) + 1 - self.capacity)
            await self._load(adapter_id, self.registered[adapter_id])
            self.loaded[adapter_id] = None
            self.loads += 1

    async def _evict_idle(self, count: int) -> None:
        for victim in [a for a in self.loaded if not self.in_use[a]][: max(count, 0)]:
            del self.loaded[victim]
            await self._unload(victim)
            self.evictions += 1

    def describe(self) -> list[dict[str, Any]]:
        return [
            {"id": a, "path": p, "loaded": a in self.loaded, "in_flight": self.in_use.get(a, 0),
             "last_used": self.last_used.get(a)}
            for a, p in self.registered.items()
        ]

    def stats(self) -> dict[str, Any]:
        return {"registered": len(self.registered), "loaded": list(self.loaded),
                "capacity": self.capacity, "loads": self.loads, "evictions": self.evictions}


def _noop() -> None:
    return None


def check_adapter_id(adapter_id: str, base_name: str) -> None:
    if not adapter_id or adapter_id == base_name:
        raise StudioError(
            f"adapter id {adapter_id!r} is empty or the base model's name",
            "name adapters by their registry name and version, e.g. reverse@3",
        )
