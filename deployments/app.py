"""``build_app(args)``: the Serve application. It is the ``import_path`` of
``configs/serve/studio.yaml`` (so ``serve run configs/serve/studio.yaml`` works) and what
``studio up`` deploys."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, model_validator
from ray.serve import Application

from deployments.ingress import ApiIngress
from deployments.model import ModelDeploymentConfig, build_model_deployment
from deployments.router import Router
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
    models: list[ModelDeploymentConfig] = Field(
        default_factory=list, description="Base models served on /v1 (one ModelDeployment each, "
        "with its registry adapters); none: no engine starts and /v1 answers 503.")
    router_num_cpus: float = Field(default=0.05, gt=0, description="Logical CPUs the Router reserves.")

    @model_validator(mode="after")
    def _unique_model_names(self) -> AppArgs:
        names = [m.engine.name for m in self.models]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"models serve the same name twice: {', '.join(dupes)}; give each a "
                             "distinct engine.served_model_name")
        return self


def resolve_model(cfg: ModelDeploymentConfig) -> ModelDeploymentConfig:
    """A local model path made absolute (replicas run in another cwd); hub ids stay as they are."""
    path = Path(cfg.engine.model).expanduser()
    if not path.exists():
        return cfg
    return cfg.model_copy(update={"engine": cfg.engine.model_copy(update={"model": str(path.resolve())})})


def build_router(models: list[ModelDeploymentConfig], num_cpus: float, env: dict[str, str]):
    """The Router bound with one ModelDeployment per base model; None when no model is served."""
    if not models:
        return None
    bases = {}
    for cfg in map(resolve_model, models):
        bases[cfg.engine.name] = {"handle": build_model_deployment(cfg), "model": cfg.engine.model}
    return Router.options(
        num_replicas=1, ray_actor_options={"num_cpus": num_cpus, "runtime_env": {"env_vars": env}},
    ).bind(bases)


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
    router = build_router(cfg.models, cfg.router_num_cpus, env)
    # A Serve application is the graph reachable from its ingress: the scheduler, the router and
    # its model deployments are deployed because the ingress is bound with their handles.
    return ApiIngress.options(
        num_replicas=cfg.ingress.num_replicas,
        ray_actor_options={"num_cpus": cfg.ingress.num_cpus, "runtime_env": {"env_vars": env}},
    ).bind(scheduler, router)
