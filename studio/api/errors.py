"""Error bodies: ``application/problem+json`` (RFC 9457) on /api/*, OpenAI's shape on /v1/*."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from studio.errors import StudioError

_OPENAI_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                 404: "not_found_error", 409: "conflict_error", 422: "invalid_request_error",
                 429: "rate_limit_error", 503: "service_unavailable"}


def error_response(request: Request, status: int, detail: str, fix: str | None = None,
                   headers: dict[str, str] | None = None, extra: dict[str, Any] | None = None) -> JSONResponse:
    if request.url.path.startswith(("/v1/", "/gateway/v1/")):  # the OpenAI-shaped surfaces
        body = {"error": {"message": detail + (f" Fix: {fix}" if fix else ""),
                          "type": _OPENAI_TYPES.get(status, "server_error"), "param": None, "code": status}}
        return JSONResponse(body, status_code=status, headers=headers)
    body: dict[str, Any] = {"type": "about:blank", "title": _title(status), "status": status, "detail": detail}
    if fix:
        body["fix"] = fix
    body.update(extra or {})
    return JSONResponse(body, status_code=status, headers=headers, media_type="application/problem+json")


def _title(status: int) -> str:
    from http import HTTPStatus

    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(StudioError)
    async def _studio_error(request: Request, exc: StudioError):
        return error_response(request, exc.status_code, exc.problem, exc.fix)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        return error_response(request, exc.status_code, str(exc.detail), headers=getattr(exc, "headers", None))

    # Starlette hands this to its outermost middleware, which still re-raises so the server logs
    # the traceback; the client gets the contract's error shape instead of a bare text 500.
    @app.exception_handler(Exception)
    async def _unexpected_error(request: Request, exc: Exception):
        return error_response(request, 500, f"internal error ({type(exc).__name__})",
                              "see the server log; report it if it persists")

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError):
        errors = [{"field": ".".join(str(p) for p in e["loc"] if p != "body"), "message": e["msg"]}
                  for e in exc.errors()]
        detail = "; ".join(f"{e['field'] or '(body)'}: {e['message']}" for e in errors)
        return error_response(request, 422, f"invalid request: {detail}",
                              "correct the fields named", extra={"errors": errors})
