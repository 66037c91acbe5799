"""The runner's steps while the candidate takes traffic, and the two that end it.

The split is an experiment aliased by the served name itself (``canary_alias``): the Router
resolves an alias before a registry name, so requests for the bare name are split while it exists.

CANARY: every pass sets the split of the canary's experiment *absolutely* to the step in force
(champion 100 − p %, candidate p %; a repeat changes nothing), and at most every
``canary.look_every_s`` (else ``RunnerConfig.look_every_s``) builds a look from the raw tables (``looks.build_look``), decides on it
(``stats.decide``) and stores both (``repository.record_look``). The verdict moves the generation:
promote → PROMOTING; worse, a guardrail, or the deadline → ROLLING_BACK; SRM, no traffic, no
feedback → PAUSED (the last two resumed by the runner once data flows again); wait → the next
canary step once the step was held ``canary.min_hold_s`` with ``canary.min_rated_per_arm`` ratings
per arm in it. A look that cannot be built (the experiment
changed by hand, the tables unreadable) pauses the generation (``metric_errors``).

SHADOW: the judged pairs (``Actions.shadow_pairs``) through the sequential sign test; no verdict by
the stored ``deadline_at`` (``shadow.max_duration_s``) keeps the champion.
"""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import func, select

from studio.errors import StudioError
from studio.loops import repository as repo
from studio.loops.looks import build_look
from studio.loops.step import INFRA_ERRORS, Ctx, Step
from studio.loops.states import Reason, State
from studio.loops.stats import Action, decide, decide_shadow, step_done
from studio.store.loop_models import LoopLook


def canary_alias(ctx: Ctx) -> str:
    """The experiment that splits the served name during a canary is aliased by the served name
    itself: the Router resolves an experiment alias before a registry name, so clients asking for
    the bare name are split (sticky per ``user``) while it exists; ``name@N`` stays outside the
    split. Created when the canary starts, deleted when it ends."""
    return ctx.spec.served_name


def look_every_s(ctx: Ctx) -> float:
    """The loop's ``canary.look_every_s``, else the runner's ``look_every_s``."""
    return ctx.spec.canary.look_every_s or ctx.config.look_every_s


def split(ctx: Ctx, step: int) -> dict[str, float]:
    percent = ctx.spec.canary.steps[step]
    return {ctx.gen.champion: 100.0 - percent, ctx.gen.candidate: percent}


def _served(ctx: Ctx) -> bool:
    """Whether ``/v1/models`` answers to the candidate (its name, so ``name@N`` resolves, or itself)."""
    served = set(ctx.actions.models_available())
    name = ctx.gen.candidate.partition("@")[0]
    return ctx.gen.candidate in served or name in served


def enter_canary(ctx: Ctx, reason: Reason, detail: str) -> Step:
    """Into CANARY at step 0: the candidate's adapter must answer first, then the split is set and
    the move recorded in one transaction (the canary's window starts at this move)."""
    try:
        if not _served(ctx):
            return ctx.failed(f"{ctx.gen.candidate} is not on /v1/models yet")
    except (StudioError, *INFRA_ERRORS) as e:
        return ctx.failed(f"cannot check /v1/models: {e}")
    alias = canary_alias(ctx)
    ctx.actions.set_split(ctx.session, alias, split(ctx, 0))
    deadline = ctx.now + timedelta(seconds=ctx.spec.decision.deadline_s)
    return ctx.go(State.CANARY, reason, f"{detail}; canary at {ctx.spec.canary.steps[0]:g} % through {alias}",
                  canary_alias=alias, canary_step=0, deadline_at=deadline)


def canary(ctx: Ctx) -> Step:
    gen, spec, session = ctx.gen, ctx.spec, ctx.session
    changed = ctx.actions.set_split(session, gen.canary_alias, split(ctx, gen.canary_step))
    last = session.scalar(select(func.max(LoopLook.at)).where(LoopLook.generation_id == gen.id))
    every = look_every_s(ctx)
    if last is not None and (ctx.now - last).total_seconds() < every:
        return Step(False, "split set again" if changed else f"next look {every:g} s after {last.isoformat()}")
    try:
        look = build_look(session, gen, ctx.now)
    except (StudioError, *INFRA_ERRORS) as e:
        return ctx.go(State.PAUSED, Reason.METRIC_ERRORS, f"cannot look at the canary: {e}")
    verdict = decide(look, spec.decision)
    repo.record_look(session, gen.id, look, verdict, at=ctx.now)
    if verdict.action is Action.PROMOTE:
        return ctx.go(State.PROMOTING, Reason.VERDICT_PROMOTE, verdict.detail)
    if verdict.action is Action.ROLL_BACK:
        return ctx.go(State.ROLLING_BACK, verdict.reason, verdict.detail)
    if verdict.action is Action.KEEP_CHAMPION:
        return ctx.go(State.ROLLING_BACK, Reason.INCONCLUSIVE, verdict.detail)
    if verdict.action is Action.PAUSE:
        return ctx.go(State.PAUSED, verdict.reason, verdict.detail, deadline_at=gen.deadline_at)
    nxt = gen.canary_step + 1
    if nxt < len(spec.canary.steps) and step_done(look, spec.canary.min_hold_s, spec.canary.min_rated_per_arm):
        ctx.actions.set_split(session, gen.canary_alias, split(ctx, nxt))
        return ctx.go(State.CANARY, Reason.CANARY_STEP,
                      f"step {gen.canary_step} held {look.step_held_s:.0f} s with {look.step_rated_champion} / "
                      f"{look.step_rated_candidate} rated: on to {spec.canary.steps[nxt]:g} %",
                      deadline_at=gen.deadline_at)
    return Step(False, f"look at {look.at_s:.0f} s: {verdict.detail}")


# Pauses for missing data end by themselves once data flows again; the others wait for a person.
DATA_PAUSES = (Reason.NO_TRAFFIC.value, Reason.NO_FEEDBACK.value)


def paused(ctx: Ctx) -> Step:
    """A canary paused for no traffic or no feedback resumes when a look no longer says so (a look
    at most every ``look_every_s(ctx)``, not stored: the resumed canary's next look is); any other
    pause (a person's hold, SRM, metric errors) waits for ``studio loop resume``."""
    gen = ctx.gen
    last = repo.transitions(ctx.session, gen.id)[-1]
    if gen.paused_from != State.CANARY.value or last.reason not in DATA_PAUSES or ctx.loop.status != "active":
        return Step(False, f"PAUSED ({last.reason}): held until a person resumes it")
    since = (ctx.now - last.at).total_seconds()
    if since < look_every_s(ctx):
        return Step(False, f"PAUSED ({last.reason}) {since:.0f} s ago")
    try:
        verdict = decide(build_look(ctx.session, gen, ctx.now), ctx.spec.decision)
    except (StudioError, *INFRA_ERRORS) as e:
        return Step(False, f"PAUSED ({last.reason}); cannot look: {e}")
    if verdict.action is Action.PAUSE and verdict.reason is not None and verdict.reason.value in DATA_PAUSES:
        return Step(False, f"PAUSED ({last.reason}): {verdict.detail}")
    return ctx.go(State.CANARY, Reason.RESUME, f"data flows again after the {last.reason} pause",
                  deadline_at=gen.deadline_at)


def shadow(ctx: Ctx) -> Step:
    pairs = ctx.actions.shadow_pairs(ctx.session, ctx.gen)
    if pairs is not None:
        v = decide_shadow(*pairs, ctx.spec.shadow.test)
        if v.action is Action.ROLL_BACK:
            return ctx.go(State.ROLLING_BACK, Reason.SHADOW_HARM, v.detail)
        if v.action is Action.PROMOTE:
            return enter_canary(ctx, Reason.SHADOW_PASSED, v.detail)
    deadline = ctx.gen.deadline_at
    if deadline is not None and ctx.now >= deadline:
        got = "no judged pairs" if pairs is None else f"{pairs[0]} wins, {pairs[1]} losses"
        return ctx.go(State.ROLLING_BACK, Reason.INCONCLUSIVE,
                      f"no shadow verdict in {ctx.spec.shadow.max_duration_s:g} s ({got}): the champion stays")
    return Step(False, "shadow: waiting for judged pairs" if pairs is None else f"shadow: {v.detail}")


def promoting(ctx: Ctx) -> Step:
    gen, by = ctx.gen, f"loop:{ctx.loop.name}"
    if (wait := ctx.backing_off()) is not None:
        return Step(False, wait)
    try:
        ctx.actions.promote(ctx.session, gen.candidate, by=by,
                            reason=f"loop {ctx.label}: {_last_detail(ctx)}")
        if gen.canary_alias:
            ctx.actions.end_split(ctx.session, gen.canary_alias)
    except (StudioError, *INFRA_ERRORS) as e:
        return _undo(ctx, f"promoting {gen.candidate} failed: {e}")
    return ctx.go(State.PROMOTED, Reason.DONE, f"{gen.candidate} is the champion of {ctx.spec.served_name}")


def rolling_back(ctx: Ctx) -> Step:
    gen, by = ctx.gen, f"loop:{ctx.loop.name}"
    if (wait := ctx.backing_off()) is not None:
        return Step(False, wait)
    try:
        if gen.canary_alias:
            ctx.actions.end_split(ctx.session, gen.canary_alias)
        if gen.candidate:
            ctx.actions.archive(ctx.session, gen.candidate, by=by,
                                reason=f"loop {ctx.label} rolled back ({gen.rollback_reason}): {_last_detail(ctx)}")
    except (StudioError, *INFRA_ERRORS) as e:
        return _undo(ctx, f"rolling back {gen.candidate} failed: {e}")
    served = f"{ctx.spec.served_name}'s champion {gen.champion} serves alone"
    if gen.rollback_reason == Reason.CANCEL.value:
        return ctx.go(State.CANCELLED, Reason.CANCEL, f"cancelled; {served}")
    return ctx.go(State.ROLLED_BACK, Reason.DONE, f"{served} ({gen.rollback_reason})")


def _last_detail(ctx: Ctx) -> str:
    rows = repo.transitions(ctx.session, ctx.gen.id)
    entry = next((t for t in reversed(rows) if t.to_state == ctx.gen.state and t.from_state != t.to_state), None)
    return entry.detail if entry is not None else ""


def _undo(ctx: Ctx, why: str) -> Step:
    ctx.undo()
    return ctx.failed(why)
