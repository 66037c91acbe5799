"""A loop generation's states, the one transition table, and the pure function that checks a move.

```
WATCHING ─trigger─► TRIGGERED ─► SNAPSHOT ─► TRAINING ─► GATE ─► SHADOW ─► CANARY(k) ─► PROMOTING ─► PROMOTED
                                                           │        │        │ ▲ step k+1    │
                                                  refused  ▼        │ harm   │ └──┘           │
                                                       REFUSED      ▼        ▼                │
                                                              ROLLING_BACK ─► ROLLED_BACK      │
any active state ─ no traffic/feedback, SRM, metric errors, hold ─► PAUSED ─ resume ─► where it paused
pre-traffic state ─ infrastructure failure, retries spent ─► FAILED;  cancel ─► CANCELLED
(SHADOW, CANARY and PAUSED-in-traffic cancel through ROLLING_BACK, so the split is unwound first)
```

A retry (infrastructure failure with attempts left) is a move from a state to itself with reason
``retry``: the generation's ``attempt`` grows, the state does not change. Everything here is pure:
the store's compare-and-set (``studio.loops.repository``) calls ``transition`` before it writes.
"""

from __future__ import annotations

from enum import StrEnum

from studio.errors import Conflict


class State(StrEnum):
    WATCHING = "WATCHING"  # waiting for a trigger (new feedback, schedule, drift, by hand)
    TRIGGERED = "TRIGGERED"  # a trigger fired; the data check passed
    SNAPSHOT = "SNAPSHOT"  # freezing the feedback up to a cutoff into an immutable snapshot
    TRAINING = "TRAINING"  # the training job (keyed by generation and attempt) runs from the champion
    GATE = "GATE"  # the promotion gate scores candidate vs champion on the same items
    SHADOW = "SHADOW"  # a share of live prompts mirrored to the candidate, judged pairwise
    CANARY = "CANARY"  # the served name split champion/candidate at canary step k
    PROMOTING = "PROMOTING"  # the candidate becomes champion; the split is removed
    PROMOTED = "PROMOTED"  # terminal: the candidate is the champion
    REFUSED = "REFUSED"  # terminal: the gate refused the candidate (it never took traffic)
    ROLLING_BACK = "ROLLING_BACK"  # the split is set back to the champion alone
    ROLLED_BACK = "ROLLED_BACK"  # terminal: the champion serves alone again; the candidate is archived
    PAUSED = "PAUSED"  # held: no traffic/feedback, sample-ratio mismatch, metric errors, or a person
    FAILED = "FAILED"  # terminal: an infrastructure failure outlived its retries
    CANCELLED = "CANCELLED"  # terminal: stopped on request

    def is_terminal(self) -> bool:
        return self in TERMINAL


TERMINAL = frozenset({State.PROMOTED, State.REFUSED, State.ROLLED_BACK, State.FAILED, State.CANCELLED})
# States in which the candidate sees live prompts: leaving them must unwind the traffic first.
IN_TRAFFIC = frozenset({State.SHADOW, State.CANARY})
# States a generation may pause in and resume to.
PAUSABLE = frozenset({State.WATCHING, State.TRIGGERED, State.SNAPSHOT, State.TRAINING, State.GATE,
                      State.SHADOW, State.CANARY})
# States where a retry (same state, attempt + 1) is meaningful: each has an idempotent step.
RETRYABLE = frozenset({State.TRIGGERED, State.SNAPSHOT, State.TRAINING, State.GATE, State.SHADOW,
                       State.PROMOTING, State.ROLLING_BACK})


class Reason(StrEnum):
    """Why a generation moved: the kind is checked against the table; the words are free text."""

    TRIGGER_DATA = "trigger_data"  # N new rated completions / preference pairs
    TRIGGER_SCHEDULE = "trigger_schedule"  # the schedule fired (and the minimum-data check passed)
    TRIGGER_DRIFT = "trigger_drift"  # the champion's thumbs-up rate fell the set margin
    TRIGGER_MANUAL = "trigger_manual"  # `studio loop run`
    STEP_DONE = "step_done"  # the state's work finished (snapshot taken, training registered)
    GATE_PASSED = "gate_passed"
    GATE_REFUSED = "gate_refused"
    SHADOW_SKIPPED = "shadow_skipped"  # the recipe's shadow share is 0
    SHADOW_PASSED = "shadow_passed"
    SHADOW_HARM = "shadow_harm"  # the sequential sign test found the candidate worse
    CANARY_STEP = "canary_step"  # on to the next canary step
    VERDICT_PROMOTE = "verdict_promote"  # the confidence sequence cleared the margin, guardrails clear
    VERDICT_ROLLBACK = "verdict_rollback"  # the confidence sequence lies below zero
    GUARDRAIL = "guardrail"  # error rate, latency or tokens per answer breached
    INCONCLUSIVE = "inconclusive"  # the deadline passed with no verdict: the champion stays
    NO_TRAFFIC = "no_traffic"
    NO_FEEDBACK = "no_feedback"
    SRM = "srm"  # sample-ratio mismatch: the split is not the weights in force
    METRIC_ERRORS = "metric_errors"  # the looks failed repeatedly
    HOLD = "hold"  # a person paused it
    RESUME = "resume"
    HUMAN_PROMOTE = "human_promote"  # an admin promoted, with a reason
    HUMAN_ROLLBACK = "human_rollback"  # an admin rolled back, with a reason
    CANCEL = "cancel"  # cancel / abort
    INFRA_FAILURE = "infra_failure"  # retries spent (or, in traffic, unwound through ROLLING_BACK)
    RETRY = "retry"
    DONE = "done"  # promotion or rollback finished


R = Reason
_PAUSE = frozenset({R.NO_TRAFFIC, R.NO_FEEDBACK, R.SRM, R.METRIC_ERRORS, R.HOLD})
_HOLD = frozenset({R.HOLD})
_FAIL = frozenset({R.INFRA_FAILURE})
_CANCEL = frozenset({R.CANCEL})
_RETRY = frozenset({R.RETRY})
# Out of traffic states: harm, a person, a cancel, an infrastructure failure, or the deadline.
_UNWIND_CANARY = frozenset({R.VERDICT_ROLLBACK, R.GUARDRAIL, R.INCONCLUSIVE, R.HUMAN_ROLLBACK, R.CANCEL,
                            R.INFRA_FAILURE})

TRANSITIONS: dict[State, dict[State, frozenset[Reason]]] = {
    State.WATCHING: {
        State.TRIGGERED: frozenset({R.TRIGGER_DATA, R.TRIGGER_SCHEDULE, R.TRIGGER_DRIFT, R.TRIGGER_MANUAL}),
        State.PAUSED: _HOLD, State.CANCELLED: _CANCEL,
    },
    State.TRIGGERED: {State.SNAPSHOT: frozenset({R.STEP_DONE}), State.TRIGGERED: _RETRY,
                      State.PAUSED: _HOLD, State.FAILED: _FAIL, State.CANCELLED: _CANCEL},
    State.SNAPSHOT: {State.TRAINING: frozenset({R.STEP_DONE}), State.SNAPSHOT: _RETRY,
                     State.PAUSED: _HOLD, State.FAILED: _FAIL, State.CANCELLED: _CANCEL},
    State.TRAINING: {State.GATE: frozenset({R.STEP_DONE}), State.TRAINING: _RETRY,
                     State.PAUSED: _HOLD, State.FAILED: _FAIL, State.CANCELLED: _CANCEL},
    State.GATE: {
        State.SHADOW: frozenset({R.GATE_PASSED}),
        State.CANARY: frozenset({R.SHADOW_SKIPPED}),
        State.REFUSED: frozenset({R.GATE_REFUSED}),
        State.GATE: _RETRY, State.PAUSED: _HOLD, State.FAILED: _FAIL, State.CANCELLED: _CANCEL,
    },
    State.SHADOW: {
        State.CANARY: frozenset({R.SHADOW_PASSED}),
        State.PROMOTING: frozenset({R.HUMAN_PROMOTE}),
        State.ROLLING_BACK: frozenset({R.SHADOW_HARM, R.HUMAN_ROLLBACK, R.CANCEL, R.INFRA_FAILURE,
                                       R.INCONCLUSIVE}),
        State.SHADOW: _RETRY, State.PAUSED: _PAUSE,
    },
    State.CANARY: {
        State.CANARY: frozenset({R.CANARY_STEP}),
        State.PROMOTING: frozenset({R.VERDICT_PROMOTE, R.HUMAN_PROMOTE}),
        State.ROLLING_BACK: _UNWIND_CANARY,
        State.PAUSED: _PAUSE,
    },
    State.PROMOTING: {State.PROMOTED: frozenset({R.DONE}), State.PROMOTING: _RETRY, State.FAILED: _FAIL},
    State.ROLLING_BACK: {
        State.ROLLED_BACK: frozenset({R.DONE}),
        State.CANCELLED: _CANCEL,  # a cancel from traffic ends here once the split is unwound
        State.ROLLING_BACK: _RETRY, State.FAILED: _FAIL,
    },
    State.PAUSED: {
        # Resume goes back to where it paused (checked against paused_from in `transition`).
        **{s: frozenset({R.RESUME}) for s in PAUSABLE},
        State.ROLLING_BACK: frozenset({R.HUMAN_ROLLBACK, R.CANCEL}),
        State.CANCELLED: _CANCEL,
    },
    **{s: {} for s in TERMINAL},
}


class IllegalTransition(Conflict):
    """A move the table does not allow (409 at the API)."""


def allowed(current: State | str) -> dict[State, frozenset[Reason]]:
    return TRANSITIONS[State(current)]


def _describe(moves: dict[State, frozenset[Reason]]) -> str:
    if not moves:
        return "nothing (terminal)"
    return "; ".join(f"{to} ({', '.join(sorted(reasons))})" for to, reasons in moves.items())


def transition(current: State | str, target: State | str, reason: Reason | str, *,
               paused_from: State | str | None = None) -> State:
    """The state after moving ``current`` → ``target`` for ``reason``, or ``IllegalTransition``
    naming the move and what is allowed from ``current``.

    ``paused_from`` is the state a PAUSED generation paused in: resume must go back there, and a
    cancel of a generation paused in traffic goes through ROLLING_BACK (the split is unwound)."""
    try:
        current, target = State(current), State(target)
    except ValueError as e:
        raise IllegalTransition(f"unknown generation state: {e}", f"use one of {', '.join(State)}") from e
    try:
        reason = Reason(reason)
    except ValueError as e:
        raise IllegalTransition(f"unknown transition reason {reason!r}",
                                f"use one of {', '.join(Reason)}") from e
    moves = TRANSITIONS[current]
    if target not in moves or reason not in moves[target]:
        raise IllegalTransition(
            f"a generation cannot go from {current} to {target} for {reason}",
            f"allowed from {current}: {_describe(moves)}")
    if current is State.PAUSED:
        origin = State(paused_from) if paused_from is not None else None
        if reason is R.RESUME and target is not origin:
            raise IllegalTransition(
                f"a generation paused in {origin or 'an unknown state'} cannot resume to {target}",
                f"resume it to {origin}" if origin else "pass paused_from, the state it paused in")
        if target is State.CANCELLED and (origin is None or origin in IN_TRAFFIC):
            raise IllegalTransition(
                f"a generation paused in {origin or 'an unknown state'} cannot be cancelled directly",
                "cancel it to ROLLING_BACK first: the candidate may still hold a share of the traffic")
        if target is State.ROLLING_BACK and origin not in IN_TRAFFIC:
            raise IllegalTransition(
                f"a generation paused in {origin or 'an unknown state'} has no traffic to roll back",
                "cancel it to CANCELLED instead" if origin else "pass paused_from, the state it paused in")
    return target
