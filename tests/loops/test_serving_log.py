"""What the serving path logs for a loop (SQLite and PostgreSQL, no engine): requests routed to a
version that failed count as that arm's requests and errors in a canary look (and as its units in
the sample-ratio test), so a candidate that fails every request is rolled back at the first look
with the guardrail's minimum, not paused for a sample-ratio mismatch; the shadow's pairs, written by
the Router's recorder, judged by the eval's pairwise judge through the gateway (a scripted provider
at the external edge) as the loop owner's key, in both orders, and counted for the sign test."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta

import pytest
from sqlalchemy import select

from studio.experiments.completions import CompletionRecorder, prompt_text
from studio.gateway.service import GatewayService
from studio.gateway.spec import load_gateway_spec
from studio.keys import create_key
from studio.loops import repository as repo
from studio.loops.actions import ServiceActions
from studio.loops.looks import build_look
from studio.loops.shadow import shadowed_names
from studio.loops.states import Reason, State
from studio.store.db import session_scope
from studio.store.log_models import ShadowPair
from studio.store.models import UsageRecord
from tests.loops.test_runner import _looks
from tests.loops.traffic import (T0, TO_CANARY, at, completion, experiment, failure, generation, log, log_failures,
                                 loop_spec, move, register)
from tests.gateway.fake_provider import FakeProvider
from tests.loops.world import EdgeActions, World

pytestmark = pytest.mark.both_databases  # PostgreSQL too: locking, concurrent writers, constraints


@pytest.fixture(scope="module")
def provider():
    fake = FakeProvider().start()
    yield fake
    fake.stop()

def test_failed_requests_are_each_arms_requests_errors_and_units(settings):
    url = settings.db_url
    register(url)
    experiment(url, "svc-canary", {"svc@1": 1.0, "svc@2": 1.0})
    gen_id = generation(url, loop_spec())
    for frm, to, why in TO_CANARY[:-1]:
        move(url, gen_id, frm, to, why, T0 - timedelta(minutes=5))
    move(url, gen_id, State.GATE, State.CANARY, Reason.SHADOW_SKIPPED, T0, canary_alias="svc-canary",
         champion="svc@1", candidate="svc@2")
    log(url, [completion(f"h{i}", "svc@1", at(10 + i), experiment="svc-canary", user=f"u{i}") for i in range(4)])
    log_failures(url, [failure("svc@2", at(20 + i), experiment="svc-canary", user=f"v{i % 3}") for i in range(5)]
                 + [failure("svc@1", at(30), experiment="svc-canary", user="u0", code=503),
                    failure("svc@2", at(40)),  # asked for by name@N: not the canary's traffic
                    failure("svc@2", at(500), experiment="svc-canary")])  # after the look
    with session_scope(url) as s:
        look = build_look(s, repo.get_generation(s, gen_id), at(100))
    assert (look.champion.completions, look.champion.errors) == (5, 1)
    assert (look.candidate.completions, look.candidate.errors, look.candidate.rated) == (5, 5, 0)
    assert look.candidate.latency_p95_ms is None  # latency is the answers'
    # Units: the champion's users u0-u3 (u0 answered and failed: one unit), the candidate's v0-v2.
    assert (look.step_assigned_champion, look.step_assigned_candidate) == (4, 3)
    assert look.idle_traffic_s == 100 - 30


def test_a_candidate_failing_every_request_is_rolled_back_at_the_first_look_not_paused(settings, write_rows):
    world = World(settings, failing_candidate=True, per_tick=60)
    world.setup(write_rows)
    world.run_until({"ROLLED_BACK", "PROMOTED", "PAUSED"})
    assert world.timeline()[-2:] == [("CANARY", "ROLLING_BACK", "guardrail"), ("ROLLING_BACK", "ROLLED_BACK", "done")]
    looks = _looks(world, world.generation().id)
    last = looks[-1]
    assert last.action == "roll_back" and "error_rate" in last.verdict["detail"]
    assert last.look["candidate"]["errors"] == last.look["candidate"]["completions"] >= 10
    assert last.look["step_assigned_candidate"] > 0  # its users counted though it answered none
    assert all(x.action == "wait" for x in looks[:-1])  # never paused for a sample-ratio mismatch


class JudgedActions(EdgeActions):
    """The world's edges, with the real shadow pairs: judged through ``chat`` (the gateway's)."""

    def __init__(self, chat):
        super().__init__()
        self.judge = ServiceActions(models_available=lambda: [], cluster_gpus=lambda: None, judge_chat=chat)

    def shadow_pairs(self, session, gen):
        return self.judge.shadow_pairs(session, gen)


def _gateway(provider, db_url: str) -> GatewayService:
    tag = uuid.uuid4().hex[:6]
    spec = load_gateway_spec({"groups": [{"name": "prefer", "provider": "hosted_vllm", "model": f"prefer-{tag}",
                                          "api_base": provider.base}],
                              "cache": {"namespace": f"studio-test-{tag}"}})
    return GatewayService(spec, None, db_url)


def _pairs(url: str, gen_id: int, answers: list[tuple[str, str]]) -> None:
    """Pairs as the Router's recorder writes what ``RouterClient`` mirrored."""
    async def run():
        recorder = CompletionRecorder(url)
        for i, (champion, candidate) in enumerate(answers):
            messages = [{"role": "user", "content": f"reverse: {i} 2"}]
            recorder.record({"id": uuid.uuid4().hex, "generation_id": gen_id, "endpoint": "chat",
                             "champion": "svc@1", "candidate": "svc@2", "completion_id": f"c{i}",
                             "prompt": messages, "prompt_text": prompt_text("chat", messages),
                             "champion_response": champion, "candidate_response": candidate,
                             "created_at": at(i)}, "shadow")
        return await recorder.flush()

    assert asyncio.run(run()) == len(answers)


def test_shadow_pairs_are_judged_in_both_orders_as_the_loop_owner_and_pass_the_sign_test(settings, write_rows,
                                                                                          provider):
    service = _gateway(provider, settings.db_url)
    world = World(settings, actions=JudgedActions(lambda body, ctx: service.handle("chat", body, ctx)))
    with session_scope(settings.db_url) as s:
        admin_id = create_key(s, "operator", "admin")[1].id
    world.setup(write_rows, **{"shadow.share": 0.5, "shadow.judge": "prefer", "shadow.max_duration_s": 36000})
    t = world.run_until({"SHADOW"})
    gen = world.generation()
    with session_scope(world.url) as s:
        assert shadowed_names(s) == {"svc": {"generation_id": gen.id, "champion": "svc@1", "candidate": "svc@2",
                                             "share": 0.5}}
    world.tick(t + 60)
    assert world.generation().state == "SHADOW"  # no pair yet: waiting
    # A tie (both good: the scripted judge favours position A, so its verdict flips with the order),
    # a loss, then wins until the sign test is sure (11 wins against 1 loss; 8 pairs judged a pass).
    _pairs(world.url, gen.id, [("GOOD 1", "GOOD 2"), ("GOOD", "bad")] + [("bad", "GOOD")] * 14)
    world.run_until({"CANARY", "ROLLED_BACK"}, start=t + 120)
    assert world.timeline()[-1] == ("SHADOW", "CANARY", "shadow_passed"), world.timeline()
    with session_scope(world.url) as s:
        verdicts = {p.completion_id: p.verdict for p in s.scalars(select(ShadowPair))}
        assert shadowed_names(s) == {}  # in the canary now: nothing is mirrored
    assert (verdicts["c0"], verdicts["c1"], verdicts["c2"]) == ("tie", "loss", "win")
    judged = [v for v in verdicts.values() if v is not None]
    assert judged.count("win") >= 11 and len(judged) == 16  # two passes of 8
    service.close()
    with session_scope(world.url) as s:
        calls = list(s.scalars(select(UsageRecord).where(UsageRecord.service == "loop")))
    # Each judged pair asked twice, as the operator's admin key (the loop has no owner key).
    assert len(calls) == 2 * len(judged)
    assert {(c.key_id, c.job_id, c.status) for c in calls} == {(admin_id, "loop:svc-loop:g1:shadow", 200)}
