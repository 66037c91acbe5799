"""`studio loop simulate`'s parts that need no served model (the users against a live stack:
tests/loops/test_loop_e2e.py): the seeded plan, the rating rule, the spec's refusals, the CLI's
refusals, and following a generation's state for ``--until-verdict`` on a real database."""

from __future__ import annotations

from collections import Counter

import pytest

from studio.errors import StudioError
from studio.loops import repository as repo
from studio.loops.simulate import GenerationWatch, SimulateSpec, build_scorer, plan, thumbs_up
from studio.loops.states import Reason, State
from studio.store.db import session_scope
from tests.loops.test_cli import cli as cli_fixture
from tests.loops.traffic import loop_spec, move, register, at


def test_the_plan_is_seeded_per_request_and_follows_the_rates():
    spec = SimulateSpec(target="svc", dataset="d", rate=0.3, users=50, seed=4)
    first = [plan(spec, 200, i) for i in range(4000)]
    assert first == [plan(spec, 200, i) for i in range(4000)]  # the same whatever the order they are sent in
    assert [plan(spec, 200, i) for i in reversed(range(4000))][::-1] == first
    assert first != [plan(spec.model_copy(update={"seed": 5}), 200, i) for i in range(4000)]
    rated = sum(p.rated for p in first) / len(first)
    assert 0.27 < rated < 0.33
    assert len({p.user for p in first}) == 50 and {p.row for p in first} <= set(range(200))
    ups = Counter((correct, thumbs_up(spec, correct, p)) for p in first for correct in (True, False))
    assert 0.82 < ups[(True, True)] / len(first) < 0.88 and 0.12 < ups[(False, True)] / len(first) < 0.18


def test_the_spec_refuses_what_makes_no_sense():
    with pytest.raises(ValueError, match="p_up_wrong .* is above p_up_correct"):
        SimulateSpec(target="svc", dataset="d", p_up_correct=0.2, p_up_wrong=0.6)
    with pytest.raises(ValueError):
        SimulateSpec(target="svc", dataset="d", rate=1.5)
    with pytest.raises(StudioError, match="programmatic scorer"):
        build_scorer(SimulateSpec(target="svc", dataset="d", scorer={"type": "embedding"}))


cli = cli_fixture  # the `studio loop` runner fixture of test_cli


def test_the_cli_needs_a_stop_and_a_loop_to_follow(cli, settings):
    code, out = cli("simulate", "svc", "--dataset", "d")
    assert code != 0 and "--requests N, --until-verdict" in out
    code, out = cli("simulate", "nobody", "--dataset", "d", "--until-verdict")
    assert code == 1 and "no loop is named 'nobody'" in out


def test_the_watch_sends_around_training_and_stops_at_the_end(settings):
    register(settings.db_url)
    with session_scope(settings.db_url) as s:
        loop = repo.create_loop(s, loop_spec(), created_by="admin")
    watch = GenerationWatch(settings.db_url, "svc-loop")
    assert watch() == "send"  # no generation yet: the users' feedback may start one
    with session_scope(settings.db_url) as s:
        gen = repo.start_generation(s, s.merge(loop), repo.frozen_config(loop_spec()), actor="scheduler",
                                    champion="svc@1")
        gen_id = gen.id
    seen = []
    watch.on_state = lambda n, st: seen.append((n, st))
    assert watch() == "send"  # WATCHING
    for frm, to, mode in ((State.WATCHING, State.TRIGGERED, "wait"), (State.TRIGGERED, State.SNAPSHOT, "wait"),
                          (State.SNAPSHOT, State.TRAINING, "wait"), (State.TRAINING, State.GATE, "wait"),
                          (State.GATE, State.CANARY, "send"), (State.CANARY, State.PAUSED, "send"),
                          (State.PAUSED, State.CANARY, "send"), (State.CANARY, State.ROLLING_BACK, "wait"),
                          (State.ROLLING_BACK, State.ROLLED_BACK, "stop")):
        why = {State.TRIGGERED: Reason.TRIGGER_MANUAL, State.CANARY: Reason.SHADOW_SKIPPED,
               State.PAUSED: Reason.NO_TRAFFIC, State.ROLLING_BACK: Reason.VERDICT_ROLLBACK}.get(to, Reason.STEP_DONE)
        if (frm, to) == (State.PAUSED, State.CANARY):
            why = Reason.RESUME
        if to is State.ROLLED_BACK:
            why = Reason.DONE
        move(settings.db_url, gen_id, frm, to, why, at(0))
        assert watch() == mode, (frm, to)
    assert seen[0] == (1, "WATCHING") and seen[-1] == (1, "ROLLED_BACK")
