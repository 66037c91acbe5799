"""A live gateway without Ray: the studio API app (its real ``/gateway/v1`` route, real keys, real
``/api/usage``) served on a loopback port, whose gateway is a real ``GatewayService`` with model
groups pointing at the scripted provider. The one stand-in is :class:`ServiceHandle`, which calls
the service where the Serve ingress would hold the Gateway deployment's handle (the transport, not
the gateway's logic). ``STUDIO_GATEWAY_URL`` and ``STUDIO_API_KEY`` point every default
``studio.gateway.Client`` of the process at it, as ``studio up`` does for jobs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx

from tests.loopback import ServerThread


class _Method:
    def __init__(self, fn):
        self.fn = fn

    def remote(self, *args):
        return self.fn(*args)


class _Stream:
    """A streaming call's answer as the route uses it (async iteration and ``cancel()``)."""

    def __init__(self, agen):
        self._agen = agen

    def __aiter__(self):
        return self

    def __anext__(self):
        return self._agen.__anext__()

    def cancel(self) -> None:
        pass  # the route stops iterating; the generator's cleanup runs when it is closed


class ServiceHandle:
    """What the API route calls on the Gateway deployment's handle, answered by the service."""

    def __init__(self, service):
        self.chat = _Method(lambda body, ctx: service.handle("chat", body, ctx))
        self.completions = _Method(lambda body, ctx: service.handle("completions", body, ctx))
        self.chat_stream = _Method(lambda body, ctx: _Stream(service.stream("chat", body, ctx)))
        self.completions_stream = _Method(
            lambda body, ctx: _Stream(service.stream("completions", body, ctx)))
        self.models = _Method(service.models)

    def options(self, stream: bool = False) -> ServiceHandle:
        return self


@dataclass
class LiveGateway:
    service: Any  # the GatewayService
    api_url: str
    key: str  # an admin key

    @property
    def url(self) -> str:
        return f"{self.api_url}/gateway/v1"

    def usage(self, **params) -> list[dict]:
        """GET /api/usage after the service has written its queued usage rows."""
        assert self.service.usage.flush(), "queued usage rows were not written within 10 s"
        r = httpx.get(f"{self.api_url}/api/usage", params=params,
                      headers={"Authorization": f"Bearer {self.key}"})
        assert r.status_code == 200, r.text
        return r.json()["rows"]


def start_live_gateway(settings, spec_data: dict, redis_url: str | None = None):
    """(LiveGateway, stop): the studio API with a real GatewayService on a loopback port."""
    import studio.gateway  # noqa: F401 — LITELLM_LOCAL_MODEL_COST_MAP before litellm loads
    from studio.api.app import create_app
    from studio.gateway.service import GatewayService
    from studio.gateway.spec import load_gateway_spec
    from studio.keys import create_key
    from studio.store.db import session_scope

    service = GatewayService(load_gateway_spec(spec_data), None, settings.db_url, redis_url)
    app = create_app(settings)
    app.state.gateway = ServiceHandle(service)
    server = ServerThread(app).start()
    with session_scope(settings.db_url) as s:
        key = create_key(s, f"gw-tests-{server.port}", "admin")[0]

    def stop() -> None:
        server.stop()
        service.close()

    return LiveGateway(service, server.url, key), stop
