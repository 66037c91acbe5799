"""A/B experiments: an endpoint alias split over arms by weight, sticky per user.

An arm is any model name the Router resolves (a served base id, a registry name → its champion,
``name@N``); requests for the alias get one arm by a weighted draw. With the request's ``user``
the draw is a hash of (alias, user), so one user always gets the same arm while the weights stay
the same; without one it is random. Status: ``active`` (the alias is served) or ``stopped``.
"""

from __future__ import annotations

import hashlib
import random
from pathlib import Path
from statistics import median
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator
from sqlalchemy import select
from sqlalchemy.orm import Session

from studio.errors import Conflict, NotFound, StudioError
from studio.recipes import Spec
from studio.store.models import Completion, Experiment, Feedback, ModelVersion

STATUSES = ("active", "stopped")


class ArmSpec(Spec):
    """One arm of an experiment."""

    model: str = Field(min_length=1, max_length=256,
                       description="A model name the router serves: base id, registry name, name@N.")
    weight: float = Field(gt=0, description="Relative share of traffic (weights need not sum to 1).")


class ExperimentSpec(Spec):
    """An experiment as created by `POST /api/experiments` and `studio experiments create`."""

    alias: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]*$",
                       description="The model name clients request; letters, digits, . _ : -, no @.")
    arms: list[ArmSpec] = Field(min_length=1, description="Arms and their weights.")
    status: Literal["active", "stopped"] = Field(default="active", description="active or stopped.")

    @model_validator(mode="after")
    def _distinct_arms(self) -> ExperimentSpec:
        names = [a.model for a in self.arms]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"arm {dupes[0]!r} is listed twice; merge its weights into one arm")
        if self.alias in names:
            raise ValueError(f"alias {self.alias!r} is also one of its arms; pick another alias")
        return self


class ExperimentUpdate(Spec):
    """A change to an experiment: new arms/weights and/or a new status."""

    arms: list[ArmSpec] | None = Field(default=None, min_length=1, description="Replace the arms.")
    status: Literal["active", "stopped"] | None = Field(default=None, description="New status.")

    @field_validator("arms")
    @classmethod
    def _distinct(cls, arms):
        if arms is not None:
            names = [a.model for a in arms]
            if len(set(names)) != len(names):
                raise ValueError("an arm is listed twice; merge its weights into one arm")
        return arms


def parse_arm(text: str) -> ArmSpec:
    """``tiny=0.5`` (CLI form) → ArmSpec."""
    model, sep, weight = text.rpartition("=")
    if not sep or not model:
        raise StudioError(f"arm {text!r} is not MODEL=WEIGHT", "write e.g. --arm tiny=0.5")
    try:
        return ArmSpec(model=model, weight=float(weight))
    except ValueError as e:
        raise StudioError(f"arm {text!r}: the weight must be a number above 0 ({e})",
                          "write e.g. --arm reverse-tiny@1=0.5") from None


def _check_arms_exist(session: Session, arms: list[ArmSpec], bases: set[str] | None) -> None:
    """Registry-shaped arms must be registered; ``bases`` (served base ids, when known) completes
    the check for the rest."""
    for arm in arms:
        name, sep, version = arm.model.partition("@")
        query = select(ModelVersion.id).where(ModelVersion.name == name)
        if sep and version.isdigit():
            query = query.where(ModelVersion.version == int(version))
        if session.scalars(query.limit(1)).first() is not None:
            continue
        if bases is None and not sep:
            continue  # may be a served base id; the router answers 404 naming it if not
        if bases is not None and arm.model in bases:
            continue
        raise NotFound(f"arm {arm.model!r} is neither a registered model version"
                       + (" nor a served base model" if bases is not None else ""),
                       "see `studio models ls` and GET /v1/models for names you can use")


def create_experiment(session: Session, spec: ExperimentSpec, created_by: str | None = None,
                      bases: set[str] | None = None, owner_key_id: int | None = None,
                      takes_over_name: bool = False) -> Experiment:
    """A new experiment. Its alias may not hide a registry name — unless ``takes_over_name``: a
    loop's canary (``studio.loops``) splits the bare registry name itself between its champion and
    candidate while the experiment exists (the Router resolves an alias before a registry name),
    and deletes it when the canary ends (``delete_experiment``). Not offered to API callers."""
    if session.scalars(select(Experiment).where(Experiment.alias == spec.alias)).first():
        raise Conflict(f"experiment {spec.alias!r} exists",
                       "change it with `PATCH /api/experiments/ALIAS` or pick another alias")
    if not takes_over_name and session.scalars(select(ModelVersion.id).where(ModelVersion.name == spec.alias)).first():
        raise Conflict(f"alias {spec.alias!r} is a registered model name; the alias would hide it",
                       "pick another alias")
    if bases is not None and spec.alias in bases:
        raise Conflict(f"alias {spec.alias!r} is a served base model", "pick another alias")
    _check_arms_exist(session, spec.arms, bases)
    exp = Experiment(alias=spec.alias, arms=[a.model_dump() for a in spec.arms],
                     status=spec.status, created_by=created_by, owner_key_id=owner_key_id)
    session.add(exp)
    session.flush()
    return exp


def get_experiment(session: Session, alias: str) -> Experiment:
    exp = session.scalars(select(Experiment).where(Experiment.alias == alias)).first()
    if exp is None:
        raise NotFound(f"no experiment {alias!r}", "see `studio experiments ls`")
    return exp


def list_experiments(session: Session, status: str | None = None) -> list[Experiment]:
    query = select(Experiment).order_by(Experiment.alias)
    if status:
        query = query.where(Experiment.status == status)
    return list(session.scalars(query))


def update_experiment(session: Session, alias: str, update: ExperimentUpdate,
                      bases: set[str] | None = None) -> Experiment:
    exp = get_experiment(session, alias)
    if update.arms is not None:
        if alias in {a.model for a in update.arms}:
            raise StudioError(f"alias {alias!r} cannot be one of its own arms", "name another model")
        _check_arms_exist(session, update.arms, bases)
        exp.arms = [a.model_dump() for a in update.arms]
    if update.status is not None:
        exp.status = update.status
    session.flush()
    return exp


def delete_experiment(session: Session, alias: str) -> bool:
    """Remove an experiment (a loop's canary when it ends: the bare name then resolves to its
    champion again). The completion log keeps the alias its requests went through. True if it existed."""
    exp = session.scalars(select(Experiment).where(Experiment.alias == alias)).first()
    if exp is None:
        return False
    session.delete(exp)
    session.flush()
    return True


def stop_experiment(session: Session, alias: str) -> Experiment:
    return update_experiment(session, alias, ExperimentUpdate(status="stopped"))


def same_model(ref: str) -> str:
    """A base model reference as the Router compares them: an existing path resolved absolute."""
    path = Path(ref).expanduser()
    return str(path.resolve()) if path.exists() else ref


def arms_served_on(session: Session, base: str, model: str | None = None) -> list[tuple[str, str]]:
    """``(alias, arm)`` for each arm of an active experiment that base model ``base`` (loaded from
    ``model``, a path or hub id) serves: the base itself, or a registry version — ``name@N``, or a
    bare name resolved to its champion (else its newest) as the Router does — whose base_model is
    the name or the model. Evicting ``base`` would make those arms answer 404."""
    from studio.registry.versions import get_version

    bases = {base, same_model(base)} | ({model, same_model(model)} if model else set())
    found = []
    for exp in list_experiments(session, "active"):
        for arm in exp.arms:
            ref = arm["model"]
            if ref != base:
                try:
                    version = get_version(session, ref)
                except StudioError:  # another served base, or a name the Router answers 404 for
                    continue
                if version.base_model not in bases and same_model(version.base_model) not in bases:
                    continue
            found.append((exp.alias, ref))
    return found


def experiment_dict(exp: Experiment) -> dict[str, Any]:
    total = sum(a["weight"] for a in exp.arms)
    return {"alias": exp.alias, "status": exp.status, "created_by": exp.created_by,
            "owner_key_id": exp.owner_key_id,
            "arms": [{**a, "share": round(a["weight"] / total, 4)} for a in exp.arms],
            "created_at": exp.created_at.isoformat(), "updated_at": exp.updated_at.isoformat()}


def pick_arm(alias: str, arms: list[dict[str, Any]], user: str | None) -> str:
    """The arm's model for one request: deterministic per (alias, user), random without a user."""
    if user:
        digest = hashlib.sha256(f"{alias}\0{user}".encode()).digest()
        point = int.from_bytes(digest[:8], "big") / 2**64
    else:
        point = random.random()
    total = sum(a["weight"] for a in arms)
    edge = 0.0
    for arm in arms:
        edge += arm["weight"] / total
        if point < edge:
            return arm["model"]
    return arms[-1]["model"]  # point within rounding of 1.0


def experiment_stats(session: Session, alias: str) -> dict[str, Any]:
    """The experiment with, per arm: requests, p50 latency/TTFT, versions that answered, ratings
    and preference wins/losses (from the completion log and feedback)."""
    exp = get_experiment(session, alias)
    rows = session.execute(select(Completion.id, Completion.arm, Completion.model_version,
                                  Completion.latency_ms, Completion.ttft_ms)
                           .where(Completion.experiment == alias)).all()
    arm_of = {r.id: r.arm for r in rows}
    feedback = session.execute(
        select(Feedback.completion_id, Feedback.rating, Feedback.preferred_completion_id)
        .join(Completion, Completion.id == Feedback.completion_id)
        .where(Completion.experiment == alias)).all()
    out = experiment_dict(exp)
    for arm in out["arms"]:
        mine = [r for r in rows if r.arm == arm["model"]]
        ratings = [f.rating for f in feedback if f.rating is not None
                   and arm_of.get(f.completion_id) == arm["model"]]
        arm.update({
            "requests": len(mine),
            "versions": sorted({r.model_version for r in mine}),
            "latency_ms_p50": _p50([r.latency_ms for r in mine]),
            "ttft_ms_p50": _p50([r.ttft_ms for r in mine if r.ttft_ms is not None]),
            "ratings": len(ratings),
            "rating_mean": round(sum(ratings) / len(ratings), 4) if ratings else None,
            "positive": sum(1 for x in ratings if x > 0),
            "negative": sum(1 for x in ratings if x < 0),
            "preferred": sum(1 for f in feedback if f.preferred_completion_id
                             and arm_of.get(f.preferred_completion_id) == arm["model"]),
            "not_preferred": sum(1 for f in feedback if f.preferred_completion_id
                                 and arm_of.get(f.completion_id) == arm["model"]),
        })
    out["requests"] = len(rows)
    out["feedback"] = len(feedback)
    return out


def _p50(values: list[float]) -> float | None:
    return round(median(values), 2) if values else None
