"""Tables of the self-driving improvement loop (``studio.loops``): loops, their generations, every
transition of a generation, and every look at a canary. Registered on ``Base`` (``studio.store.base``)
by ``studio.store.models``, which imports this module last, so Alembic and the schema check see them."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Float, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from studio.store.base import Base, UTCDateTime, utcnow


class Loop(Base):
    """A loop: a recipe (``studio.loops.spec.LoopSpec``, as JSON) bound to one served name."""

    __tablename__ = "loops"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    served_name: Mapped[str] = mapped_column(String(128), unique=True)  # one loop per served name
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    train: Mapped[dict[str, Any] | None] = mapped_column(JSON)  # the validated TrainSpec it runs
    status: Mapped[str] = mapped_column(String(16), default="active")  # active | paused | cancelled
    status_reason: Mapped[str | None] = mapped_column(String(2048))
    rollbacks_in_a_row: Mapped[int] = mapped_column(Integer, default=0)  # harm rollbacks since a promotion
    created_by: Mapped[str | None] = mapped_column(String(128))
    owner_key_id: Mapped[int | None] = mapped_column(Integer, index=True)  # the key that owns it
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


class LoopGeneration(Base):
    """One run of a loop. ``state`` follows ``studio.loops.states`` and changes only by
    compare-and-set (``studio.loops.repository.move``); ``config`` is the recipe frozen at its start."""

    __tablename__ = "loop_generations"
    __table_args__ = (UniqueConstraint("loop_id", "number", name="uq_loop_generation_number"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    loop_id: Mapped[int] = mapped_column(ForeignKey("loops.id"), index=True)
    number: Mapped[int] = mapped_column(Integer)  # 1, 2, ... per loop
    # The loop's id while this generation is not terminal, else NULL: unique, so a loop has at most
    # one active generation, held by the database (NULLs never collide).
    active_loop_id: Mapped[int | None] = mapped_column(Integer, unique=True)
    state: Mapped[str] = mapped_column(String(16), index=True)
    paused_from: Mapped[str | None] = mapped_column(String(16))  # the state a PAUSED one resumes to
    rollback_reason: Mapped[str | None] = mapped_column(String(32))  # why it entered ROLLING_BACK
    attempt: Mapped[int] = mapped_column(Integer, default=1)  # of the state's step (retries)
    canary_step: Mapped[int] = mapped_column(Integer, default=0)  # index into the canary's steps
    config: Mapped[dict[str, Any]] = mapped_column(JSON)  # LoopSpec (+ the training recipe), frozen
    candidate: Mapped[str | None] = mapped_column(String(256))  # name@N once registered
    champion: Mapped[str | None] = mapped_column(String(256))  # name@N it is compared with
    deadline_at: Mapped[datetime | None] = mapped_column(UTCDateTime)  # stored, never slept on
    # The preference snapshot it trains on and its cutoff (feedback after it is held out), and the
    # experiment alias that splits the served name in the canary (``studio.loops.looks``).
    snapshot_id: Mapped[str | None] = mapped_column(String(64))
    cutoff_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    canary_alias: Mapped[str | None] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class LoopTransition(Base):
    """Every state change of a generation: when, from, to, the reason kind and words, and who."""

    __tablename__ = "loop_transitions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    generation_id: Mapped[int] = mapped_column(ForeignKey("loop_generations.id"), index=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    from_state: Mapped[str | None] = mapped_column(String(16))
    to_state: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str] = mapped_column(String(32))  # studio.loops.states.Reason
    detail: Mapped[str] = mapped_column(Text, default="")
    actor: Mapped[str] = mapped_column(String(128))  # "scheduler", or the key name of a person
    attempt: Mapped[int] = mapped_column(Integer, default=1)


class LoopLook(Base):
    """One look at a canary: the counts it saw (``studio.loops.stats.Look``) and what was decided
    (``Verdict``); ``studio loop explain`` recomputes the verdict from ``look``."""

    __tablename__ = "loop_looks"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    generation_id: Mapped[int] = mapped_column(ForeignKey("loop_generations.id"), index=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    step: Mapped[int] = mapped_column(Integer)
    weight: Mapped[float] = mapped_column(Float)  # the candidate's share in force
    look: Mapped[dict[str, Any]] = mapped_column(JSON)  # counts per arm, clocks
    action: Mapped[str] = mapped_column(String(16))
    estimate: Mapped[float | None] = mapped_column(Float)
    lower: Mapped[float | None] = mapped_column(Float)
    upper: Mapped[float | None] = mapped_column(Float)
    verdict: Mapped[dict[str, Any]] = mapped_column(JSON)  # reason, words, guardrails, SRM p-value
