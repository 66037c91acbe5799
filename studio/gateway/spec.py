"""The gateway's configuration (``configs/gateway.yaml``): model groups, fallbacks, retries, cache.

A model group is a name callers use (``model=``). ``provider: studio`` groups are answered by the
studio's own Router (a base, a registry name, ``name@N`` or an experiment alias); ``openai``,
``anthropic`` and ``hosted_vllm`` groups go through LiteLLM's Router with the key read from the env
var named by ``api_key_env`` — never from the YAML. Any model name that is not a group is tried on
the studio Router when ``studio_models.enabled`` (so every registry name is reachable without
listing it here).
"""

from __future__ import annotations

import os
import re
from enum import StrEnum
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator, model_validator

from studio.errors import StudioError
from studio.recipes import Spec, read_yaml, validate_spec

DEFAULT_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "gateway.yaml"
_ENV_NAME = re.compile(r"^[A-Z_][A-Z0-9_]*$")


class Provider(StrEnum):
    studio = "studio"  # the studio Router (its bases, registry names, experiment aliases)
    openai = "openai"
    anthropic = "anthropic"
    hosted_vllm = "hosted_vllm"  # any OpenAI-compatible server (vLLM, SGLang, TGI) by api_base


class PriceSpec(Spec):
    """What a call costs when LiteLLM's price map does not know the model (self-hosted groups)."""

    input_per_1m_tokens_usd: float = Field(default=0.0, ge=0, description="USD per 1M prompt tokens.")
    output_per_1m_tokens_usd: float = Field(default=0.0, ge=0,
                                            description="USD per 1M completion tokens.")
    gpu_hour_usd: float = Field(default=0.0, ge=0, description="USD per GPU-hour, charged for the "
                                "wall time of each call (self-hosted engines billed by time).")

    def cost(self, prompt_tokens: int, completion_tokens: int, latency_s: float) -> float:
        return (prompt_tokens * self.input_per_1m_tokens_usd
                + completion_tokens * self.output_per_1m_tokens_usd) / 1e6 \
            + self.gpu_hour_usd * latency_s / 3600


class GroupSpec(Spec):
    """One deployment of a model group; several entries with one ``name`` are load-balanced."""

    name: str = Field(min_length=1, description="The model group name callers pass as `model`.")
    provider: Provider = Field(description="studio | openai | anthropic | hosted_vllm.")
    model: str = Field(min_length=1, description="The provider's model id (studio: a name the "
                       "studio Router resolves, e.g. `tiny`, `rev`, `rev@2`, an experiment alias).")
    api_base: str | None = Field(default=None, description="Base URL of the provider "
                                 "(required for hosted_vllm; default: the provider's public API).")
    api_key_env: str | None = Field(default=None, description="Name of the environment variable "
                                    "holding the provider key (e.g. OPENAI_API_KEY); never the key.")
    timeout_s: float | None = Field(default=None, gt=0, description="Per-call timeout; default "
                                    "router.timeout_s.")
    price: PriceSpec | None = Field(default=None, description="Price override; default: LiteLLM's "
                                    "price map for providers, studio_models.price for studio.")

    @model_validator(mode="before")
    @classmethod
    def _no_literal_keys(cls, data: Any) -> Any:
        if isinstance(data, dict) and ("api_key" in data or "key" in data):
            raise ValueError("a literal API key is not allowed in the gateway YAML; put it in an "
                             "environment variable and name it with `api_key_env: OPENAI_API_KEY`")
        return data

    @field_validator("api_key_env")
    @classmethod
    def _env_name(cls, v: str | None) -> str | None:
        if v is not None and not _ENV_NAME.match(v):
            raise ValueError(f"api_key_env must be an environment variable name like "
                             f"OPENAI_API_KEY, not {v[:6]!r}...; never put the key itself here")
        return v

    @model_validator(mode="after")
    def _provider_needs(self) -> GroupSpec:
        if self.provider == Provider.hosted_vllm and not self.api_base:
            raise ValueError(f"group {self.name!r}: hosted_vllm needs api_base (the server's /v1 URL)")
        if self.provider in (Provider.openai, Provider.anthropic) and not self.api_key_env \
                and not self.api_base:
            raise ValueError(f"group {self.name!r}: provider {self.provider.value} needs "
                             f"api_key_env (e.g. {self.provider.value.upper()}_API_KEY)")
        if self.provider == Provider.studio and (self.api_base or self.api_key_env):
            raise ValueError(f"group {self.name!r}: studio groups call the studio Router directly; "
                             "remove api_base/api_key_env")
        return self

    def litellm_model(self) -> str:
        return f"{self.provider.value}/{self.model}"


class RouterPolicy(Spec):
    """Retries, cooldown and timeouts (LiteLLM Router settings)."""

    num_retries: int = Field(default=2, ge=0, description="Retries of a transient error (with "
                             "exponential backoff) before falling back.")
    retry_after_s: float = Field(default=0.0, ge=0, description="Minimum wait before a retry.")
    allowed_fails: int = Field(default=3, ge=0, description="Failures within a minute before a "
                               "deployment is cooled down.")
    cooldown_time_s: float = Field(default=30.0, ge=0, description="How long a failing "
                                   "deployment is skipped.")
    timeout_s: float = Field(default=120.0, gt=0, description="Default per-call timeout.")


class CacheSpec(Spec):
    enabled: bool = Field(default=True, description="Serve identical deterministic requests "
                          "(temperature 0 or a seed) from cache.")
    ttl_s: int = Field(default=3600, gt=0, description="How long a cached answer lives.")
    namespace: str = Field(default="studio:gw", min_length=1,
                           description="Key prefix in Redis (STUDIO_REDIS_URL).")
    max_entries: int = Field(default=10_000, gt=0, description="In-process cache size.")


class StudioModelsSpec(Spec):
    enabled: bool = Field(default=True, description="Names that are not groups go to the studio "
                          "Router (bases, registry names, name@N, experiment aliases).")
    price: PriceSpec = Field(default_factory=PriceSpec, description="Price of studio-served calls.")


class GatewaySpec(Spec):
    """configs/gateway.yaml."""

    groups: list[GroupSpec] = Field(default_factory=list, description="Model groups.")
    fallbacks: dict[str, list[str]] = Field(default_factory=dict, description="group → groups "
                                            "tried in order when it errors or times out.")
    router: RouterPolicy = Field(default_factory=RouterPolicy, description="Retries/cooldown.")
    cache: CacheSpec = Field(default_factory=CacheSpec, description="Response cache.")
    studio_models: StudioModelsSpec = Field(default_factory=StudioModelsSpec,
                                            description="The studio's own models.")
    default_job_concurrency: int | None = Field(default=None, gt=0, description="In-flight cap "
                                                "per job id when the caller names none.")

    @model_validator(mode="after")
    def _fallbacks_name_groups(self) -> GatewaySpec:
        names = {g.name for g in self.groups}
        for src, targets in self.fallbacks.items():
            for name in [src, *targets]:
                if name not in names:
                    raise ValueError(f"fallbacks name {name!r}, which is not a group; groups: "
                                     f"{', '.join(sorted(names)) or '(none)'}")
        for name in names:
            providers = {g.provider for g in self.groups if g.name == name}
            if Provider.studio in providers and len(providers) > 1:
                raise ValueError(f"group {name!r} mixes studio and external deployments; give "
                                 "each its own group and use fallbacks")
        return self

    def group_names(self) -> list[str]:
        return sorted({g.name for g in self.groups})

    def provider_of(self, group: str) -> Provider | None:
        return next((g.provider for g in self.groups if g.name == group), None)

    def key_envs(self) -> set[str]:
        return {g.api_key_env for g in self.groups if g.api_key_env}


def missing_key_envs(spec: GatewaySpec, group: str, environ: dict[str, str] | None = None) -> list[str]:
    env = os.environ if environ is None else environ
    return sorted({g.api_key_env for g in spec.groups
                   if g.name == group and g.api_key_env and not env.get(g.api_key_env)})


def _refuse_secrets(data: Any, source: str) -> None:
    """Refuse a key written into the config *before* validation: the validation message echoes
    inputs, and a key must never reach an error message or a log."""
    groups = data.get("groups") if isinstance(data, dict) else None
    for i, g in enumerate(groups if isinstance(groups, list) else []):
        if not isinstance(g, dict):
            continue
        if "api_key" in g or "key" in g:
            raise StudioError(f"{source}: groups.{i} holds a literal API key, which is not allowed",
                              "put the key in an environment variable and name it with "
                              "`api_key_env: OPENAI_API_KEY`")
        env = g.get("api_key_env")
        if env is not None and not (isinstance(env, str) and _ENV_NAME.match(env)):
            raise StudioError(f"{source}: groups.{i}.api_key_env must be an environment variable "
                              "name (like OPENAI_API_KEY), and this value is not one",
                              "never put the key itself in the YAML; export it and name the "
                              "variable here")


def load_gateway_spec(source: str | Path | dict[str, Any] | None = None) -> GatewaySpec:
    """A path, an inline dict, or None (``configs/gateway.yaml`` if present, else defaults)."""
    if isinstance(source, dict):
        _refuse_secrets(source, "gateway config")
        return validate_spec(GatewaySpec, source, "gateway config")
    path = Path(source) if source else DEFAULT_CONFIG
    if not path.exists():
        if source:
            raise StudioError(f"gateway config {path} does not exist",
                              "pass an existing file (see configs/gateway.yaml)")
        return GatewaySpec()
    data = read_yaml(path) or {}
    _refuse_secrets(data, f"gateway config {path}")
    return validate_spec(GatewaySpec, data, f"gateway config {path}")
