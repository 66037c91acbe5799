"""/gateway/v1/*: the gateway's OpenAI-compatible surface (usable with the ``openai`` client,
``base_url=<studio>/gateway/v1``). Thin: authenticate the studio key, read the caller's tags
(``x-studio-service``, ``x-studio-job-id``, ``x-studio-job-concurrency``) and hand
``(body, ctx)`` to the Gateway deployment (``app.state.gateway``), which answers
``(status, body, headers)``; ``stream: true`` (studio-served models) is relayed as SSE."""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse

from studio.api.deps import KeyDep
from studio.errors import StudioError, Unavailable
from studio.store.models import ApiKey

router = APIRouter(prefix="/gateway/v1", tags=["gateway"])


def _gateway(request: Request):
    handle = getattr(request.app.state, "gateway", None)
    if handle is None:
        raise Unavailable("the gateway is not deployed",
                          "enable it in the serve config (gateway: {enabled: true}) and run "
                          "`studio up` again")
    return handle


def call_context(key: ApiKey, request: Request) -> dict[str, Any]:
    concurrency = request.headers.get("x-studio-job-concurrency")
    try:
        concurrency = int(concurrency) if concurrency else None
        if concurrency is not None and concurrency < 1:
            raise ValueError
    except ValueError:
        raise StudioError(f"x-studio-job-concurrency must be a positive integer, got "
                          f"{concurrency!r}", "send a positive integer or leave the header "
                          "out") from None
    return {"key_id": key.id, "key_name": key.name, "rpm": key.rpm_limit, "tpm": key.tpm_limit,
            "budget_usd": key.budget_usd,
            "service": request.headers.get("x-studio-service") or "api",
            "job_id": request.headers.get("x-studio-job-id"), "job_concurrency": concurrency}


@router.get("/models")
async def list_models(_: KeyDep, request: Request) -> dict[str, Any]:
    return await _gateway(request).models.remote()


@router.post("/chat/completions")
async def chat_completions(key: KeyDep, request: Request):
    return await _forward(request, key, "chat")


@router.post("/completions")
async def completions(key: KeyDep, request: Request):
    return await _forward(request, key, "completions")


async def _forward(request: Request, key: ApiKey, endpoint: str) -> JSONResponse:
    handle = _gateway(request)
    try:
        body = json.loads(await request.body())
    except (ValueError, UnicodeDecodeError) as exc:
        raise StudioError(f"the request body is not valid JSON ({exc})",
                          "send a JSON object with Content-Type: application/json") from None
    ctx = call_context(key, request)
    if isinstance(body, dict) and body.get("stream"):
        return await _stream(handle, endpoint, body, ctx)
    status, out, headers = await getattr(handle, endpoint).remote(body, ctx)
    return JSONResponse(out, status_code=status, headers=headers)


async def _stream(handle, endpoint: str, body: dict[str, Any], ctx: dict[str, Any]):
    """SSE relayed from the Gateway's ``<endpoint>_stream``; its first item is (status, error,
    headers). A client that leaves cancels the gateway call, which cancels the engine request."""
    gen = getattr(handle.options(stream=True), f"{endpoint}_stream").remote(body, ctx)
    try:
        status, error, headers = await gen.__anext__()
    except BaseException:
        gen.cancel()
        raise
    if status != 200:
        gen.cancel()
        return JSONResponse(error, status_code=status, headers=headers)

    async def relay():
        try:
            async for chunk in gen:
                yield chunk
        finally:
            gen.cancel()

    return StreamingResponse(relay(), media_type="text/event-stream", headers=headers)
