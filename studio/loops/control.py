"""What a person does to a loop, shared by ``/api/loops`` and ``studio loop``: create it (checked
against the registry), replace its recipe, pause, resume, cancel, delete, and find a generation.

Who may: the API checks roles and owners before calling these (docs/security.md); the CLI works on
the database as the operator, like the other command groups.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from studio.errors import Conflict, NotFound, StudioError
from studio.loops.repository import active_generation, create_loop, frozen_config, get_loop, move, start_generation
from studio.loops.spec import TRAIN_METHODS, LoopSpec, check_base_model, check_guard_scorers
from studio.loops.states import IN_TRAFFIC, Reason, State
from studio.loops.triggers import Fired, manual_trigger
from studio.loops.views import LoopDeleted
from studio.store.log_models import ShadowPair
from studio.store.loop_models import Loop, LoopGeneration, LoopLook, LoopTransition
from studio.store.models import Experiment, ModelVersion, utcnow

log = logging.getLogger(__name__)

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
    check_gate(session, spec)
    return train.model_dump(mode="json")


def check_gate(session: Session, spec: LoopSpec) -> None:
    """The gate's own checks against the studio: the must-pass dataset exists, and the guards can
    be scored beside the gate's scorer (the loop's, else the served name's gate) in one eval."""
    from studio.data.snapshots import resolve_snapshot
    from studio.evals.gate import effective_gate

    gate = spec.gate
    if gate.must_pass is not None:
        try:
            resolve_snapshot(session, gate.must_pass.dataset)
        except NotFound as e:
            raise StudioError(f"loop {spec.name}: gate.must_pass.dataset {gate.must_pass.dataset!r} does not "
                              f"exist ({e.problem})", "ingest the must-pass items first (`studio data ingest FILE "
                              "--name NAME`) or name an existing dataset (`studio data ls`)") from None
    cfg = effective_gate(session, spec.served_name, {"dataset": gate.dataset, "scorer": gate.scorer,
                                                     "margin": gate.margin, "limit": gate.limit})
    if cfg is None:
        return  # no gate at all: the runner refuses the candidate, saying how to set one
    clash = check_guard_scorers(cfg.scorer, gate.guards)
    if clash:
        raise StudioError(f"loop {spec.name}: gate.guards: {clash}", "rename the guard's scorer")
    if gate.must_pass is not None and gate.must_pass.min_score > 1 and cfg.scorer.get("type") != "judge":
        raise StudioError(f"loop {spec.name}: gate.must_pass.min_score {gate.must_pass.min_score:g} is above 1, "
                          f"and the gate's scorer {cfg.scorer.get('type')} scores from 0 to 1",
                          "set min_score to at most 1 (1: each item right)")


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

    loop = session.get(Loop, gen.loop_id)
    prefix = job_key_prefix(loop, gen.number)
    # Queued since the loop was made: a deleted loop of the same name left jobs under the same keys.
    jobs = session.scalars(select(Job).where(Job.submitted_by.startswith(prefix, autoescape=True),
                                             Job.created_at >= loop.created_at)).all()
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


# The tables that hold a loop's history, each keyed by its generation: removed with the loop.
_HISTORY = (("shadow_pairs", ShadowPair), ("looks", LoopLook), ("transitions", LoopTransition))


def _refuse_while_in_use(session: Session, loop: Loop) -> None:
    """409 while deleting the loop would lose track of something it still does: an active
    generation (whatever its state: training, gate, shadow, canary, promoting, rolling back, paused),
    or a canary split a generation left on the served name when it failed while promoting or rolling
    back — once the loop's rows are gone nothing would record that the split was the loop's."""
    gen = active_generation(session, loop)
    if gen is not None:
        where = f", paused in {gen.paused_from}" if gen.state == State.PAUSED.value and gen.paused_from else ""
        raise Conflict(f"loop {loop.name} has an active generation: generation {gen.number} is {gen.state}{where}",
                       f"cancel it first (`studio loop cancel {loop.name}`: a candidate holding traffic is "
                       "unwound through ROLLING_BACK) and delete the loop once the generation has ended, or wait "
                       "for it to end")
    splits = session.execute(
        select(LoopGeneration.number, LoopGeneration.state, LoopGeneration.candidate, Experiment.alias, Experiment.arms)
        .join(Experiment, Experiment.alias == LoopGeneration.canary_alias)
        .where(LoopGeneration.loop_id == loop.id, Experiment.status == "active")
        .order_by(LoopGeneration.number.desc())).all()
    for number, state, candidate, alias, arms in splits:
        if candidate in {arm.get("model") for arm in arms}:
            split = ", ".join(f"{arm.get('model')} weight {arm.get('weight')}" for arm in arms)
            raise Conflict(f"loop {loop.name}: generation {number} ended {state} with its canary split still on "
                           f"{alias!r} (experiment {alias}: {split})",
                           f"stop the split first (`studio experiments stop {alias}`: the served name goes back to "
                           "its champion alone), then delete the loop")


def _history_counts(session: Session, loop: Loop) -> LoopDeleted:
    gen_ids = select(LoopGeneration.id).where(LoopGeneration.loop_id == loop.id)
    counts = {what: session.scalar(select(func.count()).select_from(table).where(table.generation_id.in_(gen_ids)))
              for what, table in _HISTORY}
    generations = session.scalar(select(func.count()).select_from(LoopGeneration)
                                 .where(LoopGeneration.loop_id == loop.id))
    return LoopDeleted(name=loop.name, served_name=loop.served_name, generations=generations, **counts)


def deletion_preview(session: Session, name: str) -> LoopDeleted:
    """What ``delete_loop`` would remove, or its 404/409; nothing is changed (the CLI asks first)."""
    loop = get_loop(session, name)
    _refuse_while_in_use(session, loop)
    return _history_counts(session, loop)


def delete_loop(session: Session, name: str, *, actor: str) -> LoopDeleted:
    """Remove the loop and its history (generations, transitions, looks, shadow pairs) in the
    caller's transaction, so its name and served name are free for a new loop. 409 while a
    generation is active or a split it left is live (``_refuse_while_in_use``). Registered
    versions, jobs, dataset snapshots and feedback stay: they belong to the registry, the queue and
    the data, and name the loop in their own text (a job's ``submitted_by``, a snapshot's lineage)."""
    loop = get_loop(session, name)
    # Hold the loop before looking, so no generation starts between the check and the delete:
    # the UPDATE takes SQLite's write lock; FOR UPDATE makes PostgreSQL's generation insert (its
    # foreign key's key-share lock on this row) wait, then fail on the missing loop.
    session.execute(update(Loop).where(Loop.id == loop.id).values(updated_at=utcnow())
                    .execution_options(synchronize_session=False))
    session.execute(select(Loop.id).where(Loop.id == loop.id).with_for_update())
    _refuse_while_in_use(session, loop)
    gen_ids = select(LoopGeneration.id).where(LoopGeneration.loop_id == loop.id)
    removed = {what: session.execute(delete(table).where(table.generation_id.in_(gen_ids))
                                     .execution_options(synchronize_session=False)).rowcount
               for what, table in _HISTORY}
    generations = session.execute(delete(LoopGeneration).where(LoopGeneration.loop_id == loop.id)
                                  .execution_options(synchronize_session=False)).rowcount
    session.execute(delete(Loop).where(Loop.id == loop.id).execution_options(synchronize_session=False))
    out = LoopDeleted(name=loop.name, served_name=loop.served_name, generations=generations, **removed)
    session.expunge(loop)
    session.flush()
    log.info("loop %s deleted by %s: %d generations, %d transitions, %d looks, %d shadow pairs", out.name, actor,
             out.generations, out.transitions, out.looks, out.shadow_pairs)
    return out
