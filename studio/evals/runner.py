"""The eval runner: completions for every (datapoint, model) through the gateway, at most
``spec.concurrency`` in flight (concurrent requests are what lets the engine batch), pointwise
scorers applied as each answer arrives, every result committed at once.

Resume: the (datapoint, model) pairs already in ``eval_outputs`` are skipped, so a crashed or
retried run continues where it stopped. Cancel: a watcher polls the job row and stops the run when
it is cancelled (the scheduler also stops the Ray job)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from studio.evals.data import load_datapoints
from studio.evals.scorers import Datapoint, ScoreResult, build_scorers, is_pairwise
from studio.evals.spec import EvalSpec, scorer_name
from studio.gateway import GatewayError
from studio.store.db import session_scope
from studio.store.models import EvalOutput, EvalScore, Job

logger = logging.getLogger(__name__)


class RunCancelled(Exception):
    """The job was cancelled while the run was going."""


def stored_pairs(db_url: str, job_id: int) -> set[tuple[int, str]]:
    with session_scope(db_url) as s:
        return set(s.execute(select(EvalOutput.datapoint, EvalOutput.model).where(EvalOutput.job_id == job_id)).all())


def _score_row(job_id: int, dp: int, model: str, scorer: str, r: ScoreResult) -> EvalScore:
    return EvalScore(job_id=job_id, datapoint=dp, model=model, scorer=scorer, score=r.score, status=r.status,
                     reason=(r.reason or "")[:2048], raw=r.raw)


def store_output(db_url: str, job_id: int, out: EvalOutput, scores: dict[str, ScoreResult]) -> bool:
    """One transaction per answer, so the leaderboard sees it at once and a resume skips it.
    False when the pair was already stored (a concurrent attempt)."""
    try:
        with session_scope(db_url) as s:
            s.add(out)
            for name, r in scores.items():
                s.add(_score_row(job_id, out.datapoint, out.model, name, r))
        return True
    except IntegrityError:
        return False


def store_pairwise(db_url: str, job_id: int, dp: int, scorer: str, results: dict[str, ScoreResult]) -> None:
    try:
        with session_scope(db_url) as s:
            for model, r in results.items():
                s.add(_score_row(job_id, dp, model, scorer, r))
    except IntegrityError:
        pass


def _content(body: dict[str, Any]) -> str:
    return (body.get("choices") or [{}])[0].get("message", {}).get("content") or ""


class EvalRun:
    """One run of ``spec`` as job ``job_id``. ``client`` is a ``studio.gateway.Client``."""

    def __init__(self, db_url: str, job_id: int, spec: EvalSpec, client: Any, *,
                 on_result: Callable[[dict[str, Any]], None] | None = None, cancel_poll_s: float = 1.0):
        self.db_url, self.job_id, self.spec, self.client = db_url, job_id, spec, client
        self.on_result = on_result
        self.cancel_poll_s = cancel_poll_s
        self.scorers = build_scorers(spec, client)
        self.pointwise = {n: s for n, s in self.scorers.items() if not is_pairwise(s.spec)}
        self.pairwise = {n: s for n, s in self.scorers.items() if is_pairwise(s.spec)}
        self.outputs: dict[tuple[int, str], str | None] = {}
        self.written = 0
        self._pairwise_started: set[tuple[int, str]] = set()

    # ---------------------------------------------------------------- the run
    async def run(self) -> dict[str, Any]:
        with session_scope(self.db_url) as s:
            _, points = load_datapoints(s, self.spec)
        done = stored_pairs(self.db_url, self.job_id)
        todo = [(p, m) for p in points for m in self.spec.models if (p.index, m) not in done]
        self._load_outputs_for_pairwise(points, done)
        sem = asyncio.Semaphore(self.spec.concurrency)
        t0 = time.perf_counter()
        tasks = [asyncio.create_task(self._one(sem, p, m)) for p, m in todo]
        watcher = asyncio.create_task(self._watch_cancel())
        work = asyncio.gather(*tasks)  # fails as soon as one task fails
        try:
            # The first failure or the cancel watcher ends the run; the rest is cancelled below.
            finished, _ = await asyncio.wait({work, watcher}, return_when=asyncio.FIRST_COMPLETED)
            if watcher in finished:
                watcher.result()  # raises RunCancelled
            work.result()
            # Pairwise rows left over from an interrupted attempt (outputs stored, verdict not).
            await asyncio.gather(*(self._pairwise(sem, p) for p in points))
        finally:
            for t in (*tasks, watcher):
                t.cancel()
            await asyncio.gather(work, watcher, return_exceptions=True)
        return {"rows": len(points), "answered": self.written, "skipped_stored": len(done),
                "wall_s": round(time.perf_counter() - t0, 3)}

    async def _watch_cancel(self) -> None:
        while True:
            await asyncio.sleep(self.cancel_poll_s)
            status, requested = await asyncio.to_thread(self._job_state)
            if requested or status in ("CANCELLED", "FAILED", "SUCCEEDED"):
                raise RunCancelled(f"eval {self.job_id} is {status}{' (cancel requested)' if requested else ''}")

    def _job_state(self) -> tuple[str, bool]:
        with session_scope(self.db_url) as s:
            job = s.get(Job, self.job_id)
            return job.status, bool(job.cancel_requested)

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
        if await asyncio.to_thread(store_output, self.db_url, self.job_id, out, scores):
            self.written += 1
            if self.on_result:
                self.on_result(event)
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

    # ---------------------------------------------------------------- pairwise judges
    def _load_outputs_for_pairwise(self, points: list[Datapoint], done: set[tuple[int, str]]) -> None:
        if not self.pairwise or not done:
            return
        with session_scope(self.db_url) as s:
            for dp, model, output in s.execute(select(EvalOutput.datapoint, EvalOutput.model, EvalOutput.output)
                                               .where(EvalOutput.job_id == self.job_id)):
                self.outputs[(dp, model)] = output

    def _pairwise_stored(self, dp: int, scorer: str) -> bool:
        with session_scope(self.db_url) as s:
            return s.scalar(select(EvalScore.id).where(EvalScore.job_id == self.job_id, EvalScore.datapoint == dp,
                                                       EvalScore.scorer == scorer).limit(1)) is not None

    async def _pairwise(self, sem: asyncio.Semaphore, p: Datapoint) -> None:
        if not all((p.index, m) in self.outputs for m in self.spec.models):
            return
        for name, judge in self.pairwise.items():
            # Two answers of one datapoint can complete together: judge it once.
            if (p.index, name) in self._pairwise_started:
                continue
            self._pairwise_started.add((p.index, name))
            if await asyncio.to_thread(self._pairwise_stored, p.index, name):
                continue
            baseline = judge.spec.baseline or self.spec.models[0]
            base_out = self.outputs[(p.index, baseline)]
            results: dict[str, ScoreResult] = {}
            for model in self.spec.models:
                if model == baseline:
                    continue
                cand = self.outputs[(p.index, model)]
                if cand is None or base_out is None:
                    results[model] = ScoreResult.unscored("no answer to compare", status="error")
                    continue
                async with sem:
                    results[model] = await judge.compare(p, cand, base_out)
            await asyncio.to_thread(store_pairwise, self.db_url, self.job_id, p.index, name, results)
