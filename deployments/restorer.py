"""The Router's background task that brings runtime deployments back after a restart
(``studio.serving.restore``). The Router runs it because it starts with every studio application
— ``studio up``, ``serve run configs/serve/*.yaml``, a KubeRay RayService — and is one replica:
one restorer per cluster. Restoring waits on engines for minutes, so it runs in a worker thread,
and tells the Router what changed through ``sync`` (the Router's own ``sync_deployments`` on its
event loop)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from studio.settings import StudioSettings

logger = logging.getLogger("ray.serve")
POLL_S = 5.0  # how often a row marked RESTORING from elsewhere (the launcher) is looked for


class Restorer:
    def __init__(self, settings: StudioSettings, sync: Callable[[], Awaitable[object]]):
        self._settings = settings
        self._sync = sync
        self.last: dict[str, str] = {}  # the last pass's names → the state each ended in

    async def run(self) -> None:
        loop = asyncio.get_running_loop()

        def sync_from_thread() -> None:
            asyncio.run_coroutine_threadsafe(self._sync(), loop).result(timeout=30)

        marked = False
        while True:
            try:
                if not marked:
                    names = await asyncio.to_thread(self._mark_at_start)
                    marked = True
                    if names:
                        logger.info("runtime deployments to restore: %s", ", ".join(names))
                from studio.serving.restore import pending, restore_pending

                if await asyncio.to_thread(pending, self._settings):
                    await self._sync()  # their names answer 503 + Retry-After from now
                    self.last = await asyncio.to_thread(
                        restore_pending, self._settings, logger.info, sync_from_thread)
            except Exception:  # noqa: BLE001 — the Router must outlive a failed pass; retried
                logger.exception("restoring runtime deployments failed; retrying in %.0f s", POLL_S)
            await asyncio.sleep(POLL_S)

    def _mark_at_start(self) -> list[str]:
        from ray import serve

        from studio.serving.restore import mark_restoring

        running = set(serve.status().applications)
        return mark_restoring(self._settings, running, fresh=False)
