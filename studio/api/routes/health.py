from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from studio import __version__
from studio.api.deps import KeyDep

router = APIRouter()


@router.get("/healthz", tags=["health"])
def healthz() -> dict:
    """Liveness, without auth: load balancers and `studio up` poll it."""
    return {"status": "ok", "version": __version__}


@router.get("/api/me", tags=["health"])
def me(key: KeyDep) -> dict:
    """Who the presented key is: a cheap authenticated check."""
    return {"name": key.name, "role": key.role}


@router.get("/metrics", tags=["health"], response_class=PlainTextResponse)
def metrics(_: KeyDep) -> PlainTextResponse:
    """Prometheus metrics of this process (scrape with a bearer token)."""
    return PlainTextResponse(generate_latest(), media_type=CONTENT_TYPE_LATEST)
