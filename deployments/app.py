"""``build_app(args)``: the Serve application. It is the ``import_path`` of
``configs/serve/studio.yaml`` (so ``serve run configs/serve/studio.yaml`` works) and what
``studio up`` deploys."""

from __future__ import annotations

from typing import Any

from pydantic import Field
from ray.serve import Application

from deployments.ingress import ApiIngress
from deployments.scheduler import JobScheduler
from studio.jobs.scheduler import SchedulerConfig
from studio.recipes import Spec, validate_spec
from studio.settings import StudioSettings, settings_env


class IngressConfig(Spec):
    num_replicas: int = Field(default=1, ge=1, description="Replicas of the HTTP front door.")
    num_cpus: float = Field(
        default=0.1, gt=0, description="Logical CPUs each ingress replica reserves (keep it small)."
    )


class SchedulerArgs(SchedulerConfig):
    """The job scheduler deployment: its reconcile policy plus where it runs."""

    enabled: bool = Field(default=True, description="Run the scheduler (off: jobs stay QUEUED).")
    num_cpus: float = Field(default=0.05, gt=0, description="Logical CPUs its one replica reserves.")


class AppArgs(Spec):
    """The ``args`` of the studio application in a Serve config."""

    ingress: IngressConfig = Field(default_factory=IngressConfig, description="HTTP front door.")
    scheduler: SchedulerArgs = Field(default_factory=SchedulerArgs, description="Training job scheduler.")


def build_app(args: dict[str, Any] | None = None) -> Application:
    cfg = validate_spec(AppArgs, dict(args or {}), "serve application args")
    env = settings_env(StudioSettings())
    scheduler = None
    if cfg.scheduler.enabled:
        # One replica: passes are idempotent, but one writer per tick keeps the events readable.
        scheduler = JobScheduler.options(
            num_replicas=1,
            ray_actor_options={"num_cpus": cfg.scheduler.num_cpus, "runtime_env": {"env_vars": env}},
        ).bind(cfg.scheduler.model_dump(exclude={"enabled", "num_cpus"}))
    # A Serve application is the graph reachable from its ingress: the scheduler is deployed
    # because the ingress is bound with its handle.
    return ApiIngress.options(
        num_replicas=cfg.ingress.num_replicas,
        ray_actor_options={"num_cpus": cfg.ingress.num_cpus, "runtime_env": {"env_vars": env}},
    ).bind(scheduler)
