"""Running a batch's lines through the gateway, ``concurrency`` calls in flight.

Each line is one call of ``studio.gateway.Client`` (service ``batch``, job tag = the batch id, so
every line is a usage row of the key the job spends on, with the batch named). Finished lines
are kept in memory and written together (``output.save``: the lines and the counts in one
transaction) by one writer at most every ``flush_s``: a crash loses at most that much finished
work plus the calls in flight, which a resumed attempt asks again; everything written is never
asked again. Each write also reads the batch row: ``cancelling`` stops the run (no new line
starts; those in flight finish and are written).

What a call's failure makes of its line:

* the gateway answers 4xx/5xx (unknown model, context exceeded, an external provider's error
  after fallbacks): an error-file entry with that status and body. An unknown model is asked once;
  its other lines get the same answer without a call;
* 429 over the key's **budget**, or 401 (the job's key or its submitter's was revoked): that line
  and every line not yet run become error-file entries with that answer, without a call; the
  batch still completes;
* 429 over a rate limit (rpm/tpm, the job's concurrency): waited out (``Retry-After``) and asked
  again, up to ``RATE_RETRIES`` times;
* the gateway unreachable or 503 (a studio restart): asked again with backoff for about half a
  minute, then the run stops with ``GatewayDown``: the job fails and the scheduler's retry resumes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from studio.batches.output import LineResult, answered, not_run, refused_by_model, save
from studio.batches.validation import LineRequest
from studio.errors import StudioError
from studio.store.db import session_scope
from studio.store.models import Batch, utcnow

logger = logging.getLogger(__name__)
RATE_RETRIES = 20
DOWN_RETRIES = 6  # 0.5 + 1 + 2 + 4 + 8 + 10 s ≈ half a minute
MAX_WAIT_S = 60.0


class GatewayDown(StudioError):
    status_code = 502


def is_budget(err: Any) -> bool:
    return getattr(err, "status", None) == 429 and "budget" in str(getattr(err, "problem", ""))


class BatchRun:
    """One attempt at a batch's pending lines. ``run()`` returns why it stopped: ``done``,
    ``cancelled`` or ``expired`` (the lines not run are left to the caller)."""

    def __init__(self, db_url: str, batch_id: str, endpoint: str, client: Any, concurrency: int,
                 expires_at: datetime | None = None, flush_s: float = 0.25):
        self.db_url, self.batch_id, self.client = db_url, batch_id, client
        self.kind = "chat" if endpoint.endswith("/chat/completions") else "completions"
        self.concurrency, self.expires_at, self.flush_s = concurrency, expires_at, flush_s
        self.pending: list[LineResult] = []
        self.stop: str | None = None
        self.down: GatewayDown | None = None
        self.budget: tuple[int, dict[str, Any]] | None = None  # the answer every line gets now
        self.unknown: dict[str, tuple[int, dict[str, Any]]] = {}  # model → its 404
        self.written = 0
        self._ended = asyncio.Event()  # the workers are done: the writer stops after its current write

    async def run(self, requests: list[LineRequest]) -> str:
        lines: Iterator[LineRequest] = iter(requests)
        workers = [asyncio.create_task(self._worker(lines))
                   for _ in range(min(self.concurrency, len(requests)))]
        writer = asyncio.create_task(self._writer())
        try:
            await asyncio.gather(*workers)
        finally:
            # Never cancel the writer: cancelled while its write runs in a thread, that write's
            # error (a pool timeout under load) would be lost with the lines it held. It ends
            # after its current write; the final flush writes what is left.
            self._ended.set()
            await asyncio.gather(writer, return_exceptions=True)
            await self._flush(final=True)
        if self.down is not None:
            raise self.down
        return self.stop or "done"

    # -- lines ------------------------------------------------------------------------------
    async def _worker(self, lines: Iterator[LineRequest]) -> None:
        for req in lines:
            if self.stop or self.down:
                return
            result = await self._answer(req)
            if result is None:  # the gateway is down: this line stays for the next attempt
                return
            self.pending.append(result)

    async def _answer(self, req: LineRequest) -> LineResult | None:
        known = self.budget or self.unknown.get(req.model)
        if known is not None:
            return refused_by_model(self.batch_id, req.line, req.custom_id, *known)
        from studio.gateway import GatewayError

        rate_waits = down_waits = 0
        while True:
            try:
                body = await self._call(req)
                return answered(self.batch_id, req.line, req.custom_id, body)
            except GatewayError as e:
                answer = (e.status, e.body or {"error": {"message": e.problem, "code": e.status}})
                if is_budget(e) or e.status == 401:
                    self.budget = self.budget or answer
                elif e.status == 429 and rate_waits < RATE_RETRIES:
                    rate_waits += 1
                    await asyncio.sleep(min(e.retry_after_s or 1.0, MAX_WAIT_S))
                    continue
                elif e.status in (0, 503):
                    if down_waits < DOWN_RETRIES and not self.down:
                        await asyncio.sleep(min(0.5 * 2**down_waits, 10.0))
                        down_waits += 1
                        continue
                    self.down = self.down or GatewayDown(
                        f"the gateway did not answer line {req.line + 1} ({req.custom_id}) of batch "
                        f"{self.batch_id}: {e.problem}", "the job fails and its retry resumes from "
                        "the lines already answered; check the studio with `studio status`")
                    return None
                elif e.status == 404 and "unknown model" in e.problem:
                    self.unknown[req.model] = answer
                return refused_by_model(self.batch_id, req.line, req.custom_id, *answer)

    async def _call(self, req: LineRequest) -> dict[str, Any]:
        fields = dict(req.body)
        model = fields.pop("model")
        if self.kind == "chat":
            return await self.client.achat(model, fields.pop("messages"), **fields)
        return await self.client.acompletions(model, fields.pop("prompt"), **fields)

    # -- writes -----------------------------------------------------------------------------
    async def _writer(self) -> None:
        while not self._ended.is_set():
            try:
                await asyncio.wait_for(self._ended.wait(), self.flush_s)
            except asyncio.TimeoutError:
                await self._flush()

    async def _flush(self, final: bool = False) -> None:
        batch, self.pending = self.pending, []
        try:
            status = await asyncio.to_thread(self._write, batch)
        except (SQLAlchemyError, StudioError, OSError) as e:
            self.pending = batch + self.pending  # written with the next flush
            if final:
                raise
            logger.warning("batch %s: results not written yet (next try in %.2f s): %s",
                           self.batch_id, self.flush_s, str(e).splitlines()[0][:300])
            return
        self.written += len(batch)
        if status == "cancelling":
            self.stop = self.stop or "cancelled"
        elif self.expires_at is not None and utcnow() >= self.expires_at:
            self.stop = self.stop or "expired"

    def _write(self, results: list[LineResult]) -> str | None:
        t0 = time.perf_counter()
        with session_scope(self.db_url) as s:
            save(s, self.batch_id, results)
            status = s.get(Batch, self.batch_id).status
        if results:
            logger.debug("batch %s: %d lines written in %.3f s", self.batch_id, len(results),
                         time.perf_counter() - t0)
        return status


def expired_lines(batch_id: str, requests: list[LineRequest]) -> list[LineResult]:
    return [not_run(batch_id, r.line, r.custom_id, "batch_expired",
                    "this request could not be executed before the completion window expired")
            for r in requests]
