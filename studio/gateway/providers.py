"""External model groups: LiteLLM's Router (retries with backoff, cooldown of failing
deployments, timeouts, load balancing, LiteLLM's price map) built from the gateway config, and one
call of a group. A provider gets OpenAI's fields only: the body is already free of LiteLLM's call
options (``studio.gateway.request``), and vLLM's extensions are for the studio's engines. The
provider's host and key come from ``configs/gateway.yaml`` and the gateway's environment only.
"""

from __future__ import annotations

from typing import Any

from studio.errors import StudioError
from studio.gateway.request import (CHAT_ENGINE_FIELDS, ENGINE_FIELDS, OPENAI_CHAT_FIELDS,
                                    OPENAI_COMPLETION_FIELDS)
from studio.gateway.spec import GatewaySpec, Provider, missing_key_envs


class UpstreamError(StudioError):
    """A model group failed (after its retries); ``fallback_ok`` says whether to try the next."""

    def __init__(self, problem: str, fix: str | None = None, *, status: int = 502,
                 fallback_ok: bool = True):
        super().__init__(problem, fix, status_code=status)
        self.fallback_ok = fallback_ok


def build_llm_router(spec: GatewaySpec):
    """LiteLLM's Router over the external groups (None when there are none)."""
    external = [g for g in spec.groups if g.provider != Provider.studio]
    if not external:
        return None
    from litellm import Router

    policy = spec.router
    model_list = []
    for g in external:
        params: dict[str, Any] = {"model": g.litellm_model(),
                                  "timeout": g.timeout_s or policy.timeout_s,
                                  "max_retries": 0}  # retries are the Router's, with backoff
        if g.api_base:
            params["api_base"] = g.api_base
        # LiteLLM reads "os.environ/NAME" at call time: the key never sits in our config.
        params["api_key"] = f"os.environ/{g.api_key_env}" if g.api_key_env else "none"
        if g.price:
            params["input_cost_per_token"] = g.price.input_per_1m_tokens_usd / 1e6
            params["output_cost_per_token"] = g.price.output_per_1m_tokens_usd / 1e6
        model_list.append({"model_name": g.name, "litellm_params": params})
    return Router(model_list=model_list, num_retries=policy.num_retries,
                  retry_after=policy.retry_after_s, allowed_fails=policy.allowed_fails,
                  cooldown_time=policy.cooldown_time_s, timeout=policy.timeout_s)


async def call_provider(llm: Any, spec: GatewaySpec, endpoint: str, name: str, body: dict
                        ) -> tuple[dict[str, Any], str, str, float]:
    """(body, group, deployment, cost) of one call of external group ``name`` through ``llm``
    (:func:`build_llm_router`); ``body`` holds only fields the request model allowed."""
    import litellm

    missing = missing_key_envs(spec, name)
    if missing and len(missing) == len({g.api_key_env for g in spec.groups
                                        if g.name == name and g.api_key_env}):
        raise UpstreamError(f"model group {name!r} needs the provider key in "
                            f"{' or '.join(missing)}, which is not set in the gateway's "
                            "environment", f"export {missing[0]}=... before `studio up`",
                            status=503)
    # Only OpenAI's fields go to a provider: vLLM's extensions are for studio engines, and
    # the body is already free of LiteLLM's call options (GatewayService._check_body); the filter
    # below keeps this call site an allowlist even so.
    engine_only = sorted(set(body) & (CHAT_ENGINE_FIELDS if endpoint == "chat"
                                      else ENGINE_FIELDS))
    if engine_only:
        raise UpstreamError(f"group {name!r} is an external provider, which takes OpenAI's "
                            f"fields only, not vLLM's {', '.join(engine_only)}",
                            "drop them, or call a studio-served model", status=400,
                            fallback_ok=False)
    allowed = OPENAI_CHAT_FIELDS if endpoint == "chat" else OPENAI_COMPLETION_FIELDS
    params = {k: v for k, v in body.items()
              if k in allowed and k not in ("model", "messages", "prompt")}
    try:
        if endpoint == "chat":
            resp = await llm.acompletion(model=name, messages=body["messages"], **params)
        else:
            resp = await llm.atext_completion(model=name, prompt=body["prompt"], **params)
    except litellm.exceptions.Timeout as e:
        raise UpstreamError(f"group {name!r} timed out ({_short(e)})",
                            "raise its timeout_s or add a fallback group", status=504) from None
    except Exception as e:  # noqa: BLE001 — any provider failure becomes one clean error
        status = getattr(e, "status_code", None)
        status = status if isinstance(status, int) and 400 <= status < 600 else 502
        if status < 500 and status not in (408, 429):
            status_out, fallback_ok = status, False
        else:
            status_out, fallback_ok = (429 if status == 429 else 502), True
        raise UpstreamError(f"group {name!r} failed: {_short(e)}",
                            "check the provider's status, its key, or add a fallback group",
                            status=status_out, fallback_ok=fallback_ok) from None
    hidden = getattr(resp, "_hidden_params", {}) or {}
    cost = hidden.get("response_cost")
    if cost is None:
        try:
            cost = litellm.completion_cost(completion_response=resp)
        except Exception:  # noqa: BLE001 — a model missing from the price map costs 0
            cost = 0.0
    deployment = hidden.get("litellm_model_name") or hidden.get("model") or resp.model
    provider = hidden.get("custom_llm_provider")
    if provider and deployment and not str(deployment).startswith(f"{provider}/"):
        deployment = f"{provider}/{deployment}"
    return resp.model_dump(exclude_none=True), name, str(deployment), float(cost or 0.0)


def _short(e: Exception) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return text[:400]
