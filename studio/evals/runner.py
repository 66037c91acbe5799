"""The eval runner: completions for every (datapoint, model) through the gateway, at most
``spec.concurrency`` model calls in flight (judge calls included: they share the cap), pointwise
scorers applied as each answer arrives, finished answers written in batches by one writer.

This is the batch lane of the Batch API runner (``studio.batches.runner``): the same gateway
``Client`` with the job's cap, and no database work on the call path. Each finished answer (its
output and scores together) and each pairwise verdict goes into ``pending``; one writer task
writes what is pending in one transaction whenever ``spec.concurrency`` answers are waiting or
``flush_s`` has passed (so at concurrency 1 every answer is its own transaction, as before), and
reads the job row at most every ``cancel_poll_s`` in the same session.

Resume: the (datapoint, model) pairs already in ``eval_outputs`` are skipped, so a crashed or
retried run continues where it stopped; what was written is never asked again. A crash loses the
calls in flight and the answers not yet written (at most one flush: ``concurrency`` answers or
``flush_s`` of them), which the next attempt asks again. A failed call or a cancel still writes
what finished. Cancel: the writer sees ``cancel_requested`` (or an ended row) and stops the run
within ``cancel_poll_s``; the scheduler also stops the Ray job."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from studio.errors import StudioError
from studio.evals.data import load_datapoints
from studio.evals.scorers import Datapoint, ScoreResult, build_scorers, is_pairwise
from studio.evals.spec import EvalSpec
from studio.gateway import GatewayError
from studio.scorer_specs import scorer_name
from studio.store.db import session_scope
from studio.store.models import EvalOutput, EvalScore, Job

logger = logging.getLogger(__name__)


class RunCancelled(Exception):
    """The job was cancelled while the run was going."""


@dataclass
class Finished:
    """What one write stores for one item: an answer with its pointwise scores (``output`` set,
    ``event`` for ``on_result``), or the pairwise verdicts of one datapoint by one scorer."""

    datapoint: int
    scores: dict[tuple[str, str], ScoreResult]  # (model, scorer) → result
    output: EvalOutput | None = None
    event: dict[str, Any] | None = None


def stored_pairs(db_url: str, job_id: int) -> set[tuple[int, str]]:
    with session_scope(db_url) as s:
        return set(s.execute(select(EvalOutput.datapoint, EvalOutput.model).where(EvalOutput.job_id == job_id)).all())


def _score_row(job_id: int, dp: int, model: str, scorer: str, r: ScoreResult) -> EvalScore:
    return EvalScore(job_id=job_id, datapoint=dp, model=model, scorer=scorer, score=r.score, status=r.status,
                     reason=(r.reason or "")[:2048], raw=r.raw)


def _rows(job_id: int, item: Finished) -> list[Any]:
    rows: list[Any] = [item.output] if item.output is not None else []
    return rows + [_score_row(job_id, item.datapoint, m, n, r) for (m, n), r in item.scores.items()]


def store(db_url: str, job_id: int, items: list[Finished], read_job: bool) -> tuple[list[Finished], tuple | None]:
    """Write ``items`` in one transaction (each alone when another attempt stored one of them
    already: those are skipped); the items written, and (status, cancel_requested) of the job
    when ``read_job``."""
    try:
        with session_scope(db_url) as s:
            for item in items:
                s.add_all(_rows(job_id, item))
            state = _job_state(s, job_id) if read_job else None
        return items, state
    except IntegrityError:
        pass
    written = []
    for item in items:
        try:
            with session_scope(db_url) as s:
                s.add_all(_rows(job_id, item))
            written.append(item)
        except IntegrityError:
            continue
    if not read_job:
        return written, None
    with session_scope(db_url) as s:
        return written, _job_state(s, job_id)


def _job_state(s: Any, job_id: int) -> tuple[str, bool]:
    job = s.get(Job, job_id)
    return job.status, bool(job.cancel_requested)


def _content(body: dict[str, Any]) -> str:
    return (body.get("choices") or [{}])[0].get("message", {}).get("content") or ""


class EvalRun:
    """One run of ``spec`` as job ``job_id``. ``client`` is a ``studio.gateway.Client``."""

    def __init__(self, db_url: str, job_id: int, spec: EvalSpec, client: Any, *,
                 on_result: Callable[[dict[str, Any]], None] | None = None, cancel_poll_s: float = 1.0,
                 flush_s: float = 0.25):
        self.db_url, self.job_id, self.spec, self.client = db_url, job_id, spec, client
        self.on_result = on_result
        self.cancel_poll_s, self.flush_s = cancel_poll_s, flush_s
        self.flush_rows = max(1, spec.concurrency)
        self.scorers = build_scorers(spec, client)
        self.pointwise = {n: s for n, s in self.scorers.items() if not is_pairwise(s.spec)}
        self.pairwise = {n: s for n, s in self.scorers.items() if is_pairwise(s.spec)}
        self.outputs: dict[tuple[int, str], str | None] = {}
        self.pending: list[Finished] = []
        self.written = self.writes = 0
        self._wake = asyncio.Event()
        self._closing = False
        self._last_poll = 0.0
        self._pairwise_started: set[tuple[int, str]] = set()

    # ---------------------------------------------------------------- the run
    async def run(self) -> dict[str, Any]:
        with session_scope(self.db_url) as s:
            _, points = load_datapoints(s, self.spec)
        done = stored_pairs(self.db_url, self.job_id)
        todo = [(p, m) for p in points for m in self.spec.models if (p.index, m) not in done]
        self._load_stored_for_pairwise(done)
        sem = asyncio.Semaphore(self.spec.concurrency)
        t0 = time.perf_counter()
        self._last_poll = time.monotonic()
        tasks = [asyncio.create_task(self._one(sem, p, m)) for p, m in todo]
        writer = asyncio.create_task(self._writer())
        work = asyncio.gather(*tasks)  # fails as soon as one task fails
        writer_error: BaseException | None = None
        try:
            # The first failure or the writer (a cancel, or what on_result raised) ends the run.
            finished, _ = await asyncio.wait({work, writer}, return_when=asyncio.FIRST_COMPLETED)
            if writer in finished:
                writer_error = writer.exception()
                writer.result()
            work.result()
            # Pairwise rows left over from an interrupted attempt (outputs stored, verdict not).
            await asyncio.gather(*(self._pairwise(sem, p) for p in points))
        finally:
            for t in tasks:
                t.cancel()
            self._closing = True  # the writer ends after the write it is doing, never inside it
            self._wake.set()
            await asyncio.gather(work, writer, return_exceptions=True)
            if writer_error is None or isinstance(writer_error, RunCancelled):
                await self._flush_final()  # what finished is kept: on a failed call, on cancel
        return {"rows": len(points), "answered": self.written, "skipped_stored": len(done),
                "writes": self.writes, "wall_s": round(time.perf_counter() - t0, 3)}

    async def _one(self, sem: asyncio.Semaphore, p: Datapoint, model: str) -> None:
        out = EvalOutput(job_id=self.job_id, datapoint=p.index, model=model, input=p.messages,
                         reference=p.reference)
        async with sem:
            t = time.perf_counter()
            try:
                body = await self.client.achat(model, p.messages, **self.spec.generation.params())
            except GatewayError as e:
                if e.status == 0:
                    raise  # the gateway is gone: fail the attempt; a retry resumes from here
                out.error, out.latency_ms = str(e)[:2048], (time.perf_counter() - t) * 1000
                body = None
        scores: dict[str, ScoreResult] = {}
        if body is not None:
            info = body.get("studio_gateway") or {}
            out.output = _content(body)
            # the concrete version for studio models (rev -> rev@2); external groups keep their name
            out.model_version = body.get("studio_model_version") or model
            out.latency_ms = float(info.get("latency_ms") or (time.perf_counter() - t) * 1000)
            out.cost_usd = float(info.get("cost_usd") or 0.0)
            out.cache_hit = bool(info.get("cache_hit"))
            names = list(self.pointwise)
            results = await asyncio.gather(*(self._score(sem, self.pointwise[n], p, out.output) for n in names))
            scores = dict(zip(names, results, strict=True))
        else:
            scores = {n: ScoreResult.unscored(f"no answer: {out.error}", status="error") for n in self.pointwise}
        event = {"datapoint": p.index, "model": model, "output": out.output, "error": out.error,
                 "latency_ms": out.latency_ms, "cache_hit": out.cache_hit,
                 "scores": {n: r.score for n, r in scores.items()}}
        self._add(Finished(p.index, {(model, n): r for n, r in scores.items()}, out, event))
        self.outputs[(p.index, model)] = out.output
        if self.pairwise and all((p.index, m) in self.outputs for m in self.spec.models):
            await self._pairwise(sem, p)

    async def _score(self, sem: asyncio.Semaphore, scorer: Any, p: Datapoint, output: str) -> ScoreResult:
        if scorer.spec.type == "judge":
            async with sem:  # judge calls share the run's cap with the completions
                return await scorer.score(p, output)
        try:
            return await scorer.score(p, output)
        except Exception as e:  # noqa: BLE001 - one scorer's bug must not lose the datapoint
            logger.warning("scorer %s failed on datapoint %s: %s", scorer_name(scorer.spec), p.index, e)
            return ScoreResult.unscored(f"scorer failed: {type(e).__name__}: {e}"[:500], status="error")

    # ---------------------------------------------------------------- writes
    def _add(self, item: Finished) -> None:
        self.pending.append(item)
        if len(self.pending) >= self.flush_rows:
            self._wake.set()

    async def _writer(self) -> None:
        while not self._closing:
            try:
                await asyncio.wait_for(self._wake.wait(), self.flush_s)
            except asyncio.TimeoutError:
                pass
            self._wake.clear()
            await self._flush()

    async def _flush(self, final: bool = False) -> None:
        poll = final or time.monotonic() - self._last_poll >= self.cancel_poll_s
        if not self.pending and not poll:
            return
        batch, self.pending = self.pending, []
        try:
            written, state = await asyncio.to_thread(store, self.db_url, self.job_id, batch, poll)
        except (SQLAlchemyError, StudioError, OSError) as e:
            self.pending = batch + self.pending  # written with the next flush
            if final:
                raise
            logger.warning("eval %s: results not written yet (next try in %.2f s): %s", self.job_id,
                           self.flush_s, str(e).splitlines()[0][:300])
            return
        if batch:
            self.writes += 1
        for item in written:
            if item.event is not None:
                self.written += 1
                if self.on_result:
                    self.on_result(item.event)
        if state is not None:
            self._last_poll = time.monotonic()
            status, requested = state
            if not final and (requested or status in ("CANCELLED", "FAILED", "SUCCEEDED")):
                raise RunCancelled(f"eval {self.job_id} is {status}{' (cancel requested)' if requested else ''}")

    async def _flush_final(self) -> None:
        if self.pending:
            await self._flush(final=True)

    # ---------------------------------------------------------------- pairwise judges
    def _load_stored_for_pairwise(self, done: set[tuple[int, str]]) -> None:
        """The outputs and verdicts an earlier attempt stored, so a resumed run judges only
        what is missing (no query per datapoint)."""
        if not self.pairwise or not done:
            return
        with session_scope(self.db_url) as s:
            for dp, model, output in s.execute(select(EvalOutput.datapoint, EvalOutput.model, EvalOutput.output)
                                               .where(EvalOutput.job_id == self.job_id)):
                self.outputs[(dp, model)] = output
            self._pairwise_started |= set(s.execute(
                select(EvalScore.datapoint, EvalScore.scorer).distinct()
                .where(EvalScore.job_id == self.job_id, EvalScore.scorer.in_(list(self.pairwise)))).all())

    async def _pairwise(self, sem: asyncio.Semaphore, p: Datapoint) -> None:
        if not all((p.index, m) in self.outputs for m in self.spec.models):
            return
        for name, judge in self.pairwise.items():
            # Two answers of one datapoint can complete together: judge it once.
            if (p.index, name) in self._pairwise_started:
                continue
            self._pairwise_started.add((p.index, name))
            baseline = judge.spec.baseline or self.spec.models[0]
            base_out = self.outputs[(p.index, baseline)]
            results: dict[tuple[str, str], ScoreResult] = {}
            for model in self.spec.models:
                if model == baseline:
                    continue
                cand = self.outputs[(p.index, model)]
                if cand is None or base_out is None:
                    results[(model, name)] = ScoreResult.unscored("no answer to compare", status="error")
                    continue
                async with sem:
                    results[(model, name)] = await judge.compare(p, cand, base_out)
            self._add(Finished(p.index, results))
