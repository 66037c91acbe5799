"""The loop's runner: one pass over every loop moves each active generation as far as it can go
now (docs/loops.md, "The runner"). The JobScheduler deployment runs a pass every few seconds; a
test runs one per tick of a virtual clock.

Nothing is kept between passes: a step reads the generation's stored state, does the next thing and
moves it by compare-and-set (``repository.move``), so a restarted runner reconciles by stepping
again. The next thing, per state:

=============  ===============================================================================
WATCHING       (a loop with no active generation) the triggers (``triggers.evaluate``): one that
               fires starts a generation and moves it to TRIGGERED in the same transaction
TRIGGERED      → SNAPSHOT: the cutoff is this pass's time
SNAPSHOT       ``snapshot.take_snapshot`` (the recorded cutoff wins on a retry) → TRAINING; no
               row to train on (preference pairs for DPO, thumbs-up answers for SFT) → CANCELLED
TRAINING       the training job keyed ``[cli:]loop:NAME:gN:train:aK`` (generation N, attempt K): queued
               once (looked up first, in the transaction that queues it), then waited for; its
               registered version → GATE; it failed → retried with backoff, then FAILED
GATE           the promotion gate's eval of candidate vs champion with the guards' scorers, and
               the must-pass eval (``runner_gate``) → SHADOW, CANARY or REFUSED
SHADOW, CANARY ``runner_traffic``: the split set absolutely every pass, a stored look, ``decide``
PROMOTING      the candidate made champion, the split removed → PROMOTED
ROLLING_BACK   the split removed, the candidate archived → ROLLED_BACK (CANCELLED for a cancel)
PAUSED         a canary paused for no traffic / no feedback resumes once a look no longer says
               so; any other pause waits for a person (``studio loop resume``)
=============  ===============================================================================

Infrastructure errors (a job that failed, a store or gateway that is away) retry the state with a
doubling backoff stored in ``deadline_at`` (never slept on) up to ``train.max_retries`` times, then
FAILED — or, for a candidate that holds traffic, ROLLING_BACK first.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from studio.errors import Conflict, StudioError
from studio.jobs.status import JobStatus, will_retry
from studio.loops import repository as repo
from studio.loops import runner_gate, runner_traffic
from studio.loops.actions import Actions
from studio.loops.control import start_triggered
from studio.loops.spec import LoopSpec
from studio.loops.states import IN_TRAFFIC, RETRYABLE, TERMINAL, Reason, State
from studio.loops.step import ACTOR, INFRA_ERRORS, Ctx, RunnerConfig, Step
from studio.loops.triggers import evaluate
from studio.settings import StudioSettings
from studio.store.db import session_scope
from studio.store.loop_models import Loop, LoopGeneration
from studio.store.models import utcnow

logger = logging.getLogger(__name__)


@dataclass
class PassReport:
    started: list[str] = field(default_factory=list)  # "loop#N: why"
    moves: list[str] = field(default_factory=list)  # "loop#N: A → B"
    notes: list[str] = field(default_factory=list)  # what a step did or waits for
    errors: list[str] = field(default_factory=list)

    def changed(self) -> bool:
        return bool(self.started or self.moves or self.errors)


class Runner:
    """``run_pass(now)``: start generations whose trigger fired and step every active one. Handed
    its ``Actions`` by the layer that runs it."""

    def __init__(self, settings: StudioSettings, actions: Actions, config: RunnerConfig | None = None):
        self.settings = settings
        self.actions = actions
        self.config = config or RunnerConfig()

    def run_pass(self, now: datetime | None = None) -> PassReport:
        now = now or utcnow()
        report = PassReport()
        with session_scope(self.settings.db_url) as s:
            loops = [(lp.id, lp.name, lp.status) for lp in repo.list_loops(s)]
            active = dict(s.execute(select(LoopGeneration.loop_id, LoopGeneration.id)
                                    .where(LoopGeneration.active_loop_id.is_not(None))).all())
        for loop_id, name, status in loops:
            try:
                gen_id = active.get(loop_id)
                if gen_id is None and status == "active":
                    gen_id = self._start_if_triggered(loop_id, now, report)
                if gen_id is not None:
                    self.advance(gen_id, now, report)
            except Exception as e:  # noqa: BLE001 — one loop's trouble (even a bug) must not stop the others'
                report.errors.append(f"loop {name}: {type(e).__name__}: {(str(e).splitlines() or [''])[0][:300]}")
                logger.warning("loop runner: loop %s: %s", name, e, exc_info=not isinstance(e, StudioError))
        return report

    def _start_if_triggered(self, loop_id: int, now: datetime, report: PassReport) -> int | None:
        with session_scope(self.settings.db_url) as s:
            loop = s.get(Loop, loop_id)
            fired = [f for f in evaluate(s, loop, now) if f.fired]
            if not fired:
                return None
            gen = start_triggered(s, loop, fired[0], now, actor=ACTOR)
            report.started.append(f"{loop.name}#{gen.number}: {fired[0].reason}")
            return gen.id

    def advance(self, gen_id: int, now: datetime, report: PassReport | None = None) -> list[Step]:
        """Step one generation until it waits (each step its own transaction)."""
        steps = []
        for _ in range(self.config.max_moves_per_pass):
            try:
                with session_scope(self.settings.db_url) as s:
                    step = self.step(s, gen_id, now)
            except Conflict as e:  # another runner (or a person) moved it first: read again next pass
                step = Step(False, f"generation {gen_id}: {e.problem}")
            except SQLAlchemyError:
                raise  # the database is away: nothing can be recorded; the next pass tries again
            except Exception as e:  # noqa: BLE001 — an unforeseen error is a failed attempt, on the timeline
                logger.exception("loop runner: generation %s", gen_id)
                step = self._unforeseen(gen_id, now, e)
            steps.append(step)
            if report is not None:
                (report.moves if step.moved else report.notes).append(f"generation {gen_id}: {step.note}")
            if not step.moved:
                break
        return steps

    def _unforeseen(self, gen_id: int, now: datetime, error: Exception) -> Step:
        """Record an error no step foresaw as a failed attempt of a state that retries (retried
        with backoff, then FAILED); elsewhere (a canary, a pause) it is raised to the pass's report
        and the next pass steps again — a bug never rolls back a candidate in traffic."""
        with session_scope(self.settings.db_url) as s:
            gen = repo.get_generation(s, gen_id)
            if State(gen.state) not in RETRYABLE or State(gen.state) in IN_TRAFFIC:
                raise error
            ctx = Ctx(s, gen, s.get(Loop, gen.loop_id), LoopSpec.model_validate(gen.config["loop"]), now,
                      self.actions, self.settings, self.config)
            return ctx.failed(f"{type(error).__name__}: {str(error)[:500]}")

    def step(self, session: Session, gen_id: int, now: datetime) -> Step:
        """Do the next thing for one generation, in ``session``'s transaction."""
        gen = repo.get_generation(session, gen_id)
        state = State(gen.state)
        if state in TERMINAL:
            return Step(False, f"{state}: done")
        loop = session.get(Loop, gen.loop_id)
        ctx = Ctx(session, gen, loop, LoopSpec.model_validate(gen.config["loop"]), now, self.actions,
                  self.settings, self.config)
        handler = {
            State.WATCHING: _watching, State.TRIGGERED: _triggered, State.SNAPSHOT: _snapshot,
            State.TRAINING: _training, State.GATE: runner_gate.gate, State.SHADOW: runner_traffic.shadow,
            State.CANARY: runner_traffic.canary, State.PROMOTING: runner_traffic.promoting,
            State.ROLLING_BACK: runner_traffic.rolling_back, State.PAUSED: runner_traffic.paused,
        }[state]
        return handler(ctx)


# --- the steps before traffic ------------------------------------------------------------------


def _watching(ctx: Ctx) -> Step:
    fired = [f for f in evaluate(ctx.session, ctx.loop, ctx.now) if f.fired]
    if not fired:
        return Step(False, "no trigger fired")
    return ctx.go(State.TRIGGERED, fired[0].kind, fired[0].reason)


def _triggered(ctx: Ctx) -> Step:
    return ctx.go(State.SNAPSHOT, Reason.STEP_DONE, f"feedback frozen at {ctx.now.isoformat()}")


def _snapshot(ctx: Ctx) -> Step:
    from studio.loops.snapshot import take_snapshot

    if (wait := ctx.backing_off()) is not None:
        return Step(False, wait)
    gen_id = ctx.gen.id
    ctx.session.commit()  # the snapshot writes from its own transactions
    try:
        done = take_snapshot(ctx.settings, gen_id, ctx.now)
    except StudioError as e:
        ctx.undo()
        if e.status_code >= 500:
            return ctx.failed(f"the snapshot failed: {e}")
        return ctx.go(State.CANCELLED, Reason.CANCEL, f"nothing to train on: {e}")
    except INFRA_ERRORS as e:
        ctx.undo()
        return ctx.failed(f"the snapshot failed: {type(e).__name__}: {e}")
    ctx.gen = repo.get_generation(ctx.session, gen_id)
    ctx.session.refresh(ctx.gen)
    return ctx.go(State.TRAINING, Reason.STEP_DONE,
                  f"snapshot {done['name']}@{done['version']} ({done['snapshot_id'][:12]}): {done['rows']} {done['what']} "
                  f"({done['replayed']} of them the champion's own, replayed), {done['golden_dropped']} golden-set "
                  f"prompts dropped, cutoff {done['cutoff']}")


def training_spec(ctx: Ctx):
    """The loop's training recipe (frozen with the generation) on the generation's snapshot, from
    the champion's adapter, registered under the served name; retries are the loop's (keyed by
    attempt), so the job itself has none."""
    from studio.train.spec import TrainSpec

    if not ctx.gen.config.get("train"):
        raise ValueError("the generation froze no training recipe (the loop has none: `studio loop create` "
                         "or PUT /api/loops/{name} stores one)")
    train = TrainSpec.model_validate(ctx.gen.config["train"])
    data = train.data.model_copy(update={"dataset": ctx.gen.snapshot_id})
    return train.model_copy(update={"name": ctx.spec.served_name, "init_adapter": ctx.gen.champion, "data": data,
                                    "max_retries": 0, "after_training": None})


def _training(ctx: Ctx) -> Step:
    from studio.train.spec import TrainResult

    ctx.lock()
    job = ctx.job("train", "train")
    if job is None:
        if (wait := ctx.backing_off()) is not None:
            return Step(False, wait)
        try:
            spec = training_spec(ctx)
        except ValueError as e:  # pydantic's ValidationError too: a stored recipe that no longer validates
            return ctx.go(State.FAILED, Reason.INFRA_FAILURE, f"the loop's training recipe is not valid: {e}")
        try:
            job = ctx.actions.enqueue_training(ctx.session, spec, submitted_by=ctx.key("train"),
                                               owner_key_id=ctx.loop.owner_key_id)
        except (StudioError, *INFRA_ERRORS) as e:
            # preflight's refusal (a model or dataset missing: 4xx) cannot be fixed by a retry
            refused = isinstance(e, StudioError) and e.status_code < 500
            why = f"the training job was {'refused' if refused else 'not queued'}: {e}"
            ctx.undo()
            return ctx.go(State.FAILED, Reason.INFRA_FAILURE, why) if refused else ctx.failed(why)
        return Step(False, f"queued training job {job.id} ({ctx.key('train')})")
    status = JobStatus(job.status)
    if status is JobStatus.SUCCEEDED:
        model = TrainResult.of(job).model
        if not model or "@" not in model:
            return ctx.failed(f"training job {job.id} succeeded but registered no version")
        return ctx.go(State.GATE, Reason.STEP_DONE, f"training job {job.id} registered {model}", candidate=model)
    if status is JobStatus.CANCELLED:
        return ctx.go(State.CANCELLED, Reason.CANCEL, f"training job {job.id} was cancelled")
    if status is JobStatus.FAILED and not will_retry(job):
        return ctx.failed(f"training job {job.id} failed: {(job.error or 'no error recorded').splitlines()[0][:500]}")
    return Step(False, f"training job {job.id} is {status}")
