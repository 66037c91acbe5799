"""When a loop starts a generation: its triggers as functions of the database at ``now``
(docs/loops.md, "Triggers"). Each returns whether it fired and why, in words a person can read; none
sleeps: a schedule is due by the stored time of the loop's last generation, not by a timer.

The loop's data is the feedback on completions any version of its served name answered
(``completions.model_version`` is ``name@N``, through the bare name, ``name@N`` or an experiment).
"New" is feedback given after the last generation's snapshot cutoff (``loop_generations.cutoff_at``):
what that generation trained on is not counted again.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from studio.loops.spec import LoopSpec
from studio.loops.states import Reason
from studio.store.loop_models import Loop, LoopGeneration
from studio.store.models import Completion, Feedback, ModelVersion, PromotionEvent


@dataclass(frozen=True)
class Fired:
    kind: Reason  # trigger_data | trigger_schedule | trigger_drift | trigger_manual
    fired: bool
    reason: str


def served_by(name: str, table: Any = Completion):
    """Completions (of ``table``, ``Completion`` or an alias of it) a version of registry name
    ``name`` answered."""
    return table.model_version.startswith(f"{name}@", autoescape=True)


def last_generation(session: Session, loop: Loop) -> LoopGeneration | None:
    return session.scalars(select(LoopGeneration).where(LoopGeneration.loop_id == loop.id)
                           .order_by(LoopGeneration.number.desc()).limit(1)).first()


def last_cutoff(session: Session, loop: Loop) -> datetime | None:
    return session.scalar(select(func.max(LoopGeneration.cutoff_at)).where(LoopGeneration.loop_id == loop.id))


def new_feedback(session: Session, loop: Loop, now: datetime) -> tuple[int, int]:
    """(rated completions, preference pairs) with feedback in (last cutoff, now]."""
    since = last_cutoff(session, loop)

    def window(q):
        q = q.where(served_by(loop.served_name), Feedback.created_at <= now)
        return q if since is None else q.where(Feedback.created_at > since)

    rated = session.scalar(window(select(func.count(func.distinct(Feedback.completion_id)))
                                  .join(Completion, Completion.id == Feedback.completion_id)
                                  .where(Feedback.rating.is_not(None))))
    pairs = session.scalar(window(select(func.count(Feedback.id))
                                  .join(Completion, Completion.id == Feedback.completion_id)
                                  .where(Feedback.preferred_completion_id.is_not(None))))
    return int(rated or 0), int(pairs or 0)


def _since(session: Session, loop: Loop) -> str:
    cutoff = last_cutoff(session, loop)
    return "since the last generation's cutoff " + cutoff.isoformat() if cutoff else "so far (no generation yet)"


def data_trigger(session: Session, loop: Loop, spec: LoopSpec, now: datetime) -> Fired:
    rated, pairs = new_feedback(session, loop, now)
    want_rated, want_pairs = spec.trigger.min_new_rated, spec.trigger.min_new_pairs
    if not want_rated and not want_pairs:
        return Fired(Reason.TRIGGER_DATA, False, "no data trigger is set (trigger.min_new_rated, min_new_pairs)")
    have = f"{rated} new rated completions and {pairs} new preference pairs {_since(session, loop)}"
    if want_rated and rated >= want_rated:
        return Fired(Reason.TRIGGER_DATA, True, f"{have}; {want_rated} rated are enough")
    if want_pairs and pairs >= want_pairs:
        return Fired(Reason.TRIGGER_DATA, True, f"{have}; {want_pairs} pairs are enough")
    need = " or ".join(x for x in (want_rated and f"{want_rated} rated", want_pairs and f"{want_pairs} pairs") if x)
    return Fired(Reason.TRIGGER_DATA, False, f"{have}; waiting for {need}")


def schedule_trigger(session: Session, loop: Loop, spec: LoopSpec, now: datetime) -> Fired:
    every = spec.trigger.every_s
    if not every:
        return Fired(Reason.TRIGGER_SCHEDULE, False, "no schedule is set (trigger.every_s)")
    last = last_generation(session, loop)
    last_run = last.created_at if last is not None else loop.created_at
    what = "the last generation started" if last is not None else "the loop was created"
    due = (now - last_run).total_seconds()
    if due < every:
        return Fired(Reason.TRIGGER_SCHEDULE, False, f"{what} {due:.0f} s ago; the schedule runs every {every:g} s")
    rated, _ = new_feedback(session, loop, now)
    if rated < spec.trigger.min_data_rated:
        return Fired(Reason.TRIGGER_SCHEDULE, False, f"due ({what} {due:.0f} s ago, every {every:g} s) but only "
                     f"{rated} new rated completions {_since(session, loop)}; the minimum is "
                     f"{spec.trigger.min_data_rated} (trigger.min_data_rated)")
    return Fired(Reason.TRIGGER_SCHEDULE, True, f"due ({what} {due:.0f} s ago, every {every:g} s) with {rated} "
                 f"new rated completions {_since(session, loop)}")


def _promoted_at(session: Session, mv: ModelVersion) -> datetime | None:
    return session.scalar(select(func.max(PromotionEvent.at)).where(
        PromotionEvent.name == mv.name, PromotionEvent.version == mv.version,
        PromotionEvent.to_stage == "champion", PromotionEvent.outcome.in_(("promoted", "forced"))))


def _ratings(session: Session, ref: str, since: datetime | None, now: datetime, newest: bool, n: int) -> list[float]:
    """Mean rating per rated completion of ``ref`` (ordered by completion time), the first or last ``n``."""
    q = (select(Completion.id, func.avg(Feedback.rating))
         .join(Feedback, Feedback.completion_id == Completion.id)
         .where(Completion.model_version == ref, Feedback.rating.is_not(None), Feedback.created_at <= now,
                Completion.created_at <= now)
         .group_by(Completion.id, Completion.created_at))
    if since is not None:
        q = q.where(Completion.created_at >= since)
    order = (Completion.created_at.desc(), Completion.id.desc()) if newest else (Completion.created_at, Completion.id)
    return [float(r[1]) for r in session.execute(q.order_by(*order).limit(n)).all()]


def drift_trigger(session: Session, loop: Loop, spec: LoopSpec, now: datetime) -> Fired:
    """The champion's thumbs-up rate over its latest ``min_data_rated`` rated completions against its
    rate over its first ``min_data_rated`` after it was promoted (its promotion event; without one,
    its first rated completions). The two windows must not overlap."""
    margin, n = spec.trigger.drift_margin, spec.trigger.min_data_rated
    if margin is None:
        return Fired(Reason.TRIGGER_DRIFT, False, "no drift trigger is set (trigger.drift_margin)")
    mv = session.scalars(select(ModelVersion).where(ModelVersion.name == loop.served_name,
                                                    ModelVersion.stage == "champion")).first()
    if mv is None:
        return Fired(Reason.TRIGGER_DRIFT, False, f"{loop.served_name} has no champion to watch")
    ref, since = f"{mv.name}@{mv.version}", _promoted_at(session, mv)
    first = _ratings(session, ref, since, now, newest=False, n=n)
    latest = _ratings(session, ref, since, now, newest=True, n=n)
    total = session.scalar(select(func.count(func.distinct(Completion.id)))
                           .join(Feedback, Feedback.completion_id == Completion.id)
                           .where(Completion.model_version == ref, Feedback.rating.is_not(None),
                                  Feedback.created_at <= now, Completion.created_at <= now,
                                  *(() if since is None else (Completion.created_at >= since,))))
    if total < 2 * n:
        return Fired(Reason.TRIGGER_DRIFT, False, f"{ref} has {total} rated completions since its promotion; drift "
                     f"compares its first {n} with its latest {n} (trigger.min_data_rated), so {2 * n} are needed")
    at_promotion = sum(1 for r in first if r > 0) / n
    current = sum(1 for r in latest if r > 0) / n
    words = (f"{ref}'s thumbs-up rate is {current:.1%} over its latest {n} rated completions against "
             f"{at_promotion:.1%} over its first {n} after promotion")
    if current <= at_promotion - margin:
        return Fired(Reason.TRIGGER_DRIFT, True, f"{words}: fell {at_promotion - current:.1%}, the margin is {margin:.1%}")
    return Fired(Reason.TRIGGER_DRIFT, False, f"{words}: within the margin of {margin:.1%}")


def manual_trigger(spec: LoopSpec, requested_by: str) -> Fired:
    if not spec.trigger.manual:
        return Fired(Reason.TRIGGER_MANUAL, False, "this loop is not run by hand (trigger.manual: false)")
    return Fired(Reason.TRIGGER_MANUAL, True, f"run by hand by {requested_by}")


def in_cooldown(session: Session, loop: Loop, spec: LoopSpec, now: datetime) -> str | None:
    """Why no automatic trigger may fire now (the last generation ended under ``cooldown_s`` ago)."""
    last = last_generation(session, loop)
    if last is None or last.ended_at is None:
        return None
    quiet = (now - last.ended_at).total_seconds()
    if quiet < spec.cooldown_s:
        return (f"generation {last.number} ended {quiet:.0f} s ago; the cooldown is {spec.cooldown_s:g} s "
                "(cooldown_s)")
    return None


def evaluate(session: Session, loop: Loop, now: datetime) -> list[Fired]:
    """Every automatic trigger of the loop at ``now``, data first; none fires during the cooldown."""
    spec = LoopSpec.model_validate(loop.spec)
    quiet = in_cooldown(session, loop, spec, now)
    results = [check(session, loop, spec, now) for check in (data_trigger, schedule_trigger, drift_trigger)]
    if quiet is None:
        return results
    return [Fired(r.kind, False, f"{r.reason}; but {quiet}" if r.fired else r.reason) for r in results]
