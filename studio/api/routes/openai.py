"""/v1/*: the OpenAI-compatible endpoint. Thin: authenticate, parse the JSON body, hand it to the
Router deployment (``app.state.router``) and relay its answer — a JSON body or a server-sent-event
stream. Every answer names the concrete version that produced it in ``x-studio-model-version``
(non-streamed bodies also carry ``studio_model_version``). A client that disconnects mid-stream
cancels the router call, which cancels the engine request."""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse

from studio.api.deps import KeyDep
from studio.api.errors import error_response
from studio.errors import StudioError, Unavailable

router = APIRouter(prefix="/v1", tags=["openai"])
VERSION_HEADER = "x-studio-model-version"


def _router(request: Request):
    handle = getattr(request.app.state, "router", None)
    if handle is None:
        raise Unavailable("no models are served",
                          "add a models: section to the serve config (see "
                          "configs/serve/studio_tiny.yaml) and run `studio up` again")
    return handle


@router.get("/models")
async def list_models(_: KeyDep, request: Request) -> dict[str, Any]:
    return await _router(request).models.remote()


@router.post("/chat/completions")
async def chat_completions(_: KeyDep, request: Request):
    return await _forward(request, "chat")


@router.post("/completions")
async def completions(_: KeyDep, request: Request):
    return await _forward(request, "completions")


async def _forward(request: Request, endpoint: str):
    handle = _router(request)
    try:
        body = json.loads(await request.body())
    except (ValueError, UnicodeDecodeError) as exc:
        raise StudioError(f"the request body is not valid JSON ({exc})",
                          "send a JSON object with Content-Type: application/json") from None
    if not isinstance(body, dict):
        raise StudioError("the request body must be a JSON object", 'send {"model": ..., ...}')
    gen = getattr(handle.options(stream=True), endpoint).remote(body)
    try:
        first = await gen.__anext__()
        headers = {}
        if "studio_model_version" in first:
            headers[VERSION_HEADER] = first["studio_model_version"]
            first = await gen.__anext__()
    except BaseException:
        gen.cancel()
        raise
    if isinstance(first, dict):
        gen.cancel()
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
        gen.cancel()
