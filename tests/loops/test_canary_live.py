"""The canary's split on a live studio (the shared tiny-model stack, tests/stacks.py): the loop's
``set_split`` aliases the served name itself with an experiment (``takes_over_name``), and requests
for the bare name from many ``user`` values go to both arms as the Router's ``pick_arm`` draws them
from the weights set, the same user always to the same arm; the candidate's adapter cannot be
loaded, so every request routed to it fails, and each failure is in the log against its arm
(``request_failures``) beside the champion's answers (``completions``), as a canary look counts them.
``end_split`` gives the bare name back to its champion.

Then the shadow on the same stack: with a generation of a loop on the name in SHADOW (a working
candidate, ``shadow.share`` 0.99), requests for the bare name are answered by the champion as
before and mirrored to the candidate in the background — never a request with ``tools``, never a
completion logged for the candidate — and the running scheduler's pass judges the stored pairs
through the Gateway as the loop's payer (here the operator's admin key), tagged with the loop."""

from __future__ import annotations

import time
from collections import Counter

import httpx
import pytest
from sqlalchemy import func, select

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
NAME = "canary-live"
SPLIT = {f"{NAME}@1": 70.0, f"{NAME}@2": 30.0}


@pytest.fixture(scope="module")
def live(tiny_stack, tmp_path_factory):
    from studio.registry.versions import promote, register_version
    from studio.settings import StudioSettings
    from studio.store.db import init_db, session_scope
    from tests.deployments.conftest import make_adapter

    model = tiny_stack.tiny_model()
    root = tmp_path_factory.mktemp("canary-live")
    adapter = make_adapter(model, root / "adapter", seed=23)
    stack = tiny_stack.ensure()
    settings = StudioSettings(home=stack.home, database_url=None, artifacts_uri=None, mlflow_uri=None,
                              redis_url=None, admin_key=None)
    init_db(settings.db_url)
    with session_scope(settings.db_url) as s:
        # @2: its engine fails every request; @3: the shadow's candidate, answering
        for uri in (adapter, root / "no-such-adapter", adapter):
            register_version(s, name=NAME, base_model=str(model), method="sft", adapter_type="lora", uri=str(uri))
        promote(s, f"{NAME}@1", "champion")
    http = httpx.Client(base_url=f"{stack.base}/v1", headers={"Authorization": f"Bearer {stack.admin}"},
                        timeout=120)
    yield {"settings": settings, "http": http}
    http.close()


def _ask(http: httpx.Client, user: str) -> tuple[str, int]:
    """The version the request for the bare name went to, and the status."""
    r = http.post("/chat/completions", json={"model": NAME, "user": user, "max_tokens": 2, "temperature": 0,
                                             "messages": [{"role": "user", "content": "reverse: 1 2"}]})
    if r.status_code == 200:
        return r.json()["studio_model_version"], 200
    message = r.json()["error"]["message"]
    assert f"{NAME}@2" in message, message  # only the candidate fails
    return f"{NAME}@2", r.status_code


def test_the_loops_split_routes_users_by_weight_sticky_and_logs_the_failing_arm(live):
    from studio.experiments.ab import get_experiment, pick_arm
    from studio.loops.actions import ServiceActions
    from studio.store.db import session_scope
    from studio.store.log_models import RequestFailure
    from studio.store.models import Completion

    url, http = live["settings"].db_url, live["http"]
    actions = ServiceActions(models_available=lambda: [], cluster_gpus=lambda: None)
    assert _ask(http, "before") == (f"{NAME}@1", 200)  # the champion answers the bare name
    with session_scope(url) as s:
        assert actions.set_split(s, NAME, SPLIT)
    with session_scope(url) as s:
        arms = get_experiment(s, NAME).arms
    probe = next(f"probe-{i}" for i in range(100) if pick_arm(NAME, arms, f"probe-{i}") == f"{NAME}@2")
    deadline = time.monotonic() + 60  # the Router re-reads experiments every second
    while _ask(http, probe)[0] != f"{NAME}@2":
        assert time.monotonic() < deadline, "the Router never routed by the split"
        time.sleep(0.5)

    users = [f"user-{i}" for i in range(60)]
    got = {u: _ask(http, u) for u in users}
    assert {u: v for u, (v, _) in got.items()} == {u: pick_arm(NAME, arms, u) for u in users}
    by_arm = Counter(v for v, _ in got.values())
    assert set(by_arm) == set(SPLIT) and by_arm[f"{NAME}@1"] > by_arm[f"{NAME}@2"], by_arm
    assert all(code != 200 for v, code in got.values() if v == f"{NAME}@2")
    again = {u: _ask(http, u)[0] for u in users[:20]}  # sticky: the same user, the same arm
    assert again == {u: got[u][0] for u in users[:20]}

    # Every request is in the log against its arm: the champion's answers, the candidate's failures.
    want = Counter(got[u][0] for u in users) + Counter(again.values())
    deadline = time.monotonic() + 60  # the Router's recorder writes in the background
    while True:
        with session_scope(url) as s:
            answered = s.scalar(select(func.count()).select_from(Completion).where(
                Completion.experiment == NAME, Completion.model_version == f"{NAME}@1",
                Completion.user.in_(users)))
            failed = s.execute(select(RequestFailure.model_version, RequestFailure.arm, RequestFailure.user,
                                      RequestFailure.error_code)
                               .where(RequestFailure.experiment == NAME, RequestFailure.user.in_(users))).all()
        if (answered, len(failed)) == (want[f"{NAME}@1"], want[f"{NAME}@2"]) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert (answered, len(failed)) == (want[f"{NAME}@1"], want[f"{NAME}@2"])
    assert {(f.model_version, f.arm) for f in failed} == {(f"{NAME}@2", f"{NAME}@2")}
    assert {f.user for f in failed} == {u for u in users if got[u][0] == f"{NAME}@2"}
    assert all(f.error_code >= 400 for f in failed)

    with session_scope(url) as s:
        assert actions.end_split(s, NAME)
    deadline = time.monotonic() + 60
    while any(_ask(http, u) != (f"{NAME}@1", 200) for u in users[:5]):  # the champion's alone again
        assert time.monotonic() < deadline, "the bare name did not go back to its champion"
        time.sleep(0.5)


TOOLS = [{"type": "function", "function": {"name": "lookup", "description": "Look a word up.",
                                           "parameters": {"type": "object", "properties": {
                                               "word": {"type": "string"}}}}}]


def test_the_shadow_mirrors_live_requests_to_the_candidate_unseen_and_the_scheduler_judges_them(live):
    from datetime import timedelta

    from studio.loops import control
    from studio.loops import repository as repo
    from studio.loops.states import Reason, State
    from studio.store.base import utcnow
    from studio.store.db import session_scope
    from studio.store.log_models import ShadowPair
    from studio.store.models import ApiKey, Completion, UsageRecord
    from tests.loops.traffic import TO_CANARY, loop_spec

    url, http = live["settings"].db_url, live["http"]
    spec = loop_spec(served=NAME, name=f"{NAME}-loop", **{"shadow.share": 0.99, "shadow.judge": "judge"})
    with session_scope(url) as s:  # one transaction: the scheduler sees it only in SHADOW
        loop = repo.create_loop(s, spec, created_by="admin")
        gen = repo.start_generation(s, loop, repo.frozen_config(spec), actor="test", champion=f"{NAME}@1")
        for frm, to, why in TO_CANARY[:-1]:
            repo.move(s, gen.id, frm, to, why, actor="test")
        repo.move(s, gen.id, State.GATE, State.SHADOW, Reason.GATE_PASSED, actor="test",
                  values={"champion": f"{NAME}@1", "candidate": f"{NAME}@3",
                          "deadline_at": utcnow() + timedelta(hours=1)})
        gen_id = gen.id
    try:
        time.sleep(2)  # the Router re-reads the loops in shadow every second
        answers = {}
        for i in range(6):  # fewer than the sign test could decide on: the generation stays
            r = http.post("/chat/completions", json={
                "model": NAME, "user": f"shadow-{i}", "max_tokens": 4, "temperature": 0,
                "messages": [{"role": "user", "content": f"reverse: {i} 7"}]})
            assert r.status_code == 200 and r.json()["studio_model_version"] == f"{NAME}@1", r.text
            answers[r.json()["id"]] = r.json()["choices"][0]["message"]["content"]
        with_tools = http.post("/chat/completions", json={
            "model": NAME, "user": "shadow-tools", "max_tokens": 4, "temperature": 0, "tools": TOOLS,
            "tool_choice": "none", "messages": [{"role": "user", "content": "reverse: 9 9"}]})
        assert with_tools.status_code == 200, with_tools.text
        deadline = time.monotonic() + 60  # mirrored after each answer, written in the background
        while True:
            with session_scope(url) as s:
                pairs = list(s.scalars(select(ShadowPair).where(ShadowPair.generation_id == gen_id)))
            if len(pairs) >= len(answers) or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert 1 <= len(pairs) <= len(answers)  # each request mirrored with probability 0.99
        assert all(p.completion_id in answers and p.champion_response == answers[p.completion_id]
                   and (p.champion, p.candidate) == (f"{NAME}@1", f"{NAME}@3") for p in pairs)
        with session_scope(url) as s:  # the candidate's answers are nobody's completions
            assert s.scalar(select(func.count()).select_from(Completion).where(
                Completion.model_version == f"{NAME}@3")) == 0

        deadline = time.monotonic() + 120  # the scheduler's pass asks the judge (the tiny model)
        while True:
            with session_scope(url) as s:
                judged = s.scalar(select(func.count()).select_from(ShadowPair).where(
                    ShadowPair.generation_id == gen_id, ShadowPair.verdict.is_not(None)))
                calls = s.execute(select(UsageRecord.key_id, UsageRecord.model_group).where(
                    UsageRecord.service == "loop", UsageRecord.job_id == f"loop:{NAME}-loop:g1:shadow")).all()
                operator = s.scalars(select(ApiKey.id).where(ApiKey.role == "admin", ApiKey.revoked_at.is_(None))
                                     .order_by(ApiKey.id).limit(1)).first()
            if (judged and len(calls) >= judged) or time.monotonic() > deadline:  # usage rows come in batches
                break
            time.sleep(1)
        # Each judged pair asked at least once (a reply the judge's parser cannot read ends the pair
        # after its first order: "unscored").
        assert judged >= 1 and len(calls) >= judged
        assert {c.model_group for c in calls} == {"judge"} and {c.key_id for c in calls} == {operator}
        with session_scope(url) as s:
            assert repo.get_generation(s, gen_id).state == State.SHADOW.value
    finally:
        with session_scope(url) as s:
            control.cancel_loop(s, f"{NAME}-loop", actor="test")
