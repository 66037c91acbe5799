"""Gateway: the Serve deployment every internal LLM call goes through (``/gateway/v1/*`` on the
ingress; ``studio.gateway.Client`` in Python). Thin: the logic is ``studio.gateway.service``.

The ingress authenticates the key and hands over ``(body, ctx)`` — ``ctx`` names the key and its
limits, the calling service, the job and its concurrency cap; the studio Router's handle comes in
as an init argument, so studio groups reach the engines without another HTTP hop (the Router
routes; the answer streams straight from the model deployment).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import studio  # noqa: F401 — sets RAY_AUTH_MODE before the first `import ray` of a process
from ray import serve
from ray.serve.handle import DeploymentHandle

if TYPE_CHECKING:
    from studio.gateway.spec import GatewaySpec


@serve.deployment(name="Gateway", ray_actor_options={"num_cpus": 0.05}, max_ongoing_requests=256)
class Gateway:
    def __init__(self, spec: GatewaySpec, router: DeploymentHandle | None = None):
        import studio.gateway  # noqa: F401 — sets LITELLM_LOCAL_MODEL_COST_MAP before litellm loads
        from studio.gateway.request import RequestCaps
        from studio.gateway.service import GatewayService
        from studio.settings import StudioSettings

        from deployments.router_client import RouterClient

        settings = StudioSettings()
        client = RouterClient(router) if router is not None else None
        self._service = GatewayService(spec, client, settings.db_url,
                                       settings.redis_url, RequestCaps.of(settings))

    async def chat(self, body: dict[str, Any], ctx: dict[str, Any]):
        return await self._service.handle("chat", body, ctx)

    async def completions(self, body: dict[str, Any], ctx: dict[str, Any]):
        return await self._service.handle("completions", body, ctx)

    async def chat_stream(self, body: dict[str, Any], ctx: dict[str, Any]):
        """``stream: true``: (status, error body, headers) first, then SSE strings."""
        async for item in self._service.stream("chat", body, ctx):
            yield item

    async def completions_stream(self, body: dict[str, Any], ctx: dict[str, Any]):
        async for item in self._service.stream("completions", body, ctx):
            yield item

    async def models(self) -> dict[str, Any]:
        return await self._service.models()

    def __del__(self):
        # Write the queued usage rows when Serve tears the replica down.
        service = getattr(self, "_service", None)
        if service is not None:
            service.close()
