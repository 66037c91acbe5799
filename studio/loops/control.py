"""What a person does to a loop, shared by ``/api/loops`` and ``studio loop``: create it (checked
against the registry), replace its recipe, pause, resume, cancel, and find a generation.

Who may: the API checks roles and owners before calling these (docs/security.md); the CLI works on
the database as the operator, like the other command groups.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from studio.errors import Conflict, NotFound, StudioError
from studio.loops.repository import active_generation, create_loop, frozen_config, get_loop, move, start_generation
from studio.loops.spec import TRAIN_METHODS, LoopSpec, check_base_model
from studio.loops.states import IN_TRAFFIC, Reason, State
from studio.loops.triggers import Fired, manual_trigger
from studio.store.loop_models import Loop, LoopGeneration
from studio.store.models import ModelVersion, utcnow

# Where a person's pause may hold a generation (PROMOTING and ROLLING_BACK finish first).
_HOLDABLE = (State.WATCHING, State.TRIGGERED, State.SNAPSHOT, State.TRAINING, State.GATE, State.SHADOW, State.CANARY)


def champion_of(session: Session, name: str) -> ModelVersion:
    mv = session.scalars(select(ModelVersion).where(ModelVersion.name == name, ModelVersion.stage == "champion")).first()
    if mv is None:
        raise Conflict(f"registry name {name!r} has no champion, so there is nothing to improve from",
                       f"promote a version first (`studio models promote {name}@N`), then create the loop")
    return mv


def check_loop(session: Session, spec: LoopSpec, train: Any) -> dict[str, Any]:
    """The registry's view of a new recipe: the served name has a champion and the training
    recipe (a ``TrainSpec``) is for its base model and learns from feedback. The stored train spec."""
    champion = champion_of(session, spec.served_name)
    if train.method not in TRAIN_METHODS:
        raise StudioError(f"loop {spec.name}: its training recipe trains with {train.method}",
                          f"a loop learns from feedback: use a recipe with method {' or '.join(TRAIN_METHODS)}")
    check_base_model(spec, train.base_model, champion.base_model)
    return train.model_dump(mode="json")


def create_checked(session: Session, spec: LoopSpec, train: Any, *, created_by: str | None,
                   owner_key_id: int | None) -> Loop:
    return create_loop(session, spec, train=check_loop(session, spec, train), created_by=created_by,
                       owner_key_id=owner_key_id)


def replace_spec(session: Session, name: str, spec: LoopSpec, train: Any) -> Loop:
    """A new recipe for an existing loop; generations already started keep the one they froze."""
    loop = get_loop(session, name)
    if spec.name != loop.name or spec.served_name != loop.served_name:
        raise StudioError(f"loop {name}: the new recipe is for loop {spec.name!r} on {spec.served_name!r}",
                          f"keep name: {loop.name} and served_name: {loop.served_name} (create another loop "
                          "for another name)")
    loop.train = check_loop(session, spec, train)
    loop.spec = spec.model_dump(mode="json")
    loop.updated_at = utcnow()
    session.flush()
    return loop


def generation_by_number(session: Session, loop: Loop, number: int) -> LoopGeneration:
    gen = session.scalars(select(LoopGeneration).where(LoopGeneration.loop_id == loop.id,
                                                       LoopGeneration.number == number)).first()
    if gen is None:
        raise NotFound(f"loop {loop.name} has no generation {number}", f"see `studio loop show {loop.name}`")
    return gen


def pause_loop(session: Session, name: str, *, actor: str, reason: str = "") -> Loop:
    """No new generation starts; the active one is held where it is (PAUSED, reason hold)."""
    loop = get_loop(session, name)
    if loop.status == "cancelled":
        raise Conflict(f"loop {name} is cancelled", f"resume it first (`studio loop resume {name}`)")
    loop.status, loop.status_reason = "paused", f"paused by {actor}" + (f": {reason}" if reason else "")
    gen = active_generation(session, loop)
    if gen is not None and State(gen.state) in _HOLDABLE:
        move(session, gen.id, gen.state, State.PAUSED, Reason.HOLD, actor=actor, detail=reason or "paused by hand")
    session.flush()
    return loop


def resume_loop(session: Session, name: str, *, actor: str, reason: str = "") -> Loop:
    """Triggers may fire again (the rollback count starts over: a person has looked), and a paused
    generation goes back to where it paused."""
    loop = get_loop(session, name)
    loop.status, loop.status_reason, loop.rollbacks_in_a_row = "active", None, 0
    gen = active_generation(session, loop)
    if gen is not None and gen.state == State.PAUSED.value:
        move(session, gen.id, State.PAUSED, gen.paused_from, Reason.RESUME, actor=actor,
             detail=reason or "resumed by hand")
    session.flush()
    return loop


def cancel_loop(session: Session, name: str, *, actor: str, reason: str = "") -> Loop:
    """No new generation starts; the active one is cancelled (``abort_generation``). A generation
    already PROMOTING or ROLLING_BACK finishes. ``resume`` makes the loop active again."""
    loop = get_loop(session, name)
    loop.status, loop.status_reason = "cancelled", f"cancelled by {actor}" + (f": {reason}" if reason else "")
    gen = active_generation(session, loop)
    if gen is not None and State(gen.state) not in (State.PROMOTING, State.ROLLING_BACK):
        abort_generation(session, gen, actor=actor, reason=reason or "cancelled by hand")
    session.flush()
    return loop


def _in_traffic(gen: LoopGeneration) -> bool:
    state = State(gen.state)
    return state in IN_TRAFFIC or (state is State.PAUSED and gen.paused_from is not None
                                   and State(gen.paused_from) in IN_TRAFFIC)


def abort_generation(session: Session, gen: LoopGeneration, *, actor: str, reason: str) -> LoopGeneration:
    """Cancel one generation: through ROLLING_BACK when the candidate holds traffic (the runner
    unwinds the split, then ends it CANCELLED), else CANCELLED at once; 409 from other states.
    Its training or gate job still running is cancelled too."""
    target = State.ROLLING_BACK if _in_traffic(gen) else State.CANCELLED
    gen = move(session, gen.id, gen.state, target, Reason.CANCEL, actor=actor, detail=reason)
    cancel_jobs(session, gen, by=actor)
    return gen


def job_key_prefix(loop: Loop, number: int) -> str:
    """The start of the ``submitted_by`` of generation ``number``'s jobs (the runner adds
    ``train:aK`` / ``gate:aK``): ``loop:NAME:gN:``, after ``cli:`` for a loop the operator created
    from the CLI (no owner key), so its jobs spend as the CLI's jobs do (``submitter_key``: the
    oldest admin key) rather than on no key; ``loop#ID`` for a name too long for the column."""
    name = loop.name if len(loop.name) <= 90 else f"#{loop.id}"
    return ("cli:" if loop.owner_key_id is None else "") + f"loop:{name}:g{number}:"


def cancel_jobs(session: Session, gen: LoopGeneration, *, by: str) -> list[int]:
    """Cancel the generation's training and gate jobs still on their way (the runner keys them
    ``loop:NAME:gN:…``): a cancelled generation trains and evaluates nothing more."""
    from studio.jobs.queue import request_cancel
    from studio.jobs.status import is_active, will_retry
    from studio.store.models import Job

    prefix = job_key_prefix(session.get(Loop, gen.loop_id), gen.number)
    jobs = session.scalars(select(Job).where(Job.submitted_by.startswith(prefix, autoescape=True))).all()
    out = []
    for job in jobs:
        if not job.cancel_requested and (is_active(job.status) or (job.status == "FAILED" and will_retry(job))):
            request_cancel(session, job.id, by)
            out.append(job.id)
    return out


def promote_generation(session: Session, gen: LoopGeneration, *, actor: str, reason: str) -> LoopGeneration:
    """An admin's promotion of a candidate in shadow or canary, whatever the statistics say."""
    return move(session, gen.id, gen.state, State.PROMOTING, Reason.HUMAN_PROMOTE, actor=actor, detail=reason)


def rollback_generation(session: Session, gen: LoopGeneration, *, actor: str, reason: str) -> LoopGeneration:
    """An admin's rollback of a candidate in shadow or canary (or paused there); counts as harm."""
    return move(session, gen.id, gen.state, State.ROLLING_BACK, Reason.HUMAN_ROLLBACK, actor=actor, detail=reason)


def start_triggered(session: Session, loop: Loop, fired: Fired, now: datetime, *, actor: str) -> LoopGeneration:
    """A new generation of ``loop`` moved straight to TRIGGERED by ``fired``, with the recipe frozen
    and the champion it trains from recorded (409 when the name has none, or one is active)."""
    champion = champion_of(session, loop.served_name)
    spec = LoopSpec.model_validate(loop.spec)
    gen = start_generation(session, loop, frozen_config(spec, loop.train), actor=actor,
                           champion=f"{champion.name}@{champion.version}", at=now)
    return move(session, gen.id, State.WATCHING, State.TRIGGERED, fired.kind, actor=actor, detail=fired.reason, at=now)


def run_loop(session: Session, name: str, *, actor: str, reason: str = "", now: datetime | None = None
             ) -> LoopGeneration:
    """Start a generation by hand (``studio loop run``, ``POST /api/loops/{name}/trigger``): it is
    TRIGGERED now and the runner moves it on from there. 409 while the loop is paused or cancelled,
    does not run by hand (``trigger.manual: false``), or has an active generation."""
    loop = get_loop(session, name)
    if loop.status != "active":
        raise Conflict(f"loop {name} is {loop.status}" + (f" ({loop.status_reason})" if loop.status_reason else ""),
                       f"resume it first (`studio loop resume {name}`)")
    fired = manual_trigger(LoopSpec.model_validate(loop.spec), actor)
    if not fired.fired:
        raise Conflict(f"loop {name}: {fired.reason}", "set trigger.manual: true in its recipe, or wait for its "
                       "other triggers")
    if reason:
        fired = Fired(fired.kind, True, f"{fired.reason}: {reason}")
    return start_triggered(session, loop, fired, now or utcnow(), actor=actor)
