"""What submitting a job to Ray takes: the scheduler's config, the entrypoint command of each kind,
the job's runtime_env (settings, its id, its key; secrets emptied) and the key it spends on."""

from __future__ import annotations

import os
import shlex
import sys
from typing import Any

from pydantic import Field, field_validator
from sqlalchemy import select
from sqlalchemy.orm import Session

from studio.recipes import Spec
from studio.settings import StudioSettings, settings_env
from studio.store.models import ApiKey, Job, utcnow

# Keys a job's environment gets only from the scheduler (STUDIO_API_KEY: the job's own key).
JOB_KEY_VARS = ("STUDIO_ADMIN_KEY", "STUDIO_API_KEY")


class SchedulerConfig(Spec):
    """How the scheduler submits and retries jobs (the ``scheduler`` section of the Serve config)."""

    interval_s: float = Field(default=1.0, gt=0, description="Seconds between two reconcile passes.")
    retry_backoff_s: float = Field(
        default=10.0, ge=0, description="Wait before the first retry; doubles with every further attempt.")
    retry_backoff_max_s: float = Field(default=300.0, ge=0, description="Longest wait between attempts.")
    max_concurrent_jobs: int | None = Field(
        default=None, ge=1,
        description="Jobs on Ray at once (STARTING/RUNNING/CHECKPOINTING); the rest wait QUEUED, "
        "oldest first. Unset: no limit (Ray queues by resources).")
    python: str | None = Field(
        default=None,
        description="Python that runs the entrypoint on the cluster; default: the scheduler's own "
        "interpreter, which is the one Ray runs and studio is installed in.")
    entrypoint_module: str = Field(
        default="studio.train.run", description="Module run as `python -m MODULE --job-id N`.")
    runtime_env: dict[str, Any] = Field(
        default_factory=dict,
        description="Extra Ray runtime_env for every job. Locally nothing is needed (studio is "
        "installed in the venv Ray runs). On a cluster whose nodes lack studio, ship it: "
        "{working_dir: 's3://bucket/studio.zip'} or {pip: ['llm-studio==X']}. env_vars merge with "
        "the STUDIO_* ones, which win so the job opens the scheduler's database.")
    ray_address: str | None = Field(
        default=None,
        description="Ray Jobs API address; default: the cluster the scheduler runs in.")
    withheld_env: list[str] = Field(
        default_factory=list,
        description="Variables emptied in every job's environment: secrets a node's environment may "
        "hold that no job may read (build_app adds the gateway's provider key variables; "
        "STUDIO_ADMIN_KEY and STUDIO_API_KEY are always emptied).")
    heartbeat_timeout_s: float = Field(
        default=120.0, gt=0,
        description="A job run outside Ray (no submission id: `python -m studio.train.run --job-id N` "
        "by hand, `studio eval run --here`) whose process wrote no heartbeat for this long is FAILED "
        "(and retried while it has retries): its process is gone. Keep it well above "
        "STUDIO_JOB_HEARTBEAT_S (10 s). Jobs on Ray are judged by Ray instead.")
    job_key_ttl_h: float = Field(
        default=48.0, gt=0,
        description="Hours a job's key (derived from its submitter's, in its STUDIO_API_KEY) stays "
        "valid at most; it is revoked as soon as the job leaves Ray, and each attempt gets a new one.")

    @field_validator("runtime_env")
    @classmethod
    def _no_studio_keys(cls, env: dict[str, Any]) -> dict[str, Any]:
        named = sorted(set((env.get("env_vars") or {})) & set(JOB_KEY_VARS))
        if named:
            raise ValueError(f"runtime_env.env_vars must not set {', '.join(named)}: a job gets a key "
                             "derived from its submitter's, never a fixed one")
        return env


# Jobs of another kind than training run their own entrypoint module.
KIND_ENTRYPOINTS = {"eval": "studio.evals.run", "synth": "studio.data.synth.run",
                    "batch": "studio.batches.run", "sweep": "studio.train.sweep_run"}


def entrypoint_module(config: SchedulerConfig, kind: str = "train") -> str:
    return KIND_ENTRYPOINTS.get(kind, config.entrypoint_module)


def entrypoint(config: SchedulerConfig, job_id: int, kind: str = "train") -> str:
    python = config.python or sys.executable
    return f"{shlex.quote(python)} -m {entrypoint_module(config, kind)} --job-id {job_id}"


def job_runtime_env(settings: StudioSettings, config: SchedulerConfig, job_id: int | None = None,
                    api_key: str | None = None) -> dict[str, Any]:
    """The Ray runtime_env of a job: the config's, the studio's settings, the job's id and key.
    Nothing else secret: the head ``studio up`` starts holds no admin or provider key, and on a
    cluster whose nodes' environment does, the job's copy of them is emptied (``withheld_env``):
    a runtime_env cannot unset a variable, but it can override it."""
    env = {k: v for k, v in config.runtime_env.items() if k != "env_vars"}
    auth = {"RAY_AUTH_MODE": os.environ["RAY_AUTH_MODE"]} if os.environ.get("RAY_AUTH_MODE") else {}
    blank = dict.fromkeys((*JOB_KEY_VARS, *config.withheld_env), "")
    job = {"STUDIO_JOB_ID": str(job_id)} if job_id is not None else {}
    key = {"STUDIO_API_KEY": api_key} if api_key else {}
    env["env_vars"] = {**(config.runtime_env.get("env_vars") or {}), **auth, **settings_env(settings),
                       **blank, **job, **key}
    return env


def submitter_key(session: Session, job: Job) -> ApiKey | None:
    """The key a job spends on: its owner's. Rows without one: an after-training eval (``job:N``)
    spends as training job N does; a job queued from the CLI (``cli``, ``cli:USER``, a gate
    eval ``gate:cli:USER``) was queued by the operator, who holds the database, and spends on the
    oldest live admin key; a row queued before owners were recorded, on the key it names. None
    when that key is gone or not live: the job then runs without a key."""
    owner, by = job.owner_key_id, (job.submitted_by or "").removeprefix("gate:")
    if owner is None and by.startswith("job:") and by[4:].isdigit():
        parent_job = session.get(Job, int(by[4:]))
        if parent_job is not None:  # the training job's submitter, whoever that was
            owner, by = parent_job.owner_key_id, (parent_job.submitted_by or "").removeprefix("gate:")
    if owner is not None:
        key = session.get(ApiKey, owner)
    else:
        stmt = select(ApiKey).where(ApiKey.job_id.is_(None), ApiKey.revoked_at.is_(None))
        stmt = (stmt.where(ApiKey.role == "admin").order_by(ApiKey.id) if by.partition(":")[0] == "cli"
                else stmt.where(ApiKey.name == by))
        key = session.scalars(stmt.limit(1)).first()
    if key is None or key.revoked_at is not None or (key.expires_at and key.expires_at <= utcnow()):
        return None
    return key
