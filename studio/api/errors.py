"""Error bodies: ``application/problem+json`` (RFC 9457) on /api/*, OpenAI's shape on /v1/*."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from python_multipart.exceptions import MultipartParseError
from ray.serve.exceptions import BackPressureError
from sqlalchemy import exc as sa_exc
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.formparsers import MultiPartException

from studio.errors import StudioError

log = logging.getLogger(__name__)
# Seconds a client should wait before retrying a 503 (the database or a Serve handle was away).
RETRY_AFTER_S = 5
# The database is away or busy: the connection failed, dropped, or the pool or lock wait ran out.
_DB_UNAVAILABLE = (sa_exc.OperationalError, sa_exc.InterfaceError)

_OPENAI_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                 404: "not_found_error", 409: "conflict_error", 413: "invalid_request_error",
                 422: "invalid_request_error",
                 429: "rate_limit_error", 503: "service_unavailable"}


def error_response(request: Request, status: int, detail: str, fix: str | None = None,
                   headers: dict[str, str] | None = None, extra: dict[str, Any] | None = None,
                   param: str | None = None) -> JSONResponse:
    """``param``: on the OpenAI surfaces, the request field at fault (OpenAI's ``error.param``)."""
    if request.url.path.startswith(("/v1/", "/gateway/v1/")):  # the OpenAI-shaped surfaces
        body = {"error": {"message": detail + (f" Fix: {fix}" if fix else ""),
                          "type": _OPENAI_TYPES.get(status, "server_error"), "param": param,
                          "code": status}}
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


def _db_unavailable(request: Request, exc: Exception) -> JSONResponse:
    log.warning("database unavailable on %s %s: %s", request.method, request.url.path, exc)
    return error_response(request, 503, f"the database is unavailable ({type(exc).__name__})",
                          f"retry in {RETRY_AFTER_S} s; if it persists, an admin checks the "
                          "database server that STUDIO_DATABASE_URL names",
                          headers={"Retry-After": str(RETRY_AFTER_S)})


def _internal_error(request: Request, exc: Exception) -> JSONResponse:
    return error_response(request, 500, f"internal error ({type(exc).__name__})",
                          "see the server log; report it if it persists")


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(StudioError)
    async def _studio_error(request: Request, exc: StudioError):
        headers = {"Retry-After": str(RETRY_AFTER_S)} if exc.status_code == 503 else None
        return error_response(request, exc.status_code, exc.problem, exc.fix, headers=headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        return error_response(request, exc.status_code, str(exc.detail), getattr(exc, "fix", None),
                              headers=getattr(exc, "headers", None))

    # Bad input must never look like a server fault; these are raised below the routes.
    @app.exception_handler(sa_exc.DBAPIError)
    async def _database_error(request: Request, exc: sa_exc.DBAPIError):
        if isinstance(exc, sa_exc.DataError):  # PostgreSQL: a number or text that does not fit
            return error_response(request, 422, "a value in the request does not fit the database "
                                  "(a number out of range?)", "send ids and counts below 2**63")
        if isinstance(exc, _DB_UNAVAILABLE):
            return _db_unavailable(request, exc)
        log.error("database error on %s %s", request.method, request.url.path, exc_info=exc)
        return _internal_error(request, exc)

    @app.exception_handler(sa_exc.TimeoutError)
    async def _pool_timeout(request: Request, exc: sa_exc.TimeoutError):
        return _db_unavailable(request, exc)

    @app.exception_handler(BackPressureError)
    async def _queue_full(request: Request, exc: BackPressureError):
        # A deployment behind the ingress (max_queued_requests) is full: busy, not broken.
        return error_response(request, 503, "the serving queue is full", f"retry in {RETRY_AFTER_S} s",
                              headers={"Retry-After": str(RETRY_AFTER_S)})

    @app.exception_handler(OverflowError)
    async def _overflow(request: Request, exc: OverflowError):
        # SQLite's driver raises this binding an int past 64 bits (an id of 20 digits).
        return error_response(request, 422, f"a number in the request is out of range ({exc})",
                              "send ids and counts below 2**63")

    @app.exception_handler(MultipartParseError)
    @app.exception_handler(MultiPartException)
    async def _bad_multipart(request: Request, exc: Exception):
        return error_response(request, 400, f"malformed multipart body: {exc}",
                              "send multipart/form-data with a boundary, as curl -F does")

    # Starlette hands this to its outermost middleware, which still re-raises so the server logs
    # the traceback; the client gets the contract's error shape instead of a bare text 500.
    @app.exception_handler(Exception)
    async def _unexpected_error(request: Request, exc: Exception):
        return _internal_error(request, exc)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError):
        errors = [{"field": ".".join(str(p) for p in e["loc"] if p != "body"), "message": e["msg"]}
                  for e in exc.errors()]
        detail = "; ".join(f"{e['field'] or '(body)'}: {e['message']}" for e in errors)
        return error_response(request, 422, f"invalid request: {detail}",
                              "correct the fields named", extra={"errors": errors})
