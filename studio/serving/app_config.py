"""The ``args`` of the studio application in a Serve config (``configs/serve/studio*.yaml``):
what the launcher (``studio up``: which provider keys to keep out of the Ray head) and the Serve
builder (``deployments.app.build_app``) both read. Validation only: nothing here starts anything."""

from __future__ import annotations

from typing import Any

from pydantic import Field, field_validator, model_validator

from studio.jobs.submission import SchedulerConfig
from studio.recipes import Spec, validate_spec
from studio.serving.config import ModelDeploymentConfig


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



def gateway_spec(cfg: GatewayArgs):
    from studio.gateway.spec import load_gateway_spec

    return load_gateway_spec(cfg.spec if cfg.spec is not None else cfg.config)


def provider_key_envs(args: dict[str, Any] | None) -> tuple[str, ...]:
    """The provider key variables (``api_key_env``) the gateway of this app config reads: only
    its replicas get them, so `studio up` keeps them out of the Ray head's environment, and jobs
    get them emptied."""
    return gateway_key_envs(validate_spec(AppArgs, dict(args or {}), "serve application args").gateway)


def gateway_key_envs(cfg: GatewayArgs) -> tuple[str, ...]:
    return tuple(sorted(gateway_spec(cfg).key_envs())) if cfg.enabled else ()
