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

from ray.serve import Application
from ray.serve.config import BackpressureConfig

from deployments.gateway import Gateway
from deployments.ingress import ApiIngress
from deployments.model import ModelDeploymentConfig, build_model_deployment
from deployments.router import Router
from deployments.scheduler import JobScheduler
from studio.jobs.submission import SchedulerConfig
from studio.recipes import validate_spec
from studio.serving.app_config import (
    AppArgs,
    GatewayArgs,
    gateway_key_envs,
    gateway_spec,
)
from studio.settings import StudioSettings, expand_home, settings_env


def resolve_model(cfg: ModelDeploymentConfig) -> ModelDeploymentConfig:
    """A local model path made absolute (replicas run in another cwd); hub ids stay as they are.
    ``${STUDIO_HOME}/...`` is read against this studio's home (``studio.settings.expand_home``, the
    recipes' rule: no other variable); its tiny model is built if missing."""
    settings = StudioSettings()
    model = expand_home(cfg.engine.model, settings.home_abs, field="engine.model")
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


def build_gateway(cfg: GatewayArgs, router, env: dict[str, str]):
    """The Gateway bound with the Router's handle; None when disabled. The config is validated
    here, so a malformed gateway YAML fails `studio up` with the field named."""
    if not cfg.enabled:
        return None
    spec = gateway_spec(cfg)
    # Provider keys travel from the environment of `studio up` to the gateway replicas only (the
    # head ``studio up`` starts has them removed, so no other replica or job inherits them). On
    # KubeRay the builder has none: the replicas read them at call time from their own pod's
    # environment (LiteLLM's ``os.environ/NAME``), the gateway worker group's.
    keys = {name: os.environ[name] for name in spec.key_envs() if os.environ.get(name)}
    options: dict[str, Any] = {"num_cpus": cfg.num_cpus, "runtime_env": {"env_vars": {**env, **keys}}}
    if cfg.resources:
        options["resources"] = cfg.resources
    return Gateway.options(num_replicas=cfg.num_replicas, ray_actor_options=options
                           ).bind(spec, router)


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
        ).bind(SchedulerConfig.model_validate({
            **cfg.scheduler.model_dump(exclude={"enabled", "num_cpus"}),
            "withheld_env": sorted({*cfg.scheduler.withheld_env, *gateway_key_envs(cfg.gateway)})}),
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
