"""/api/deployments: base models deployed at runtime from serving recipes, next to the serve
config's models, with live figures per replica (memory, KV cache, running/waiting requests,
adapters loaded, tokens/s) and the state reported from the row and Serve's replica states
(``studio.serving.status``: never "ready" with 0 healthy replicas). Deploying and evicting need an admin key: they take or free cluster
resources; so does restarting one from its stored recipe. The work is ``studio.serving.lifecycle``'s
(a restart ``studio.serving.restore``'s); it runs off the event loop because a deploy waits for the
engine to start (bounded by the recipe's ``deploy_timeout_s``)."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from studio.api.deps import AdminDep, KeyDep, SettingsDep
from studio.errors import Unavailable
from studio.recipes import with_home_paths
from studio.serving import lifecycle, restore, status
from studio.serving.recipe import ServingRecipe, resolve_model_path

router = APIRouter(prefix="/api/deployments", tags=["serving"])


def _router(request: Request):
    handle = getattr(request.app.state, "router", None)
    if handle is None:
        raise Unavailable("this API process is not part of a running studio: models are deployed "
                          "by the Serve application `studio up` starts",
                          "run `studio up`, then call the API it serves")
    return handle


async def _load(request: Request) -> dict[str, Any]:
    """The Router's live figures; none outside Serve (the stored rows are still listed)."""
    handle = getattr(request.app.state, "router", None)
    return await handle.load.remote() if handle is not None else {}


@router.get("")
async def list_deployments(request: Request, settings: SettingsDep, _: KeyDep) -> list[dict[str, Any]]:
    """Every served base model (runtime-deployed and from the serve config) with live figures."""
    return await asyncio.to_thread(status.list_deployments, settings, await _load(request))


@router.get("/{name}")
async def get_deployment(name: str, request: Request, settings: SettingsDep, _: KeyDep) -> dict[str, Any]:
    return await asyncio.to_thread(status.get_deployment, settings, name, await _load(request))


@router.post("", status_code=201)
async def deploy(recipe: ServingRecipe, request: Request, settings: SettingsDep, key: AdminDep):
    """Deploy a recipe; answers once the model serves (201), or with why it cannot."""
    _router(request)
    # A relative model path is read from STUDIO_HOME (the API has no working directory of yours).
    recipe = resolve_model_path(with_home_paths(recipe, settings.home_abs, "request"), settings.home_abs)
    row = await asyncio.to_thread(lifecycle.deploy, settings, recipe, key.name, None, key.id)
    return JSONResponse(row, status_code=201)


@router.delete("/{name}")
async def evict(name: str, request: Request, settings: SettingsDep, key: AdminDep) -> dict[str, Any]:
    """Stop serving a runtime-deployed model: new requests get 404, those in flight finish. One
    serving an arm of an active A/B experiment is refused (409 naming it) before Serve is asked."""
    await asyncio.to_thread(lifecycle.check_evictable, settings, name)
    _router(request)
    return await asyncio.to_thread(lifecycle.evict, settings, name, f"evicted by {key.name}")


@router.post("/{name}/restart")
async def restart(name: str, request: Request, settings: SettingsDep, key: AdminDep) -> dict[str, Any]:
    """Deploy a runtime model again from its stored recipe; answers once it serves again. A ready
    one goes ``restoring`` (``/v1`` answers 503 with Retry-After meanwhile); a failed or evicted
    one is deployed again; one deploying, restoring or evicting is a 409. The answer comes within
    the recipe's ``deploy_timeout_s`` + ``restore.RESTART_BOUND_S`` (135 s): ready, or the 503
    saying why it could not come back (the row is then failed with that reason)."""
    _router(request)
    return await asyncio.to_thread(restore.restart, settings, name, key.name, key.id)
