"""Register, find, list and promote model versions.

Stages: ``candidate`` (new), ``champion`` (what the bare registry name serves; one per name),
``archived`` (a former champion). Promoting a version archives the previous champion.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from studio.access import claim_name
from studio.errors import NotFound, StudioError
from studio.mlflow_links import run_url, version_url
from studio.settings import StudioSettings
from studio.store.models import ApiKey, DatasetSnapshot, Job, ModelVersion, OwnedName

STAGES = ("candidate", "champion", "archived")


def register_version(session: Session, *, name: str, base_model: str, method: str, adapter_type: str,
                     uri: str, dataset_snapshot_id: str | None = None, job_id: int | None = None,
                     mlflow_run_id: str | None = None, metrics: dict[str, Any] | None = None,
                     owner_key_id: int | None = None, parity: dict[str, Any] | None = None) -> ModelVersion:
    """Add the next version of ``name`` as a candidate. Safe against a concurrent registration.
    ``parity``: the PEFT answers its training job recorded for the gate (studio.train.parity).
    With ``owner_key_id`` (the submitter of the job that trained it) the name must be that key's,
    or unowned (it becomes that key's), or the key an admin's (403 otherwise)."""
    if owner_key_id is not None:
        owner = session.get(ApiKey, owner_key_id)
        claim_name(session, "model", name, owner if owner is not None else owner_key_id)
    for _ in range(3):
        version = (session.scalar(select(func.max(ModelVersion.version)).where(ModelVersion.name == name)) or 0) + 1
        mv = ModelVersion(name=name, version=version, base_model=base_model, method=method,
                          adapter_type=adapter_type, uri=uri, dataset_snapshot_id=dataset_snapshot_id,
                          job_id=job_id, mlflow_run_id=mlflow_run_id, metrics=metrics or {}, stage="candidate",
                          parity=parity)
        try:
            with session.begin_nested():
                session.add(mv)
            return mv
        except IntegrityError:
            continue
    raise StudioError(f"could not register a new version of {name!r} (concurrent registrations)", "retry")


def get_version(session: Session, ref: str) -> ModelVersion:
    """``name@N`` → that version; ``name`` → its champion, else its newest version."""
    name, sep, v = ref.partition("@")
    if sep:
        if not v.isdigit():
            raise StudioError(f"model reference {ref!r}: version must be a number", "write name@3")
        mv = session.scalars(select(ModelVersion).where(ModelVersion.name == name, ModelVersion.version == int(v))).first()
        if mv is None:
            raise NotFound(f"model {name!r} has no version {v}", "see `studio models ls`")
        return mv
    versions = session.scalars(select(ModelVersion).where(ModelVersion.name == name)
                               .order_by(ModelVersion.version.desc())).all()
    if not versions:
        raise NotFound(f"no registered model named {name!r}", "see `studio models ls`")
    return next((m for m in versions if m.stage == "champion"), versions[0])


def list_versions(session: Session, name: str | None = None, *, limit: int | None = None,
                  offset: int = 0, newest_first: bool = False) -> list[ModelVersion]:
    order = ModelVersion.version.desc() if newest_first else ModelVersion.version
    stmt = select(ModelVersion).order_by(ModelVersion.name, order).limit(limit).offset(offset)
    if name:
        stmt = stmt.where(ModelVersion.name == name)
    return list(session.scalars(stmt))


def promote(session: Session, ref: str, stage: str = "champion") -> ModelVersion:
    if stage not in STAGES:
        raise StudioError(f"unknown stage {stage!r}", f"use one of {', '.join(STAGES)}")
    if "@" not in ref:
        raise StudioError(f"promote needs a pinned version, got {ref!r}", f"write {ref}@N (see `studio models ls`)")
    mv = get_version(session, ref)
    if stage == "champion":
        for other in session.scalars(select(ModelVersion).where(
                ModelVersion.name == mv.name, ModelVersion.stage == "champion", ModelVersion.id != mv.id)):
            other.stage = "archived"
    mv.stage = stage
    session.flush()
    return mv


def lineage(session: Session, ref: str) -> dict[str, Any]:
    """Which data and which job produced this version — one query."""
    mv = get_version(session, ref)
    row = session.execute(
        select(ModelVersion, Job, DatasetSnapshot)
        .outerjoin(Job, Job.id == ModelVersion.job_id)
        .outerjoin(DatasetSnapshot, DatasetSnapshot.id == ModelVersion.dataset_snapshot_id)
        .where(ModelVersion.id == mv.id)
    ).one()
    _, job, snap = row
    return {
        "model": version_dict(mv),
        "job": None if job is None else {"id": job.id, "status": job.status, "attempts": job.attempts,
                                         "submitted_by": job.submitted_by, "spec": job.spec},
        "dataset": None if snap is None else {"snapshot_id": snap.id, "kind": snap.kind,
                                              "rows": snap.row_count, "uri": snap.uri},
        # The adapter training started from (TrainSpec.init_adapter, pinned to name@N), if any.
        "init_adapter": None if job is None else (job.spec or {}).get("init_adapter"),
        # The sweep whose best trial this version is (studio.train.sweep_run), if any.
        "sweep": None if job is None or job.parent_id is None else {
            "job_id": job.parent_id, "trial": (job.result or {}).get("sweep_trial"),
            "params": (job.result or {}).get("params")},
        # The self-driving loop's generation that trained it as its candidate (docs/loops.md), if any.
        "loop_generation": _loop_generation(session, f"{mv.name}@{mv.version}"),
    }


def _loop_generation(session: Session, ref: str) -> dict[str, Any] | None:
    from studio.store.loop_models import Loop, LoopGeneration

    row = session.execute(
        select(Loop.name, LoopGeneration.number, LoopGeneration.state, LoopGeneration.champion,
               LoopGeneration.snapshot_id)
        .join(Loop, Loop.id == LoopGeneration.loop_id)
        .where(LoopGeneration.candidate == ref).order_by(LoopGeneration.id.desc()).limit(1)).first()
    if row is None:
        return None
    return {"loop": row.name, "number": row.number, "state": row.state, "champion": row.champion,
            "snapshot_id": row.snapshot_id}


def version_dict(mv: ModelVersion, settings: StudioSettings | None = None) -> dict[str, Any]:
    """The version as the API shows it; with ``settings``, ``mlflow_url`` (its registered model
    version's page in the MLflow UI, mirrored by ``studio.registry.mlflow_mirror``) and
    ``mlflow_run_url`` (its training run's) are links, else null."""
    return {
        "name": mv.name, "version": mv.version, "ref": f"{mv.name}@{mv.version}", "stage": mv.stage,
        "base_model": mv.base_model, "method": mv.method, "adapter_type": mv.adapter_type, "uri": mv.uri,
        "dataset_snapshot_id": mv.dataset_snapshot_id, "job_id": mv.job_id,
        "mlflow_run_id": mv.mlflow_run_id, "metrics": mv.metrics, "created_at": mv.created_at.isoformat(),
        "parity": mv.parity,
        "mlflow_url": version_url(settings, mv.name, mv.version) if settings else None,
        "mlflow_run_url": run_url(settings, mv.mlflow_run_id) if settings else None,
    }


def model_summaries(session: Session, limit: int | None = None, offset: int = 0) -> list[dict[str, Any]]:
    """One row per registered name: how many versions, the newest, and the champion (if any);
    a page of names (by name) with ``limit``."""
    names = select(ModelVersion.name).distinct().order_by(ModelVersion.name).limit(limit).offset(offset)
    by_name: dict[str, list[ModelVersion]] = {}
    for mv in session.scalars(select(ModelVersion).where(ModelVersion.name.in_(names.scalar_subquery()))
                              .order_by(ModelVersion.name, ModelVersion.version)):
        by_name.setdefault(mv.name, []).append(mv)
    owners = dict(session.execute(
        select(OwnedName.name, ApiKey.name).join(ApiKey, ApiKey.id == OwnedName.owner_key_id)
        .where(OwnedName.kind == "model", OwnedName.name.in_(list(by_name)))).all())
    out = []
    for name, versions in by_name.items():
        newest = versions[-1]
        champion = next((m.version for m in versions if m.stage == "champion"), None)
        out.append({"name": name, "versions": len(versions), "latest_version": newest.version,
                    "champion_version": champion, "base_model": newest.base_model, "method": newest.method,
                    "owner": owners.get(name), "updated_at": newest.created_at.isoformat()})
    return out
