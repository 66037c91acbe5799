"""The eval job's model calls at the engine's width: ``spec.concurrency`` calls in flight, judges
included, counted at the external edge; every call a usage row of the job; and the same results
at concurrency 1 and at concurrency 6 (SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest
from fastapi import FastAPI, Request
from sqlalchemy import func, select

from studio.evals.run import create_here, run_job
from studio.evals.spec import EvalSpec
from studio.store.db import session_scope
from studio.store.models import EvalOutput, EvalScore, Job, UsageRecord
from tests.data.fake_generator import hold_until_width
from tests.evals.scripted import _pairwise_winner, reverse_answer
from tests.loopback import ServerThread


class Gate:
    """A scripted provider (``good`` reverses, ``bad`` echoes, ``judge`` gives 8 or prefers the
    reversal) that holds every call until ``width`` calls are waiting, then lets them go together.
    A runner that cannot keep ``width`` calls in flight leaves calls held: they are let go after
    ``hold_s`` and counted in ``stalled``; one that sends more shows in ``max_in_flight``."""

    def __init__(self) -> None:
        self.width, self.hold_s = 1, 20.0
        self.in_flight = self.max_in_flight = self.calls = self.stalled = 0
        self._waiting: list[asyncio.Event] = []
        app = FastAPI()
        app.post("/v1/chat/completions")(self._chat)
        self.server = ServerThread(app)

    def reset(self, width: int) -> None:
        self.width, self.in_flight, self.max_in_flight, self.calls, self.stalled = width, 0, 0, 0, 0
        self._waiting = []

    async def _hold(self) -> None:
        if not await hold_until_width(self._waiting, self.width, self.hold_s):
            self.stalled += 1

    async def _chat(self, request: Request):
        body = await request.json()
        model, text = body["model"], body["messages"][-1]["content"]
        self.calls += 1
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await self._hold()
        finally:
            self.in_flight -= 1
        if model == "good":
            out = reverse_answer(text)
        elif model == "bad":
            out = text.removeprefix("reverse: ")
        else:
            out = f"Winner: {_pairwise_winner(text)}" if "Answer A:" in text else "Score: 8"
        return {"id": f"g-{self.calls}", "object": "chat.completion", "created": int(time.time()), "model": model,
                "usage": {"prompt_tokens": 10, "completion_tokens": 4, "total_tokens": 14},
                "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": out}}]}


@pytest.fixture(scope="module")
def gate() -> Iterator[Gate]:
    g = Gate()
    g.server.start()
    yield g
    g.server.stop()


@pytest.fixture
def provider(gate):
    """The gateway fixture's provider groups (good, bad, judge, ...) point at the gate."""
    return gate.server


def usage_rows(db_url: str, job: str, want: int, timeout_s: float = 15.0) -> list[UsageRecord]:
    """The job's usage rows once ``want`` are written (the gateway writes them off the call path)."""
    deadline = time.monotonic() + timeout_s
    while True:
        with session_scope(db_url) as s:
            rows = list(s.scalars(select(UsageRecord).where(UsageRecord.job_id == job)))
            s.expunge_all()
        if len(rows) >= want or time.monotonic() > deadline:
            return rows
        time.sleep(0.1)


def test_the_job_keeps_its_concurrency_in_flight_judges_included_and_every_call_is_accounted(
        settings, gateway, reverse_data, gate):
    gate.reset(width=4)
    s = EvalSpec.model_validate({"dataset": reverse_data, "models": ["good"], "limit": 24, "concurrency": 4,
                                 "generation": {"max_tokens": 16},
                                 "scorers": [{"type": "exact_match"}, {"type": "judge", "model": "judge"}]})
    eval_id = create_here(settings.db_url, s, "test")
    # No client handed in: the job's own, as `python -m studio.evals.run` makes it (its cap sent
    # to the gateway as the job's concurrency), on the gateway URL and key the fixture set.
    assert run_job(settings, eval_id) == 0
    assert (gate.calls, gate.stalled, gate.max_in_flight) == (48, 0, 4)  # 24 answers + 24 verdicts
    with session_scope(settings.db_url) as ses:
        job = ses.get(Job, eval_id)
        assert job.status == "SUCCEEDED" and job.result["answered"] == 24
        scores = {(sc.scorer, sc.score) for sc in ses.scalars(select(EvalScore).where(EvalScore.job_id == eval_id))}
    assert scores == {("exact_match", 1.0), ("judge", 8.0)}
    rows = usage_rows(settings.db_url, f"eval-{eval_id}", 48)
    assert len(rows) == 48 and {(r.service, r.key_name, r.status) for r in rows} == {("eval", "eval-tests", 200)}
    assert sorted(r.model_group for r in rows) == ["good"] * 24 + ["judge"] * 24


def test_concurrency_changes_the_speed_not_the_results(settings, gateway, reverse_data, gate):
    gate.reset(width=1)  # no holding: the width is the runner's alone

    def results(concurrency: int) -> tuple[dict, dict, int]:
        # temperature > 0 without a seed: not cacheable, so the second run asks the provider too
        s = EvalSpec.model_validate({
            "dataset": reverse_data, "models": ["good", "bad"], "limit": 12, "concurrency": concurrency,
            "generation": {"max_tokens": 16, "temperature": 0.5},
            "scorers": [{"type": "exact_match"}, {"type": "judge", "name": "points", "model": "judge"},
                        {"type": "judge", "name": "pairs", "model": "judge", "mode": "pairwise",
                         "baseline": "bad"}]})
        eval_id = create_here(settings.db_url, s, "test")
        calls = gate.calls
        with gateway.client(max_concurrency=concurrency) as client:
            assert run_job(settings, eval_id, client=client) == 0
        with session_scope(settings.db_url) as ses:
            outs = {(o.datapoint, o.model): (o.output, o.error) for o in
                    ses.scalars(select(EvalOutput).where(EvalOutput.job_id == eval_id))}
            scores = {(sc.datapoint, sc.model, sc.scorer): (sc.score, sc.status, sc.reason) for sc in
                      ses.scalars(select(EvalScore).where(EvalScore.job_id == eval_id))}
            assert ses.scalar(select(func.count()).select_from(EvalOutput).where(EvalOutput.job_id == eval_id)) == 24
        return outs, scores, gate.calls - calls

    one, wide = results(1), results(6)
    # 24 answers, 24 pointwise verdicts, 12 pairwise verdicts asked in both orders; the judge is
    # greedy, so the second run's verdicts (the same prompts) come from the gateway's cache
    assert (one[2], wide[2]) == (24 + 24 + 24, 24)
    assert one[0] == wide[0] and one[1] == wide[1]
    assert len(one[1]) == 24 * 2 + 12
    assert {v[0] for k, v in one[1].items() if k[2] == "pairs"} == {1.0}  # good beats bad on every row
