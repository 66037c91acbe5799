"""What the loop's runner does to the world outside the loop's own tables, behind one small
interface handed in by the layer that runs it (the JobScheduler deployment, the CLI, a test).

The runner (``studio.loops.runner``) decides; an ``Actions`` carries the decision out. Every method
is idempotent (it sets a state, never adds to one), so a runner that restarts and does a step again
changes nothing twice: the split is set *absolutely*, a promotion of the champion is a no-op, a
training job is looked up by its key before one is queued.

``ServiceActions`` is the real one, on the services only: the training queue (``studio.train.queue``,
preflight included), the registry, the A/B experiment the Router reads the canary's weights from
(aliased by the served name itself, so requests for the bare name are split while it exists), and
the served model names (``/v1/models`` through the gateway, or a function the deployment hands in),
and the shadow's judged pairs (``studio.loops.shadow``: the judge asked through the gateway's chat the
deployment hands in).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from sqlalchemy import select
from sqlalchemy.orm import Session

from studio.errors import NotFound
from studio.experiments.ab import (ArmSpec, ExperimentSpec, ExperimentUpdate, create_experiment, delete_experiment,
                                  update_experiment)
from studio.registry.versions import get_version, promote
from studio.store.models import ApiKey, Experiment, Job, PromotionEvent

if TYPE_CHECKING:
    from studio.loops.shadow import GatewayChat
    from studio.store.loop_models import LoopGeneration
    from studio.train.spec import TrainSpec


class Actions(Protocol):
    """The runner's outside effects. ``session`` is the runner's transaction: what a method writes
    commits with the move that follows it, or not at all."""

    def enqueue_training(self, session: Session, spec: TrainSpec, *, submitted_by: str,
                         owner_key_id: int | None) -> Job:
        """Queue the training job (the runner has checked that none exists for this key)."""

    def models_available(self) -> list[str]:
        """Model names the Router answers to (``/v1/models``): is the candidate's adapter served?"""

    def set_split(self, session: Session, alias: str, arms: dict[str, float]) -> bool:
        """Make the canary's experiment ``alias`` (the served name itself) split exactly ``arms``
        (model → percent); True if anything changed."""

    def end_split(self, session: Session, alias: str) -> bool:
        """End the canary's experiment (the served name resolves to its champion again); True if
        it existed."""

    def promote(self, session: Session, ref: str, *, by: str, reason: str) -> bool:
        """Make ``ref`` its name's champion (recorded as a promotion event); True if it changed."""

    def archive(self, session: Session, ref: str, *, by: str, reason: str) -> bool:
        """Archive a rolled-back candidate (never the champion); True if it changed."""

    def shadow_pairs(self, session: Session, gen: LoopGeneration) -> tuple[int, int] | None:
        """(wins, losses) of the candidate's judged shadow pairs so far, or None while nothing
        mirrors prompts to it."""


class ServiceActions:
    """``Actions`` on the studio's services. ``models_available``: a function listing the served
    names (default: the gateway's ``/v1/models``, ``studio.evals.queue.gateway_models``)."""

    def __init__(self, models_available: Callable[[], list[str]] | None = None,
                 cluster_gpus: Callable[[], float | None] | None = None,
                 judge_chat: GatewayChat | None = None):
        from studio.evals.queue import gateway_models
        from studio.train.queue import cluster_gpus as ray_cluster_gpus

        self._models_available = models_available or gateway_models
        self._cluster_gpus = cluster_gpus or ray_cluster_gpus
        self._judge_chat = judge_chat  # the gateway's chat (body, ctx); None: pairs wait unjudged

    def enqueue_training(self, session: Session, spec: TrainSpec, *, submitted_by: str,
                         owner_key_id: int | None) -> Job:
        from studio.train.queue import enqueue_train_job

        key = session.get(ApiKey, owner_key_id) if owner_key_id is not None else None
        job = enqueue_train_job(session, spec, submitted_by, cluster_gpus=self._cluster_gpus(), key=key)
        session.flush()
        return job

    def models_available(self) -> list[str]:
        return self._models_available()

    def set_split(self, session: Session, alias: str, arms: dict[str, float]) -> bool:
        want = [ArmSpec(model=m, weight=w) for m, w in arms.items()]
        exp = session.scalars(select(Experiment).where(Experiment.alias == alias)).first()
        if exp is None:
            create_experiment(session, ExperimentSpec(alias=alias, arms=want), created_by="loop", takes_over_name=True)
            return True
        if exp.status == "active" and _same_arms(exp.arms, arms):
            return False
        update_experiment(session, alias, ExperimentUpdate(arms=want, status="active"))
        return True

    def end_split(self, session: Session, alias: str) -> bool:
        return delete_experiment(session, alias)

    def promote(self, session: Session, ref: str, *, by: str, reason: str) -> bool:
        return _to_stage(session, ref, "champion", by=by, reason=reason)

    def archive(self, session: Session, ref: str, *, by: str, reason: str) -> bool:
        try:
            if get_version(session, ref).stage == "champion":
                return False
        except NotFound:  # deleted meanwhile: nothing left to archive
            return False
        return _to_stage(session, ref, "archived", by=by, reason=reason)

    def shadow_pairs(self, session: Session, gen: LoopGeneration) -> tuple[int, int] | None:
        from studio.loops.shadow import judge_pairs, pair_counts
        from studio.store.base import utcnow

        if self._judge_chat is not None:
            judge_pairs(session, gen, self._judge_chat, utcnow())
        return pair_counts(session, gen)


def _same_arms(stored: list[dict], arms: dict[str, float]) -> bool:
    return {a["model"]: float(a["weight"]) for a in stored} == {m: float(w) for m, w in arms.items()}


def _to_stage(session: Session, ref: str, stage: str, *, by: str, reason: str) -> bool:
    mv = get_version(session, ref)
    if mv.stage == stage:
        return False
    promote(session, f"{mv.name}@{mv.version}", stage)
    session.add(PromotionEvent(name=mv.name, version=mv.version, to_stage=stage,
                               outcome="promoted" if stage == "champion" else "archived", forced=False,
                               reason=reason[:4096], by=by))
    session.flush()
    return True
