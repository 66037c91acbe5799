"""Loops and generations in the database: create, read, and move a generation by compare-and-set.

``move`` checks the move against the transition table (``studio.loops.states.transition``) and then
writes it with ``UPDATE … WHERE id = :id AND state = :expected``: of two processes that both saw
the same state (a scheduler restarted beside the old one, an admin's rollback beside a verdict), one
wins and the other gets a ``Conflict`` naming the state it lost to. Every move is a
``loop_transitions`` row in the same transaction. Looks are stored with their verdict, and
``explain`` recomputes each verdict from the stored counts and the generation's frozen rule.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from studio.errors import Conflict, NotFound
from studio.loops.spec import LoopSpec
from studio.loops.states import TERMINAL, Reason, State, transition
from studio.loops.stats import DecisionRule, Look, Verdict, decide
from studio.store.loop_models import Loop, LoopGeneration, LoopLook, LoopTransition
from studio.store.models import utcnow

# Rollbacks that count as harm: two in a row pause the loop. A rollback for an inconclusive canary
# or a cancel is not the candidate's fault and does not count.
HARM = frozenset({Reason.VERDICT_ROLLBACK, Reason.GUARDRAIL, Reason.SHADOW_HARM, Reason.HUMAN_ROLLBACK})


def create_loop(session: Session, spec: LoopSpec, *, train: dict[str, Any] | None = None,
                created_by: str | None = None, owner_key_id: int | None = None) -> Loop:
    """A new loop row, or 409 if the name is taken or the served name already has a loop."""
    for column, value, what in ((Loop.name, spec.name, "a loop named"), (Loop.served_name, spec.served_name,
                                                                           "a loop on the served name")):
        other = session.scalars(select(Loop).where(column == value)).first()
        if other is not None:
            raise Conflict(f"there is already {what} {value!r} (loop {other.name})",
                           "pick another name, or change the existing loop" if column is Loop.name else
                           f"one loop per served name: change loop {other.name}, or delete it first "
                           f"(`studio loop delete {other.name}`)")
    loop = Loop(name=spec.name, served_name=spec.served_name, spec=spec.model_dump(mode="json"), train=train,
                status="active",
                rollbacks_in_a_row=0, created_by=created_by, owner_key_id=owner_key_id)
    session.add(loop)
    session.flush()
    return loop


def get_loop(session: Session, name: str) -> Loop:
    loop = session.scalars(select(Loop).where(Loop.name == name)).first()
    if loop is None:
        raise NotFound(f"loop {name!r} does not exist", "see `studio loop ls`")
    return loop


def list_loops(session: Session) -> list[Loop]:
    return list(session.scalars(select(Loop).order_by(Loop.name)))


def get_generation(session: Session, generation_id: int) -> LoopGeneration:
    gen = session.get(LoopGeneration, generation_id)
    if gen is None:
        raise NotFound(f"loop generation {generation_id} does not exist", "see `studio loop show LOOP`")
    return gen


def active_generation(session: Session, loop: Loop) -> LoopGeneration | None:
    return session.scalars(select(LoopGeneration).where(LoopGeneration.active_loop_id == loop.id)).first()


def start_generation(session: Session, loop: Loop, config: dict[str, Any], *, actor: str,
                     champion: str | None = None, at: datetime | None = None) -> LoopGeneration:
    """The loop's next generation, WATCHING, with its frozen ``config``; 409 while one is active
    (the database's unique ``active_loop_id`` holds this even against a concurrent start).
    ``at``: when (the runner's clock; now by default)."""
    at = at or utcnow()
    current = active_generation(session, loop)
    if current is not None:
        raise Conflict(f"loop {loop.name} already has an active generation ({current.number}, {current.state})",
                       "wait for it to end, or cancel it")
    number = (session.scalar(select(func.max(LoopGeneration.number)).where(LoopGeneration.loop_id == loop.id))
              or 0) + 1
    gen = LoopGeneration(loop_id=loop.id, number=number, active_loop_id=loop.id, state=State.WATCHING.value,
                         attempt=1, canary_step=0, config=config, champion=champion, created_at=at,
                         updated_at=at)
    try:
        with session.begin_nested():
            session.add(gen)
            session.flush()
    except IntegrityError as e:
        raise Conflict(f"loop {loop.name} already has an active generation (started concurrently)",
                       "wait for it to end, or cancel it") from e
    session.add(LoopTransition(generation_id=gen.id, from_state=None, to_state=State.WATCHING.value,
                               reason=Reason.STEP_DONE.value, detail="generation started", actor=actor, attempt=1,
                               at=at))
    session.flush()
    return gen


def move(session: Session, generation_id: int, expected: State | str, target: State | str, reason: Reason | str,
         *, actor: str, detail: str = "", values: dict[str, Any] | None = None,
         at: datetime | None = None) -> LoopGeneration:
    """Move a generation from ``expected`` to ``target`` (compare-and-set) and record why, at ``at``
    (the runner's clock; now by default: the canary's window is read from these times).

    ``values`` sets other columns in the same UPDATE (a candidate ref, a deadline). The bookkeeping
    the table implies is done here: a retry counts an attempt, a canary step advances the step, a
    pause remembers where it paused, a terminal state frees the loop for its next generation."""
    expected, target, reason = State(expected), State(target), Reason(reason)
    at = at or utcnow()
    gen = get_generation(session, generation_id)
    transition(expected, target, reason, paused_from=gen.paused_from)
    sets: dict[str, Any] = {"state": target.value, "updated_at": at, **(values or {})}
    attempt = gen.attempt
    if reason is Reason.RETRY:
        attempt = gen.attempt + 1
    elif target is not expected:
        attempt = 1
    sets["attempt"] = attempt
    if reason is Reason.CANARY_STEP:
        sets["canary_step"] = LoopGeneration.canary_step + 1
    if target is State.PAUSED:
        sets["paused_from"] = expected.value
    elif expected is State.PAUSED:
        sets["paused_from"] = None
    if target is State.ROLLING_BACK and expected is not State.ROLLING_BACK:
        sets["rollback_reason"] = reason.value
    if target in TERMINAL:
        sets["active_loop_id"] = None
        sets["ended_at"] = at
    result = session.execute(
        update(LoopGeneration)
        .where(LoopGeneration.id == generation_id, LoopGeneration.state == expected.value)
        .values(**sets)
        .execution_options(synchronize_session=False))
    if result.rowcount != 1:
        session.expire(gen)
        raise Conflict(f"generation {generation_id} is no longer {expected} (it is {gen.state}): "
                       f"the move to {target} lost to another", "read the generation again and decide anew")
    session.add(LoopTransition(generation_id=generation_id, from_state=expected.value, to_state=target.value,
                               reason=reason.value, detail=detail[:10_000], actor=actor, attempt=attempt,
                               at=at))
    session.flush()
    session.refresh(gen)
    if target in (State.PROMOTED, State.ROLLED_BACK):
        _count_rollbacks(session, gen, target)
    return gen


def _count_rollbacks(session: Session, gen: LoopGeneration, target: State) -> None:
    loop = session.get(Loop, gen.loop_id)
    if target is State.PROMOTED:
        loop.rollbacks_in_a_row = 0
    elif gen.rollback_reason in HARM:
        loop.rollbacks_in_a_row += 1
        limit = LoopSpec.model_validate(loop.spec).max_rollbacks_in_a_row
        if loop.rollbacks_in_a_row >= limit and loop.status == "active":
            loop.status = "paused"
            loop.status_reason = (f"{loop.rollbacks_in_a_row} rollbacks in a row (the last: generation "
                                  f"{gen.number}, {gen.rollback_reason}): look at the candidates, then resume")
    session.flush()


def transitions(session: Session, generation_id: int) -> list[LoopTransition]:
    return list(session.scalars(select(LoopTransition).where(LoopTransition.generation_id == generation_id)
                                .order_by(LoopTransition.id)))


def record_look(session: Session, generation_id: int, look: Look, verdict: Verdict,
                at: datetime | None = None) -> LoopLook:
    row = LoopLook(generation_id=generation_id, at=at or utcnow(), step=look.step, weight=look.weight,
                   look=look.model_dump(mode="json"), action=verdict.action.value, estimate=verdict.estimate,
                   lower=verdict.lower, upper=verdict.upper, verdict=verdict.model_dump(mode="json"))
    session.add(row)
    session.flush()
    return row


@dataclass
class Explained:
    """One stored look, the verdict stored with it, and the verdict recomputed from its counts."""

    look_id: int
    look: Look
    stored: Verdict
    recomputed: Verdict

    @property
    def agrees(self) -> bool:
        return (self.stored.action, self.stored.reason) == (self.recomputed.action, self.recomputed.reason)


def explain(session: Session, generation_id: int) -> list[Explained]:
    """Every look of a generation with its verdict recomputed by ``decide`` under the generation's
    frozen decision rule: what ``studio loop explain`` shows."""
    gen = get_generation(session, generation_id)
    rule = DecisionRule.model_validate(gen.config["loop"]["decision"])
    rows = session.scalars(select(LoopLook).where(LoopLook.generation_id == generation_id).order_by(LoopLook.id))
    out = []
    for row in rows:
        look = Look.model_validate(row.look)
        out.append(Explained(look_id=row.id, look=look, stored=Verdict.model_validate(row.verdict),
                             recomputed=decide(look, rule)))
    return out


def frozen_config(spec: LoopSpec, train: dict[str, Any] | None = None) -> dict[str, Any]:
    """What a generation freezes at its start: the loop recipe and the validated training recipe."""
    return {"loop": spec.model_dump(mode="json"), "train": train}
