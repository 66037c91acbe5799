"""``build_app(args)``: the Serve application. It is the ``import_path`` of
``configs/serve/studio.yaml`` (so ``serve run configs/serve/studio.yaml`` works) and what
``studio up`` deploys."""

from __future__ import annotations

from typing import Any

from pydantic import Field
from ray.serve import Application

from deployments.ingress import ApiIngress
from studio.recipes import Spec, validate_spec
from studio.settings import StudioSettings, settings_env


class IngressConfig(Spec):
    num_replicas: int = Field(default=1, ge=1, description="Replicas of the HTTP front door.")
    num_cpus: float = Field(
        default=0.1, gt=0, description="Logical CPUs each ingress replica reserves (keep it small)."
    )


class AppArgs(Spec):
    """The ``args`` of the studio application in a Serve config."""

    ingress: IngressConfig = Field(default_factory=IngressConfig, description="HTTP front door.")


def build_app(args: dict[str, Any] | None = None) -> Application:
    cfg = validate_spec(AppArgs, dict(args or {}), "serve application args")
    env = settings_env(StudioSettings())
    return ApiIngress.options(
        num_replicas=cfg.ingress.num_replicas,
        ray_actor_options={"num_cpus": cfg.ingress.num_cpus, "runtime_env": {"env_vars": env}},
    ).bind()
