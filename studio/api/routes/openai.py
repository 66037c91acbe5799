"""/v1/*: the OpenAI-compatible endpoint. Thin: authenticate, parse the JSON body, hand it to the
Router (``app.state.router``) through ``deployments.router.RouterClient``, which asks the Router
where the request goes and streams the answer straight from that model's deployment — a JSON body
or a server-sent-event stream. Every answer names the concrete version that produced it in
``x-studio-model-version`` (non-streamed bodies also carry ``studio_model_version``); an answer for an experiment alias also
names the experiment and arm (``x-studio-experiment``, ``x-studio-arm``). A client that
disconnects mid-stream closes the stream, which cancels the engine request.

``POST /v1/feedback`` judges a logged completion (its response ``id``): see
``studio.experiments.completions``."""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import ValidationError

from studio.access import principal_id
from studio.api.deps import KeyDep, SettingsDep
from studio.api.errors import error_response
from studio.errors import NotFound, StudioError, Unavailable

router = APIRouter(prefix="/v1", tags=["openai"])
VERSION_HEADER = "x-studio-model-version"
META_HEADERS = {"studio_model_version": VERSION_HEADER, "studio_experiment": "x-studio-experiment",
                "studio_arm": "x-studio-arm"}


def _router(request: Request):
    handle = getattr(request.app.state, "router", None)
    if handle is None:
        raise Unavailable("no models are served",
                          "add a models: section to the serve config (see "
                          "configs/serve/studio.yaml) and run `studio up` again")
    return handle


def _client(request: Request):
    """One RouterClient per app (it caches the model deployments' handles)."""
    client = getattr(request.app.state, "router_client", None)
    if client is None:
        from deployments.router import RouterClient

        client = request.app.state.router_client = RouterClient(_router(request))
    return client


@router.get("/models")
async def list_models(_: KeyDep, request: Request) -> dict[str, Any]:
    return await _router(request).models.remote()


@router.post("/chat/completions")
async def chat_completions(key: KeyDep, request: Request):
    return await _forward(request, "chat", key)


@router.post("/completions")
async def completions(key: KeyDep, request: Request):
    return await _forward(request, "completions", key)


@router.post("/feedback")
async def feedback(key: KeyDep, request: Request, settings: SettingsDep) -> dict[str, Any]:
    """Judge a logged completion: a rating and/or a better completion to the same prompt. Only
    completions answered to this key (an admin: any)."""
    import asyncio

    from studio.experiments.completions import FeedbackSpec

    try:
        spec = FeedbackSpec.model_validate(await _json_body(request))
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(body)"
        raise StudioError(f"invalid feedback: {where}: {first['msg']}",
                          "send {completion_id, rating?, preferred_completion_id?, comment?}") from None
    try:
        return await asyncio.to_thread(_store_feedback, settings.db_url, spec, key)
    except NotFound:
        # The completion may still be on its way to the Router (this replica's reports) or in
        # its write buffer: send ours, write the buffer out, then retry.
        handle = getattr(request.app.state, "router", None)
        if handle is None:
            raise
        await _client(request).drain()
        await handle.flush_completions.remote()
        return await asyncio.to_thread(_store_feedback, settings.db_url, spec, key)


def _store_feedback(db_url: str, spec, key) -> dict[str, Any]:
    # A session of its own, not the request's: the Router's log writes must not wait on it.
    from studio.experiments.completions import add_feedback, feedback_dict, get_completion
    from studio.store.db import session_scope

    with session_scope(db_url) as session:
        fb = add_feedback(session, spec, key.name, key)
        return {"object": "feedback", **feedback_dict(fb, get_completion(session, fb.completion_id))}


async def _json_body(request: Request) -> dict[str, Any]:
    try:
        body = json.loads(await request.body())
    except (ValueError, UnicodeDecodeError) as exc:
        raise StudioError(f"the request body is not valid JSON ({exc})",
                          "send a JSON object with Content-Type: application/json") from None
    if not isinstance(body, dict):
        raise StudioError("the request body must be a JSON object", 'send {"model": ..., ...}')
    return body


async def _forward(request: Request, endpoint: str, key):
    client = _client(request)
    body = await _json_body(request)
    gen = client.stream(endpoint, body, owner_key_id=principal_id(key))
    try:
        first = await gen.__anext__()
        headers = {}
        if "studio_model_version" in first:
            headers = {META_HEADERS[k]: v for k, v in first.items() if k in META_HEADERS}
            first = await gen.__anext__()
    except BaseException:
        await gen.aclose()
        raise
    if isinstance(first, dict):
        await gen.aclose()  # a whole body is the only item: stop now, not at the engine's end
        status = (first.get("error") or {}).get("code") if "error" in first else 200
        if not isinstance(status, int) or not 400 <= status < 600:
            status = 200 if "error" not in first else 500
        if status != 200:
            return error_response(request, status, first["error"].get("message", "error"),
                                  headers=headers)
        return JSONResponse(first, headers=headers)
    return StreamingResponse(_relay(first, gen), media_type="text/event-stream", headers=headers)


async def _relay(first: str, gen):
    try:
        yield first
        async for chunk in gen:
            yield chunk
    finally:
        # Runs when the stream ends and when Starlette stops it because the client went away.
        await gen.aclose()
