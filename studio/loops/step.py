"""What a runner step works with (``studio.loops.runner`` drives, ``runner_gate`` and
``runner_traffic`` step too): the step's view ``Ctx``, what a step returns (``Step``), the runner's
knobs and what counts as an infrastructure failure. Its own module so the runner and its parts import
it, not each other."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import requests
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from studio.loops import repository as repo
from studio.loops.actions import Actions
from studio.loops.control import job_key_prefix
from studio.loops.spec import LoopSpec
from studio.loops.states import IN_TRAFFIC, Reason, State
from studio.settings import StudioSettings
from studio.store.loop_models import Loop, LoopGeneration
from studio.store.models import Job

ACTOR = "scheduler"
# What an infrastructure failure looks like from here: retried with backoff, never a verdict.
INFRA_ERRORS = (OSError, ConnectionError, requests.RequestException, SQLAlchemyError, RuntimeError)


@dataclass(frozen=True)
class RunnerConfig:
    look_every_s: float = 60.0  # a canary look (stored, decided on) at most this often
    backoff_s: float = 30.0  # the first retry's wait; it doubles per attempt
    max_backoff_s: float = 900.0
    max_moves_per_pass: int = 12  # per generation: TRIGGERED → … → CANARY in one pass when all is ready


@dataclass(frozen=True)
class Step:
    """What one step did: ``moved`` when the state changed (the pass steps again), ``note`` in words."""

    moved: bool
    note: str


@dataclass
class Ctx:
    """One step's view: the transaction, the generation, its loop and frozen recipe, the clock."""

    session: Session
    gen: LoopGeneration
    loop: Loop
    spec: LoopSpec
    now: datetime
    actions: Actions
    settings: StudioSettings
    config: RunnerConfig

    @property
    def label(self) -> str:
        return f"{self.loop.name}#{self.gen.number}"

    def go(self, target: State, reason: Reason, detail: str, **values) -> Step:
        """Move the generation from its current state (compare-and-set). A state's stored clock
        (``deadline_at``) ends with it unless ``values`` sets a new one."""
        frm = State(self.gen.state)
        values.setdefault("deadline_at", None)
        self.gen = repo.move(self.session, self.gen.id, frm, target, reason, actor=ACTOR, detail=detail,
                             values=values, at=self.now)
        return Step(True, f"{frm} → {target} ({reason}): {detail}")

    def key(self, what: str) -> str:
        """The idempotency key of this attempt's job (its ``submitted_by``)."""
        return f"{job_key_prefix(self.loop, self.gen.number)}{what}:a{self.gen.attempt}"

    def job(self, kind: str, what: str) -> Job | None:
        # Only jobs queued since the loop was made: a deleted loop of the same name left its jobs
        # under the same keys (its generation 1's training job is not this generation 1's).
        return self.session.scalars(select(Job).where(Job.kind == kind, Job.submitted_by == self.key(what),
                                                      Job.created_at >= self.loop.created_at)
                                    .order_by(Job.id)).first()

    def lock(self) -> None:
        """Hold the generation's row for the rest of the transaction (PostgreSQL; SQLite has one
        writer anyway), so two runners cannot both queue this attempt's job."""
        self.session.execute(select(LoopGeneration.id).where(LoopGeneration.id == self.gen.id).with_for_update())
        self.session.refresh(self.gen)

    def backing_off(self) -> str | None:
        at = self.gen.deadline_at
        if self.gen.attempt > 1 and at is not None and self.now < at:
            return f"attempt {self.gen.attempt} waits out its backoff until {at.isoformat()}"
        return None

    def undo(self) -> None:
        """Roll back what a failed action wrote, so the failure is recorded on its own."""
        gen_id = self.gen.id
        self.session.rollback()
        self.gen = repo.get_generation(self.session, gen_id)

    def failed(self, why: str) -> Step:
        """An infrastructure failure of this state's step: retry after a backoff while attempts are
        left (``train.max_retries``), else FAILED (ROLLING_BACK first for a candidate in traffic)."""
        state = State(self.gen.state)
        if state in IN_TRAFFIC:
            return self.go(State.ROLLING_BACK, Reason.INFRA_FAILURE, why)
        if self.gen.attempt <= self.spec.train.max_retries:
            cfg = self.config
            wait = min(cfg.backoff_s * 2 ** (self.gen.attempt - 1), cfg.max_backoff_s)
            return self.go(state, Reason.RETRY, f"{why}; attempt {self.gen.attempt + 1} in {wait:g} s",
                           deadline_at=self.now + timedelta(seconds=wait))
        return self.go(State.FAILED, Reason.INFRA_FAILURE,
                       f"{why}; {self.spec.train.max_retries} retries spent (train.max_retries)")
