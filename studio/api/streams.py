"""Follow-streams over HTTP (``GET /api/jobs/{id}/logs?follow=true``, ``/api/evals/{id}/events``,
``/api/synth/{id}/events``): Server-Sent Events from an async iterator, bounded three ways.

- At most STUDIO_MAX_STREAMS_PER_KEY open per key (a job key counts for its submitter) in this
  API process; the next one is a 429 before anything streams.
- An ``error`` event ends a stream that had no event for STUDIO_STREAM_IDLE_S, or that has been
  open STUDIO_STREAM_MAX_S; the client reconnects if it still cares.
- A comment line every ``HEARTBEAT_S`` while nothing happens: proxies keep the connection, and a
  client that left is noticed at the next write rather than when the job ends.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
import weakref
from collections.abc import AsyncIterator

from fastapi import Request
from fastapi.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from studio.access import principal_id
from studio.errors import StudioError
from studio.store.models import ApiKey

log = logging.getLogger(__name__)
HEARTBEAT_S = 15.0
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


class TooManyStreams(StudioError):
    status_code = 429


class StreamSlots:
    """Open follow-streams per key in this process. Locked: sync routes take a slot from a
    worker thread, and streams give theirs back on the event loop."""

    def __init__(self):
        self.open: dict[int, int] = {}
        self._lock = threading.Lock()

    def take(self, key_id: int, cap: int) -> None:
        with self._lock:
            if self.open.get(key_id, 0) >= cap:
                raise TooManyStreams(f"this key already has {cap} follow-streams open (the most one key "
                                     "may hold)", "close one, or poll the JSON endpoints instead; an admin "
                                     "may raise STUDIO_MAX_STREAMS_PER_KEY")
            self.open[key_id] = self.open.get(key_id, 0) + 1

    def give_back(self, key_id: int) -> None:
        with self._lock:
            left = self.open.get(key_id, 0) - 1
            if left > 0:
                self.open[key_id] = left
            else:
                self.open.pop(key_id, None)


def sse(kind: str, data: dict) -> str:
    return f"event: {kind}\ndata: {json.dumps(data, default=str)}\n\n"


def follow_response(request: Request, key: ApiKey, events: AsyncIterator[str]) -> StreamingResponse:
    """The stream as a response, holding one of the key's slots until it ends (or the client goes)."""
    settings = request.app.state.settings
    slots: StreamSlots = request.app.state.streams
    owner = principal_id(key)
    slots.take(owner, settings.max_streams_per_key)
    return _SlotStream(bounded(events, settings.stream_idle_s, settings.stream_max_s),
                       weakref.finalize(events, slots.give_back, owner))


class _SlotStream(StreamingResponse):
    def __init__(self, content: AsyncIterator[str], release: weakref.finalize):
        super().__init__(content, media_type="text/event-stream", headers=SSE_HEADERS)
        self._release = release  # also runs if this response is dropped without being sent

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._release()


async def bounded(events: AsyncIterator[str], idle_s: float, max_s: float,
                  heartbeat_s: float = HEARTBEAT_S) -> AsyncIterator[str]:
    """``events`` with heartbeats, ended by an ``error`` event when idle or too old."""
    start = last = time.monotonic()
    it = aiter(events)
    pending: asyncio.Future | None = None
    try:
        while True:
            pending = pending or asyncio.ensure_future(anext(it))
            now = time.monotonic()
            wait = max(0.0, min(heartbeat_s, last + idle_s - now, start + max_s - now))
            done, _ = await asyncio.wait({pending}, timeout=wait)
            if done:
                try:
                    chunk = pending.result()
                except StopAsyncIteration:
                    return
                except Exception as e:  # noqa: BLE001 — headers are sent: end with an event, not a cut
                    log.warning("follow-stream stopped: %s", e, exc_info=e)
                    yield sse("error", {"detail": f"the stream stopped ({type(e).__name__})",
                                        "fix": "reconnect in a few seconds; see the server log if it persists"})
                    return
                pending = None
                last = time.monotonic()
                yield chunk
                continue
            now = time.monotonic()
            if now - start >= max_s:
                yield sse("error", {"detail": f"the stream was open for {max_s:.0f} s, the most allowed",
                                    "fix": "reconnect to follow on (STUDIO_STREAM_MAX_S)"})
                return
            if now - last >= idle_s:
                yield sse("error", {"detail": f"nothing happened for {idle_s:.0f} s",
                                    "fix": "reconnect to follow on (STUDIO_STREAM_IDLE_S)"})
                return
            yield ": heartbeat\n\n"
    finally:
        if pending is not None and not pending.done():
            pending.cancel()
            await asyncio.gather(pending, return_exceptions=True)
        await events.aclose()  # type: ignore[attr-defined]
