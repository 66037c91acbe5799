"""/gateway/v1/*: the gateway's OpenAI-compatible surface (usable with the ``openai`` client,
``base_url=<studio>/gateway/v1``). Thin: authenticate the studio key, validate the body against
the one request model (``studio.gateway.request``: unknown fields and caps are a 400), read the
caller's tags (``x-studio-service``; ``x-studio-job-id`` and ``x-studio-job-concurrency`` from a
job's key only) and hand ``(fields, ctx)`` to the Gateway deployment (``app.state.gateway``),
which answers ``(status, body, headers)``; ``stream: true`` (studio-served models) is relayed as
SSE."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import anyio
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse

from studio.access import Forbidden, is_admin, is_job_key, principal_id
from studio.api.deps import KeyDep
from studio.api.openai_body import OpenAIBodyRoute
from studio.api.openai_schemas import CHAT, COMPLETION, MODELS
from studio.errors import StudioError, Unavailable
from studio.evals.queue import gateway_models
from studio.gateway.request import ChatCompletionRequest, CompletionRequest, RequestCaps, check_caps
from studio.store.models import ApiKey

router = APIRouter(prefix="/gateway/v1", tags=["gateway"], route_class=OpenAIBodyRoute)
JOB_HEADERS = ("x-studio-job-id", "x-studio-job-concurrency")
# A label in the usage table and its filters: short, and nothing a log or a shell would read.
_LABEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,63}$")


def _gateway(request: Request):
    handle = getattr(request.app.state, "gateway", None)
    if handle is None:
        raise Unavailable("the gateway is not deployed",
                          "enable it in the serve config (gateway: {enabled: true}) and run "
                          "`studio up` again")
    return handle


def served_models(request: Request) -> Callable[[], list[str]]:
    """The model names the Gateway deployment serves, asked over its handle (eval preflight, the
    promotion gate): the ingress holds no key to ask over HTTP. Outside Serve (no handle) the
    names are asked over HTTP, as the CLI does."""
    handle = getattr(request.app.state, "gateway", None)
    if handle is None:
        return gateway_models

    async def ask() -> dict[str, Any]:
        return await handle.models.remote()

    def names() -> list[str]:
        # Sync routes run in a worker thread; the handle's response is awaited on the app's loop.
        try:
            body = anyio.from_thread.run(ask)
        except Exception as e:  # noqa: BLE001 — any failure of the replica is "cannot check"
            raise Unavailable(f"cannot check the model names: the gateway answered {type(e).__name__}: {e}",
                              "check the Gateway deployment (`serve status`), then retry") from e
        return [m["id"] for m in body.get("data", [])]

    return names


def call_context(key: ApiKey, request: Request) -> dict[str, Any]:
    sent = [h for h in JOB_HEADERS if h in request.headers]
    # A job's calls share its concurrency cap and carry its id into the usage table: another
    # key naming a job would spend that job's slots or file its calls under it. Admins run the
    # operator's tools (benchmarks), which tag their calls too.
    if sent and not (is_job_key(key) or is_admin(key)):
        raise Forbidden(f"header {' and '.join(sent)} is accepted only from a job's key; key "
                        f"{key.name!r} is not one", f"drop {' and '.join(sent)} (jobs the "
                        "studio runs get a key of their own that may send it)")
    job_id, service = request.headers.get("x-studio-job-id"), request.headers.get(
        "x-studio-service")
    for name, value in (("x-studio-job-id", job_id), ("x-studio-service", service)):
        if value is not None and not _LABEL.match(value):
            raise StudioError(f"header {name} must be 1-64 letters, digits or ._:/- (starting "
                              "with a letter or digit)", f"send a short label in {name}, or "
                              "leave it out")
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
            "budget_usd": key.budget_usd, "principal_id": principal_id(key),
            "service": service or "api", "job_id": job_id, "job_concurrency": concurrency}


@router.get("/models", responses=MODELS, response_model=None)
async def list_models(_: KeyDep, request: Request) -> dict[str, Any]:
    return await _gateway(request).models.remote()


@router.post("/chat/completions", responses=CHAT)
async def chat_completions(key: KeyDep, request: Request, body: ChatCompletionRequest):
    return await _forward(request, key, "chat", body)


@router.post("/completions", responses=COMPLETION)
async def completions(key: KeyDep, request: Request, body: CompletionRequest):
    return await _forward(request, key, "completions", body)


async def _forward(request: Request, key: ApiKey, endpoint: str,
                   req: ChatCompletionRequest | CompletionRequest) -> JSONResponse:
    check_caps(req, RequestCaps.of(request.app.state.settings))
    ctx = call_context(key, request)
    handle = _gateway(request)
    body = req.fields()  # the gateway validates these again: it is the one that calls out
    if body.get("stream"):
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
