"""Loops and generations in the database (SQLite and PostgreSQL): compare-and-set moves, the
transition log, one active generation per loop, two harm rollbacks pause the loop, and explain."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from studio.errors import Conflict, NotFound
from studio.loops import repository as repo
from studio.loops.spec import LoopSpec
from studio.loops.states import IllegalTransition, Reason, State
from studio.loops.stats import Action, ArmCounts, Look, decide
from studio.store.db import session_scope
from studio.store.loop_models import LoopGeneration

pytestmark = pytest.mark.both_databases  # PostgreSQL too: locking, concurrent writers, constraints

SHIPPED = Path(__file__).resolve().parents[2] / "configs" / "loops" / "reverse_tiny.yaml"


def _spec(name: str = "loop-a", served: str = "served-a") -> LoopSpec:
    data = yaml.safe_load(SHIPPED.read_text())
    return LoopSpec.model_validate({**data, "name": name, "served_name": served})


def _new_generation(url: str, name: str = "loop-a", served: str = "served-a") -> int:
    with session_scope(url) as s:
        loop = repo.create_loop(s, _spec(name, served), created_by="admin")
        return repo.start_generation(s, loop, repo.frozen_config(_spec(name, served)), actor="scheduler").id


def _walk(url: str, gen_id: int, moves: list[tuple[State, State, Reason]]) -> None:
    for frm, to, why in moves:
        with session_scope(url) as s:
            repo.move(s, gen_id, frm, to, why, actor="scheduler", detail=f"{frm}->{to}")


TO_CANARY = [
    (State.WATCHING, State.TRIGGERED, Reason.TRIGGER_MANUAL),
    (State.TRIGGERED, State.SNAPSHOT, Reason.STEP_DONE),
    (State.SNAPSHOT, State.TRAINING, Reason.STEP_DONE),
    (State.TRAINING, State.GATE, Reason.STEP_DONE),
    (State.GATE, State.CANARY, Reason.SHADOW_SKIPPED),
]


def test_a_generation_walks_to_promoted_with_every_move_logged(settings):
    url = settings.db_url
    gen_id = _new_generation(url)
    _walk(url, gen_id, TO_CANARY + [
        (State.CANARY, State.CANARY, Reason.CANARY_STEP),
        (State.CANARY, State.PROMOTING, Reason.VERDICT_PROMOTE),
        (State.PROMOTING, State.PROMOTING, Reason.RETRY),
        (State.PROMOTING, State.PROMOTED, Reason.DONE),
    ])
    with session_scope(url) as s:
        gen = repo.get_generation(s, gen_id)
        assert gen.state == "PROMOTED" and gen.canary_step == 1 and gen.active_loop_id is None
        assert gen.ended_at is not None and gen.attempt == 1  # attempts count within a state
        log = repo.transitions(s, gen_id)
        assert [(t.to_state, t.reason, t.attempt) for t in log[-3:]] == [
            ("PROMOTING", "verdict_promote", 1), ("PROMOTING", "retry", 2), ("PROMOTED", "done", 1)]
        assert [(t.from_state, t.to_state) for t in log][:2] == [(None, "WATCHING"), ("WATCHING", "TRIGGERED")]
        assert log[-1].actor == "scheduler" and log[-1].detail == "PROMOTING->PROMOTED"
        assert len(log) == 1 + len(TO_CANARY) + 4
        assert gen.config["loop"]["served_name"] == "served-a"  # the frozen recipe


def test_compare_and_set_lets_only_one_of_two_movers_win(settings):
    """Two processes read CANARY: a verdict promotes, an admin rolls back. One wins; the other gets
    a Conflict naming the state it lost to, and nothing of its move is written."""
    url = settings.db_url
    gen_id = _new_generation(url)
    _walk(url, gen_id, TO_CANARY)
    with session_scope(url) as s:
        repo.move(s, gen_id, State.CANARY, State.PROMOTING, Reason.VERDICT_PROMOTE, actor="scheduler")
    with pytest.raises(Conflict) as e, session_scope(url) as s:
        repo.move(s, gen_id, State.CANARY, State.ROLLING_BACK, Reason.HUMAN_ROLLBACK, actor="admin")
    assert "is no longer CANARY (it is PROMOTING)" in e.value.problem
    with session_scope(url) as s:
        assert repo.get_generation(s, gen_id).state == "PROMOTING"
        assert [t.actor for t in repo.transitions(s, gen_id)][-1] == "scheduler"


def test_a_stale_session_loses_the_race_at_the_database(settings):
    """The compare-and-set is in the UPDATE, not in Python: a session that read the row before the
    other committed still cannot move it."""
    url = settings.db_url
    gen_id = _new_generation(url)
    with session_scope(url) as stale:
        repo.get_generation(stale, gen_id)  # read WATCHING
        with session_scope(url) as other:
            repo.move(other, gen_id, State.WATCHING, State.TRIGGERED, Reason.TRIGGER_DATA, actor="scheduler-2")
        with pytest.raises(Conflict, match="is no longer WATCHING"):
            repo.move(stale, gen_id, State.WATCHING, State.TRIGGERED, Reason.TRIGGER_MANUAL, actor="scheduler-1")
    with session_scope(url) as s:
        assert [t.actor for t in repo.transitions(s, gen_id)] == ["scheduler", "scheduler-2"]


def test_an_illegal_move_writes_nothing(settings):
    url = settings.db_url
    gen_id = _new_generation(url)
    with pytest.raises(IllegalTransition), session_scope(url) as s:
        repo.move(s, gen_id, State.WATCHING, State.CANARY, Reason.TRIGGER_MANUAL, actor="scheduler")
    with session_scope(url) as s:
        assert repo.get_generation(s, gen_id).state == "WATCHING"
        assert len(repo.transitions(s, gen_id)) == 1


def test_pause_remembers_where_and_resume_goes_back(settings):
    url = settings.db_url
    gen_id = _new_generation(url)
    _walk(url, gen_id, TO_CANARY + [(State.CANARY, State.PAUSED, Reason.NO_FEEDBACK)])
    with session_scope(url) as s:
        assert repo.get_generation(s, gen_id).paused_from == "CANARY"
        with pytest.raises(IllegalTransition, match="resume it to CANARY"):
            repo.move(s, gen_id, State.PAUSED, State.TRAINING, Reason.RESUME, actor="admin")
    _walk(url, gen_id, [(State.PAUSED, State.CANARY, Reason.RESUME)])
    with session_scope(url) as s:
        gen = repo.get_generation(s, gen_id)
        assert gen.state == "CANARY" and gen.paused_from is None


def test_one_active_generation_per_loop_and_one_loop_per_served_name(settings):
    url = settings.db_url
    gen_id = _new_generation(url)
    with session_scope(url) as s:
        loop = repo.get_loop(s, "loop-a")
        with pytest.raises(Conflict, match="already has an active generation"):
            repo.start_generation(s, loop, {}, actor="scheduler")
    with pytest.raises(Conflict, match="one loop per served name"), session_scope(url) as s:
        repo.create_loop(s, _spec("loop-b", "served-a"))
    with pytest.raises(Conflict, match="a loop named 'loop-a'"), session_scope(url) as s:
        repo.create_loop(s, _spec("loop-a", "served-b"))
    with pytest.raises(NotFound), session_scope(url) as s:
        repo.get_loop(s, "nope")
    _walk(url, gen_id, [(State.WATCHING, State.CANCELLED, Reason.CANCEL)])
    with session_scope(url) as s:  # the loop is free again; generations are numbered per loop
        nxt = repo.start_generation(s, repo.get_loop(s, "loop-a"), {}, actor="scheduler")
        assert nxt.number == 2


def test_the_database_holds_one_active_generation_even_if_the_check_is_skipped(settings):
    url = settings.db_url
    gen_id = _new_generation(url)
    with pytest.raises(Exception), session_scope(url) as s:  # noqa: B017 - the driver's IntegrityError
        first = repo.get_generation(s, gen_id)
        s.add(LoopGeneration(loop_id=first.loop_id, number=9, active_loop_id=first.loop_id, state="WATCHING",
                             attempt=1, canary_step=0, config={}))
        s.flush()


def _harm_rollback(url: str, gen_id: int) -> None:
    _walk(url, gen_id, TO_CANARY + [(State.CANARY, State.ROLLING_BACK, Reason.GUARDRAIL),
                                    (State.ROLLING_BACK, State.ROLLED_BACK, Reason.DONE)])


def test_two_harm_rollbacks_in_a_row_pause_the_loop_and_an_inconclusive_one_does_not_count(settings):
    url = settings.db_url
    gen_id = _new_generation(url)
    _harm_rollback(url, gen_id)
    with session_scope(url) as s:
        loop = repo.get_loop(s, "loop-a")
        assert (loop.rollbacks_in_a_row, loop.status) == (1, "active")
        gen2 = repo.start_generation(s, loop, {}, actor="scheduler").id
    _walk(url, gen2, TO_CANARY + [(State.CANARY, State.ROLLING_BACK, Reason.INCONCLUSIVE),
                                  (State.ROLLING_BACK, State.ROLLED_BACK, Reason.DONE)])
    with session_scope(url) as s:
        loop = repo.get_loop(s, "loop-a")
        assert (loop.rollbacks_in_a_row, loop.status) == (1, "active")
        gen3 = repo.start_generation(s, loop, {}, actor="scheduler").id
    _harm_rollback(url, gen3)
    with session_scope(url) as s:
        loop = repo.get_loop(s, "loop-a")
        assert (loop.rollbacks_in_a_row, loop.status) == (2, "paused")
        assert "2 rollbacks in a row" in loop.status_reason


def test_explain_recomputes_every_stored_verdict_from_its_counts(settings):
    url = settings.db_url
    gen_id = _new_generation(url)
    _walk(url, gen_id, TO_CANARY)
    rule = _spec().decision
    looks = [Look(at_s=20.0 * i, weight=0.5, step=0,
                  champion=ArmCounts(completions=40 * i, rated=30 * i, thumbs_up=15 * i, latency_p95_ms=90,
                                     tokens_per_answer=8),
                  candidate=ArmCounts(completions=40 * i, rated=30 * i, thumbs_up=21 * i, latency_p95_ms=95,
                                      tokens_per_answer=8),
                  step_assigned_champion=40 * i, step_assigned_candidate=40 * i) for i in (1, 3, 6)]
    with session_scope(url) as s:
        for look in looks:
            repo.record_look(s, gen_id, look, decide(look, rule))
    with session_scope(url) as s:
        explained = repo.explain(s, gen_id)
    assert [e.stored.action for e in explained] == [Action.WAIT, Action.WAIT, Action.PROMOTE]
    assert all(e.agrees for e in explained)
    assert explained[-1].recomputed.lower == pytest.approx(explained[-1].stored.lower)
    assert explained[-1].look == looks[-1]
