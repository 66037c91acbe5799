"""The generation state machine: the one table, legal and illegal moves, pause/resume, terminals."""

from __future__ import annotations

import pytest

from studio.loops.states import (IN_TRAFFIC, PAUSABLE, TERMINAL, TRANSITIONS, IllegalTransition, Reason, State,
                                 transition)

HAPPY_PATH = [
    (State.WATCHING, State.TRIGGERED, Reason.TRIGGER_DATA),
    (State.TRIGGERED, State.SNAPSHOT, Reason.STEP_DONE),
    (State.SNAPSHOT, State.TRAINING, Reason.STEP_DONE),
    (State.TRAINING, State.GATE, Reason.STEP_DONE),
    (State.GATE, State.SHADOW, Reason.GATE_PASSED),
    (State.SHADOW, State.CANARY, Reason.SHADOW_PASSED),
    (State.CANARY, State.CANARY, Reason.CANARY_STEP),
    (State.CANARY, State.PROMOTING, Reason.VERDICT_PROMOTE),
    (State.PROMOTING, State.PROMOTED, Reason.DONE),
]


def test_every_state_has_a_row_and_terminals_have_no_exit():
    assert set(TRANSITIONS) == set(State)
    for s in State:
        assert s.is_terminal() == (s in TERMINAL)
        if s.is_terminal():
            assert TRANSITIONS[s] == {}
        else:
            assert TRANSITIONS[s], f"{s} is not terminal but has no exit"


def test_the_happy_path_is_legal_and_ends_terminal():
    state = State.WATCHING
    for frm, to, why in HAPPY_PATH:
        assert state is frm
        state = transition(state, to, why)
    assert state is State.PROMOTED and state.is_terminal()


def test_every_non_terminal_state_can_reach_a_terminal_one():
    reach = {s for s in TERMINAL}
    changed = True
    while changed:
        changed = False
        for s, moves in TRANSITIONS.items():
            if s not in reach and any(t in reach for t in moves):
                reach.add(s)
                changed = True
    assert reach == set(State)


@pytest.mark.parametrize("frm,to,why", [
    (State.WATCHING, State.CANARY, Reason.TRIGGER_MANUAL),  # skipping training and the gate
    (State.GATE, State.PROMOTING, Reason.GATE_PASSED),  # the gate alone never promotes
    (State.TRAINING, State.GATE, Reason.GATE_PASSED),  # right target, wrong reason kind
    (State.CANARY, State.CANCELLED, Reason.CANCEL),  # traffic must be unwound first
    (State.SHADOW, State.FAILED, Reason.INFRA_FAILURE),  # likewise
    (State.CANARY, State.PROMOTING, Reason.GUARDRAIL),
    (State.PROMOTED, State.ROLLING_BACK, Reason.HUMAN_ROLLBACK),  # terminal
    (State.REFUSED, State.TRAINING, Reason.RETRY),
])
def test_an_illegal_move_is_refused_naming_it_and_what_is_allowed(frm, to, why):
    with pytest.raises(IllegalTransition) as e:
        transition(frm, to, why)
    assert f"from {frm} to {to} for {why}" in e.value.problem
    assert f"allowed from {frm}:" in e.value.fix
    assert e.value.status_code == 409


def test_unknown_states_and_reasons_are_clear_errors():
    with pytest.raises(IllegalTransition, match="unknown generation state"):
        transition("WATCHING", "BAKING", "trigger_data")
    with pytest.raises(IllegalTransition, match="unknown transition reason 'because'"):
        transition("WATCHING", "TRIGGERED", "because")


def test_a_retry_stays_in_its_state_only_where_a_step_can_be_retried():
    assert transition(State.TRAINING, State.TRAINING, Reason.RETRY) is State.TRAINING
    with pytest.raises(IllegalTransition):
        transition(State.CANARY, State.CANARY, Reason.RETRY)  # a canary step is not a retry


@pytest.mark.parametrize("origin", sorted(PAUSABLE))
def test_resume_goes_back_to_where_it_paused_and_nowhere_else(origin):
    why = Reason.SRM if origin in IN_TRAFFIC else Reason.HOLD
    assert transition(origin, State.PAUSED, why) is State.PAUSED
    assert transition(State.PAUSED, origin, Reason.RESUME, paused_from=origin) is origin
    elsewhere = State.TRAINING if origin is not State.TRAINING else State.GATE
    with pytest.raises(IllegalTransition, match=f"cannot resume to {elsewhere}"):
        transition(State.PAUSED, elsewhere, Reason.RESUME, paused_from=origin)


def test_only_traffic_states_pause_on_missing_data_or_srm():
    for why in (Reason.NO_FEEDBACK, Reason.NO_TRAFFIC, Reason.SRM):
        assert transition(State.CANARY, State.PAUSED, why) is State.PAUSED
        with pytest.raises(IllegalTransition):
            transition(State.TRAINING, State.PAUSED, why)


def test_a_generation_paused_in_traffic_is_cancelled_through_rolling_back():
    with pytest.raises(IllegalTransition, match="ROLLING_BACK first"):
        transition(State.PAUSED, State.CANCELLED, Reason.CANCEL, paused_from=State.CANARY)
    assert transition(State.PAUSED, State.ROLLING_BACK, Reason.CANCEL, paused_from=State.CANARY) is State.ROLLING_BACK
    assert transition(State.ROLLING_BACK, State.CANCELLED, Reason.CANCEL) is State.CANCELLED
    # paused before any traffic: straight to CANCELLED, and nothing to roll back
    assert transition(State.PAUSED, State.CANCELLED, Reason.CANCEL, paused_from=State.TRAINING) is State.CANCELLED
    with pytest.raises(IllegalTransition, match="no traffic to roll back"):
        transition(State.PAUSED, State.ROLLING_BACK, Reason.HUMAN_ROLLBACK, paused_from=State.TRAINING)


def test_zero_feedback_can_pause_a_canary_but_is_no_reason_to_roll_back():
    assert Reason.NO_FEEDBACK not in TRANSITIONS[State.CANARY][State.ROLLING_BACK]
    assert Reason.NO_FEEDBACK in TRANSITIONS[State.CANARY][State.PAUSED]
