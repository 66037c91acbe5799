"""The studio's FastAPI application. This module only assembles routers; the Serve ingress
(`deployments/ingress.py`) mounts it, and tests use it directly with a TestClient."""

from __future__ import annotations

from fastapi import Depends, FastAPI

from studio import __version__
from studio.api.deps import require_team
from studio.api.body_limit import BodyLimitMiddleware
from studio.api.errors import install_error_handlers
from studio.api.http_metrics import HttpMetricsMiddleware
from studio.api.routes import datasets, health, jobs, keys, models, openai, scheduler
from studio.api.routes import experiments
from studio.api.routes import evals
from studio.api.routes import gateway as gateway_routes
from studio.api.routes import usage
from studio.api.routes import deployments as deployment_routes
from studio.api.routes import synth as synth_routes
from studio.api.routes import batches as batch_routes
from studio.api.routes import files as file_routes
from studio.api.routes import loops as loop_routes
from studio.api.streams import StreamSlots
from studio.settings import StudioSettings, get_settings
from studio.store.db import init_db
from studio.ui import mount_ui


def create_app(settings: StudioSettings | None = None) -> FastAPI:
    settings = settings or get_settings()
    init_db(settings.db_url)
    app = FastAPI(title="LLM Studio", version=__version__, docs_url="/api/docs", redoc_url=None,
                  openapi_url="/api/openapi.json")
    app.state.settings = settings
    app.state.scheduler = None  # the JobScheduler's handle, set by the Serve ingress
    app.state.router = None  # the Router's handle (OpenAI /v1/*), set by the Serve ingress
    app.state.router_client = None  # the /v1 data path (deployments.router_client.RouterClient), likewise
    app.state.gateway = None  # the Gateway's handle (/gateway/v1/*), set by the Serve ingress
    app.state.streams = StreamSlots()  # open follow-streams per key (STUDIO_MAX_STREAMS_PER_KEY)
    install_error_handlers(app)
    app.add_middleware(BodyLimitMiddleware)  # 413 past STUDIO_MAX_BODY_MB, counted while reading
    app.add_middleware(HttpMetricsMiddleware)  # outermost: studio_http_* by route and status
    # Role floors (docs/security.md): /v1 and /gateway/v1 take any key; the studio API's
    # resources take team keys (user, admin); routes add admin-only and owner rules on top.
    team = [Depends(require_team)]
    app.include_router(health.router)  # /healthz (no key), /api/me (any key), /metrics (team)
    app.include_router(keys.router)  # admin only, per route
    app.include_router(datasets.router, dependencies=team)
    app.include_router(synth_routes.router, dependencies=team)
    app.include_router(jobs.router, dependencies=team)
    app.include_router(scheduler.router, dependencies=team)
    app.include_router(models.router, dependencies=team)
    app.include_router(openai.router)
    app.include_router(gateway_routes.router)  # /gateway/v1/*: the LLM gateway
    app.include_router(file_routes.router)  # /v1/files: batch inputs and outputs (any key, owner)
    app.include_router(batch_routes.router)  # /v1/batches: the OpenAI Batch API (any key, owner)
    app.include_router(usage.router, dependencies=team)
    app.include_router(experiments.router, dependencies=team)
    app.include_router(evals.router, dependencies=team)
    app.include_router(deployment_routes.router, dependencies=team)  # /api/deployments: runtime models
    app.include_router(loop_routes.router, dependencies=team)  # /api/loops: self-driving improvement loops
    mount_ui(app)  # /ui: static pages that call the API above with the user's key
    return app
