from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from studio import __version__
from studio.access import principal_id
from studio.api.deps import KeyDep, TeamDep

router = APIRouter()


@router.get("/healthz", tags=["health"])
def healthz() -> dict:
    """Liveness, without auth: load balancers and `studio up` poll it."""
    return {"status": "ok", "version": __version__}


@router.get("/api/me", tags=["health"])
def me(key: KeyDep) -> dict:
    """Who the presented key is: a cheap authenticated check."""
    return {"id": principal_id(key), "name": key.name, "role": key.role}


@router.get("/metrics", tags=["health"], response_class=PlainTextResponse)
async def metrics(_: TeamDep, request: Request) -> PlainTextResponse:
    """Prometheus metrics of this process, then the serving metrics the Router keeps for every
    /v1 request (per model and version; see deployments/serving_metrics.py). Scrape with a bearer
    token."""
    text = generate_latest().decode()
    router_handle = getattr(request.app.state, "router", None)
    if router_handle is not None:
        text += await router_handle.metrics_text.remote()
    return PlainTextResponse(text, media_type=CONTENT_TYPE_LATEST)
