"""/v1/*: the OpenAI-compatible endpoint. Thin: authenticate, validate the body against the one
request model (``studio.gateway.request``: unknown fields and caps are a 400), apply the key's
rpm / tpm / budget (429 with Retry-After), hand the fields to the
Router (``app.state.router``) through ``deployments.router_client.RouterClient``, which asks the Router
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
from studio.api.errors import RETRY_AFTER_S, error_response
from studio.api.openai_body import OpenAIBodyRoute
from studio.api.openai_schemas import CHAT, COMPLETION, MODELS
from studio.errors import NotFound, StudioError, Unavailable
from studio.gateway.limits import KeyLimits, Limiter, RateLimited, SpentCache, stream_tokens
from studio.gateway.request import ChatCompletionRequest, CompletionRequest, RequestCaps, check_caps
from studio.store.models import ApiKey

router = APIRouter(prefix="/v1", tags=["openai"], route_class=OpenAIBodyRoute)
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
    """The app's RouterClient, handed in by the Serve ingress with the Router's handle."""
    client = getattr(request.app.state, "router_client", None)
    if client is None:
        _router(request)  # 503: no models served
        raise Unavailable("this API process has a Router but no router client",
                          "set app.state.router_client (deployments/ingress.py does)")
    return client


@router.get("/models", responses=MODELS, response_model=None)
async def list_models(_: KeyDep, request: Request) -> dict[str, Any]:
    return await _router(request).models.remote()


def _limiter(request: Request) -> tuple[Limiter, SpentCache]:
    """One per app. Counters in Redis when STUDIO_REDIS_URL is set (shared by ingress replicas),
    else in this process; apart from the gateway's: each surface holds a key to its limits."""
    limits = getattr(request.app.state, "v1_limits", None)
    if limits is None:
        from studio.gateway.store import KVStore

        settings = request.app.state.settings
        limits = request.app.state.v1_limits = (Limiter(KVStore(settings.redis_url, "studio:v1")),
                                                SpentCache(settings.db_url))
    return limits


async def _admit(request: Request, key: ApiKey) -> KeyLimits | None:
    """The key's limits once this request is counted (None: the key has none, and nothing was
    read or counted); RateLimited when one is used up."""
    limits = KeyLimits.of(key)
    if not limits.any:
        return None
    limiter, spent = _limiter(request)
    spent_usd = await spent.spent_usd(key.id) if limits.budget_usd is not None else None
    await limiter.admit(limits, spent_usd)
    return limits


@router.post("/chat/completions", responses=CHAT)
async def chat_completions(key: KeyDep, request: Request, body: ChatCompletionRequest):
    return await _forward(request, "chat", key, body)


@router.post("/completions", responses=COMPLETION)
async def completions(key: KeyDep, request: Request, body: CompletionRequest):
    return await _forward(request, "completions", key, body)


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


async def _forward(request: Request, endpoint: str, key: ApiKey,
                   req: ChatCompletionRequest | CompletionRequest):
    check_caps(req, RequestCaps.of(request.app.state.settings))
    try:
        limits = await _admit(request, key)
    except RateLimited as e:
        return error_response(request, 429, e.problem, e.fix,
                              headers={"Retry-After": str(e.retry_after_s)})
    client = _client(request)
    body = req.fields()
    counted = limits is not None and limits.tpm is not None
    if counted and body.get("stream"):  # the tokens of a stream are in its last chunk
        body["stream_options"] = {**body.get("stream_options", {}), "include_usage": True}
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
            if status == 503:  # a model coming back, or a replica gone: worth retrying soon
                headers = {**headers, "Retry-After": str(RETRY_AFTER_S)}
            param = first["error"].get("param")  # the engine names the field at fault
            return error_response(request, status, first["error"].get("message", "error"),
                                  headers=headers, param=param if isinstance(param, str) else None)
        if counted:
            usage = first.get("usage") or {}
            await _limiter(request)[0].count_tokens(limits, int(usage.get("total_tokens") or 0))
        return JSONResponse(first, headers=headers)
    count = (lambda n: _limiter(request)[0].count_tokens(limits, n)) if counted else None
    return StreamingResponse(_relay(first, gen, count), media_type="text/event-stream",
                             headers=headers)


async def _relay(first: str, gen, count=None):
    """The stream; ``count`` (the key has a TPM limit) gets the tokens of its usage chunk."""
    try:
        chunk = first
        while True:
            if count is not None and '"usage"' in chunk:
                await count(stream_tokens(chunk))
            yield chunk
            chunk = await gen.__anext__()
    except StopAsyncIteration:
        pass
    finally:
        # Runs when the stream ends and when Starlette stops it because the client went away.
        await gen.aclose()
