"""``build_app(args)``: the Serve application. It is the ``import_path`` of every
``configs/serve/studio*.yaml`` (so ``serve run configs/serve/studio.yaml`` works) and what
``studio up`` deploys.

A model path may start with ``$STUDIO_HOME``; ``$STUDIO_HOME/models/tiny`` (what
``configs/serve/studio.yaml`` serves) is built here when missing, as ``studio models make-tiny``
builds it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator, model_validator
from ray.serve import Application
from ray.serve.config import BackpressureConfig

from deployments.gateway import Gateway
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
    max_ongoing_requests: int = Field(
        default=1024, ge=1, description="HTTP requests one ingress replica handles at once "
        "(streams included) before Serve queues them; Serve's own default of 5 would queue the "
        "6th concurrent chat completion.")
    max_queued_requests: int = Field(
        default=1024, ge=1, description="Requests Serve queues for the ingress once every replica "
        "has max_ongoing_requests; past it Serve answers 503 with Retry-After (its own default "
        "is no cap: a flood would queue until memory runs out).")
    retry_after_s: float = Field(default=5.0, ge=0, description="Retry-After of that 503.")


class SchedulerArgs(SchedulerConfig):
    """The job scheduler deployment: its reconcile policy plus where it runs."""

    enabled: bool = Field(default=True, description="Run the scheduler (off: jobs stay QUEUED).")
    num_cpus: float = Field(default=0.05, gt=0, description="Logical CPUs its one replica reserves.")


class GatewayArgs(Spec):
    """The LLM gateway deployment (``/gateway/v1``): its config and where it runs."""

    enabled: bool = Field(default=True, description="Deploy the gateway (off: /gateway answers 503).")
    config: str | None = Field(default=None, description="Path of the gateway YAML; default "
                               "configs/gateway.yaml (built-in defaults if absent).")
    spec: dict[str, Any] | None = Field(default=None, description="The gateway config inline "
                                        "(same fields as the YAML); wins over `config`.")
    num_replicas: int = Field(default=1, ge=1, description="Gateway replicas (limits and cache "
                              "are shared through Redis when STUDIO_REDIS_URL is set).")
    num_cpus: float = Field(default=0.05, gt=0, description="Logical CPUs each replica reserves.")
    resources: dict[str, float] = Field(
        default_factory=dict, description="Custom Ray resources each replica reserves, e.g. "
        "{gateway: 1} on KubeRay, where only the gateway worker group advertises `gateway` and "
        "only its pods hold the provider keys.")

    @field_validator("resources")
    @classmethod
    def _positive(cls, v: dict[str, float]) -> dict[str, float]:
        bad = sorted(k for k, n in v.items() if n <= 0)
        if bad:
            raise ValueError(f"resources {', '.join(bad)} must be > 0 (leave a resource out instead)")
        return v


class AppArgs(Spec):
    """The ``args`` of the studio application in a Serve config."""

    ingress: IngressConfig = Field(default_factory=IngressConfig, description="HTTP front door.")
    scheduler: SchedulerArgs = Field(default_factory=SchedulerArgs, description="Training job scheduler.")
    models: list[ModelDeploymentConfig] = Field(
        default_factory=list, description="Base models served on /v1 (one ModelDeployment each, "
        "with its registry adapters); none: no engine starts until a model is deployed at "
        "runtime (`studio serve deploy`).")
    router_num_cpus: float = Field(default=0.05, gt=0, description="Logical CPUs the Router reserves.")
    gateway: GatewayArgs = Field(default_factory=GatewayArgs, description="LLM gateway.")

    @model_validator(mode="after")
    def _unique_model_names(self) -> AppArgs:
        names = [m.engine.name for m in self.models]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"models serve the same name twice: {', '.join(dupes)}; give each a "
                             "distinct engine.served_model_name")
        return self


HOME_VAR = ("${STUDIO_HOME}", "$STUDIO_HOME")


def resolve_model(cfg: ModelDeploymentConfig) -> ModelDeploymentConfig:
    """A local model path made absolute (replicas run in another cwd); hub ids stay as they are.
    ``$STUDIO_HOME/...`` is read against this studio's home; its tiny model is built if missing."""
    model = cfg.engine.model
    settings = StudioSettings()
    for var in HOME_VAR:
        if model == var or model.startswith(var + "/"):
            model = str(settings.home_abs) + model[len(var):]
            break
    path = Path(model).expanduser()
    if not path.exists() and path.resolve() == (settings.models_dir / "tiny").resolve():
        import logging

        from studio.models.tiny import make_tiny

        logging.getLogger("ray.serve").info("building the tiny model at %s (first start)", path)
        make_tiny(path)
    if path.exists():
        model = str(path.resolve())
    if model == cfg.engine.model:
        return cfg
    return cfg.model_copy(update={"engine": cfg.engine.model_copy(update={"model": model})})


def build_router(models: list[ModelDeploymentConfig], num_cpus: float, env: dict[str, str]):
    """The Router bound with one ModelDeployment per base model. Always deployed, even with no
    models: it also serves the models deployed at runtime (``studio.serving``)."""
    bases = {}
    for cfg in map(resolve_model, models):
        bases[cfg.engine.name] = {"handle": build_model_deployment(cfg), "model": cfg.engine.model}
    return Router.options(
        num_replicas=1, ray_actor_options={"num_cpus": num_cpus, "runtime_env": {"env_vars": env}},
    ).bind(bases)


def _gateway_spec(cfg: GatewayArgs):
    from studio.gateway.spec import load_gateway_spec

    return load_gateway_spec(cfg.spec if cfg.spec is not None else cfg.config)


def provider_key_envs(args: dict[str, Any] | None) -> tuple[str, ...]:
    """The provider key variables (``api_key_env``) the gateway of this app config reads: only
    its replicas get them, so `studio up` keeps them out of the Ray head's environment, and jobs
    get them emptied."""
    return _provider_keys(validate_spec(AppArgs, dict(args or {}), "serve application args").gateway)


def _provider_keys(cfg: GatewayArgs) -> tuple[str, ...]:
    return tuple(sorted(_gateway_spec(cfg).key_envs())) if cfg.enabled else ()


def build_gateway(cfg: GatewayArgs, router, env: dict[str, str]):
    """The Gateway bound with the Router's handle; None when disabled. The config is validated
    here, so a malformed gateway YAML fails `studio up` with the field named."""
    if not cfg.enabled:
        return None
    spec = _gateway_spec(cfg)
    # Provider keys travel from the environment of `studio up` to the gateway replicas only (the
    # head ``studio up`` starts has them removed, so no other replica or job inherits them). On
    # KubeRay the builder has none: the replicas read them at call time from their own pod's
    # environment (LiteLLM's ``os.environ/NAME``), the gateway worker group's.
    keys = {name: os.environ[name] for name in spec.key_envs() if os.environ.get(name)}
    options: dict[str, Any] = {"num_cpus": cfg.num_cpus, "runtime_env": {"env_vars": {**env, **keys}}}
    if cfg.resources:
        options["resources"] = cfg.resources
    return Gateway.options(num_replicas=cfg.num_replicas, ray_actor_options=options
                           ).bind(spec.model_dump(mode="json"), router)


def build_app(args: dict[str, Any] | None = None) -> Application:
    cfg = validate_spec(AppArgs, dict(args or {}), "serve application args")
    env = settings_env(StudioSettings())
    router = build_router(cfg.models, cfg.router_num_cpus, env)
    gateway = build_gateway(cfg.gateway, router, env)
    scheduler = None
    if cfg.scheduler.enabled:
        # One replica: passes are idempotent, but one writer per tick keeps the events readable.
        scheduler = JobScheduler.options(
            num_replicas=1,
            ray_actor_options={"num_cpus": cfg.scheduler.num_cpus, "runtime_env": {"env_vars": env}},
        ).bind({**cfg.scheduler.model_dump(exclude={"enabled", "num_cpus"}),
                "withheld_env": sorted({*cfg.scheduler.withheld_env, *_provider_keys(cfg.gateway)})},
               gateway)
    # No replica gets STUDIO_ADMIN_KEY: the API and the scheduler ask the Gateway deployment for
    # its model names over its handle, so no key is needed for that.
    # A Serve application is the graph reachable from its ingress: the scheduler, the router and
    # its model deployments are deployed because the ingress is bound with their handles.
    return ApiIngress.options(
        num_replicas=cfg.ingress.num_replicas,
        max_ongoing_requests=cfg.ingress.max_ongoing_requests,
        max_queued_requests=cfg.ingress.max_queued_requests,
        backpressure_config=BackpressureConfig(status_code=503, retry_after_s=cfg.ingress.retry_after_s),
        ray_actor_options={"num_cpus": cfg.ingress.num_cpus, "runtime_env": {"env_vars": env}},
    ).bind(scheduler, router, gateway=gateway)
