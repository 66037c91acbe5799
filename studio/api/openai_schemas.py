"""What the OpenAI-compatible surfaces (``/v1``, ``/gateway/v1``) answer, for the OpenAPI document:
the pinned ``openai`` SDK's own response models (the bodies are the engine's or the provider's,
relayed as they come: they are documented here, not re-validated), server-sent events when
``stream`` is true, and OpenAI's error shape."""

from __future__ import annotations

from typing import Any, Literal

from openai.types import Completion, Model
from openai.types.chat import ChatCompletion
from pydantic import BaseModel, Field


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Model]


class ErrorDetail(BaseModel):
    message: str = Field(description="What went wrong, and the fix (after `Fix:`) where there is one.")
    type: str = Field(description="invalid_request_error, authentication_error, permission_error, "
                      "not_found_error, rate_limit_error, service_unavailable, ...")
    param: str | None = None
    code: int | str | None = Field(default=None, description="The HTTP status.")


class ErrorBody(BaseModel):
    error: ErrorDetail


_SSE = {"text/event-stream": {"schema": {
    "type": "string", "description": "With `stream: true`: `data: <chunk JSON>` events "
    "(`chat.completion.chunk` / `text_completion`), then `data: [DONE]`."}}}
_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": why} for status, why in (
        (400, "A field is not allowed, malformed or over a cap (the message names it)."),
        (401, "No key, or an invalid or revoked one."),
        (404, "The model is not served (see GET /models)."),
        (413, "The body is larger than STUDIO_MAX_BODY_MB."),
        (429, "A rate, token or budget limit of the key is used up (Retry-After says when)."),
        (503, "No engine can answer now (retry after Retry-After)."))}


def answers(model: type[BaseModel], streams: bool = True) -> dict[int | str, dict[str, Any]]:
    """``responses=`` for a route that answers ``model`` (or server-sent events when asked)."""
    ok: dict[str, Any] = {"model": model, "description": "The answer; the studio adds "
                          "`studio_model_version` (and `x-studio-model-version`) on /v1 and "
                          "`studio_gateway` (cache hit, cost, deployment) on /gateway/v1."}
    if streams:
        ok["content"] = _SSE
    return {200: ok, **_ERRORS}


CHAT = answers(ChatCompletion)
COMPLETION = answers(Completion)
MODELS = {200: {"model": ModelList}, 401: _ERRORS[401]}
