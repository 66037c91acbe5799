"""What the API and the CLI show of loops and generations: one typed shape each (the routes declare
them, so ``/api/openapi.json`` names their schemas). Times are ``isoformat()`` of UTC."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from studio.loops.repository import Explained, active_generation, transitions
from studio.store.loop_models import Loop, LoopGeneration, LoopLook


def _iso(t: datetime | None) -> str | None:
    return t.isoformat() if t is not None else None


class GenerationSummary(BaseModel):
    number: int = Field(description="1, 2, ... within its loop.")
    state: str = Field(description="studio.loops.states.State (docs/loops.md).")
    paused_from: str | None = None
    attempt: int
    canary_step: int
    candidate: str | None = None
    champion: str | None = None
    snapshot_id: str | None = Field(default=None, description="The preference snapshot it trains on.")
    cutoff_at: str | None = Field(default=None, description="Feedback after this time is held out of it.")
    canary_alias: str | None = Field(default=None, description="The experiment alias that splits the served name.")
    created_at: str
    updated_at: str
    ended_at: str | None = None


class TransitionView(BaseModel):
    at: str
    from_state: str | None
    to_state: str
    reason: str
    detail: str
    actor: str
    attempt: int


class LookView(BaseModel):
    id: int
    at: str
    step: int
    weight: float
    action: str
    estimate: float | None
    lower: float | None
    upper: float | None
    look: dict[str, Any] = Field(description="The counts per arm and clocks (studio.loops.stats.Look).")
    verdict: dict[str, Any] = Field(description="The stored verdict (studio.loops.stats.Verdict).")


class GenerationDetail(GenerationSummary):
    loop: str
    decision: dict[str, Any] | None = Field(
        default=None, description="The decision rule it froze at its start (studio.loops.stats.DecisionRule).")
    transitions: list[TransitionView]
    looks: list[LookView]


class LoopSummary(BaseModel):
    name: str
    served_name: str
    status: str = Field(description="active | paused | cancelled.")
    status_reason: str | None = None
    rollbacks_in_a_row: int
    generations: int
    active_generation: GenerationSummary | None = None
    last_ended: GenerationSummary | None = Field(
        default=None, description="The newest generation that ended (its state is the loop's last verdict).")
    created_by: str | None = None
    owner_key_id: int | None = None
    created_at: str
    updated_at: str


class LoopDetail(LoopSummary):
    spec: dict[str, Any] = Field(description="The loop recipe (studio.loops.spec.LoopSpec).")
    train: dict[str, Any] | None = Field(default=None, description="The training recipe it runs (TrainSpec).")
    recent_generations: list[GenerationSummary]


class LoopDeleted(BaseModel):
    """What ``DELETE /api/loops/{name}`` (``studio loop delete``) removed: the loop and its history."""

    name: str
    served_name: str = Field(description="Free for a new loop now.")
    generations: int = Field(description="Generation rows removed.")
    transitions: int = Field(description="Transition rows removed (the generations' timelines).")
    looks: int = Field(description="Stored canary looks removed.")
    shadow_pairs: int = Field(description="Judged shadow pairs removed.")
    kept: str = Field(default="registered versions, training and eval jobs, dataset snapshots and feedback",
                      description="What a delete never removes.")


class ExplainedLook(BaseModel):
    look_id: int
    at_s: float
    step: int
    weight: float
    stored_action: str
    stored_reason: str | None
    recomputed_action: str
    recomputed_reason: str | None
    estimate: float | None
    lower: float | None
    upper: float | None
    agrees: bool
    detail: str = Field(description="The recomputed verdict's words.")


class GenerationExplained(BaseModel):
    loop: str
    number: int
    state: str
    all_agree: bool
    looks: list[ExplainedLook]


def generation_summary(gen: LoopGeneration) -> GenerationSummary:
    return GenerationSummary(number=gen.number, state=gen.state, paused_from=gen.paused_from, attempt=gen.attempt,
                             canary_step=gen.canary_step, candidate=gen.candidate, champion=gen.champion,
                             snapshot_id=gen.snapshot_id, cutoff_at=_iso(gen.cutoff_at),
                             canary_alias=gen.canary_alias, created_at=_iso(gen.created_at), updated_at=_iso(gen.updated_at),
                             ended_at=_iso(gen.ended_at))


def loop_summary(session: Session, loop: Loop) -> LoopSummary:
    active = active_generation(session, loop)
    count = session.scalar(select(func.count()).select_from(LoopGeneration).where(LoopGeneration.loop_id == loop.id))
    ended = session.scalars(select(LoopGeneration).where(LoopGeneration.loop_id == loop.id,
                                                         LoopGeneration.ended_at.is_not(None))
                            .order_by(LoopGeneration.number.desc()).limit(1)).first()
    return LoopSummary(name=loop.name, served_name=loop.served_name, status=loop.status,
                       status_reason=loop.status_reason, rollbacks_in_a_row=loop.rollbacks_in_a_row,
                       generations=count or 0, active_generation=generation_summary(active) if active else None,
                       last_ended=generation_summary(ended) if ended else None,
                       created_by=loop.created_by, owner_key_id=loop.owner_key_id,
                       created_at=_iso(loop.created_at), updated_at=_iso(loop.updated_at))


def loop_detail(session: Session, loop: Loop, recent: int = 20) -> LoopDetail:
    gens = session.scalars(select(LoopGeneration).where(LoopGeneration.loop_id == loop.id)
                           .order_by(LoopGeneration.number.desc()).limit(recent))
    return LoopDetail(**loop_summary(session, loop).model_dump(), spec=loop.spec, train=loop.train,
                      recent_generations=[generation_summary(g) for g in gens])


def generation_detail(session: Session, loop: Loop, gen: LoopGeneration) -> GenerationDetail:
    looks = session.scalars(select(LoopLook).where(LoopLook.generation_id == gen.id).order_by(LoopLook.id))
    return GenerationDetail(
        **generation_summary(gen).model_dump(), loop=loop.name,
        decision=((gen.config or {}).get("loop") or {}).get("decision"),
        transitions=[TransitionView(at=_iso(t.at), from_state=t.from_state, to_state=t.to_state, reason=t.reason,
                                    detail=t.detail, actor=t.actor, attempt=t.attempt)
                     for t in transitions(session, gen.id)],
        looks=[LookView(id=k.id, at=_iso(k.at), step=k.step, weight=k.weight, action=k.action, estimate=k.estimate,
                        lower=k.lower, upper=k.upper, look=k.look, verdict=k.verdict) for k in looks])


def explained_view(loop: Loop, gen: LoopGeneration, rows: list[Explained]) -> GenerationExplained:
    looks = [ExplainedLook(look_id=e.look_id, at_s=e.look.at_s, step=e.look.step, weight=e.look.weight,
                           stored_action=e.stored.action.value,
                           stored_reason=e.stored.reason.value if e.stored.reason else None,
                           recomputed_action=e.recomputed.action.value,
                           recomputed_reason=e.recomputed.reason.value if e.recomputed.reason else None,
                           estimate=e.recomputed.estimate, lower=e.recomputed.lower, upper=e.recomputed.upper,
                           agrees=e.agrees, detail=e.recomputed.detail) for e in rows]
    return GenerationExplained(loop=loop.name, number=gen.number, state=gen.state,
                               all_agree=all(x.agrees for x in looks), looks=looks)
