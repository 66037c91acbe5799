"""The request-body cap: 413 past STUDIO_MAX_BODY_MB (dataset uploads: STUDIO_UPLOAD_MAX_BYTES;
/v1/files uploads: STUDIO_BATCH_FILE_MAX_BYTES).

A pure ASGI middleware, so it counts what is read, not what is declared: a chunked body without a
Content-Length, or one that lies about it, is cut off at the limit as well. A declared length over
the limit is refused before anything is read.
"""

from __future__ import annotations

from fastapi import HTTPException
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from studio.api.errors import error_response

MIB = 1024 * 1024
# The multipart upload holds form fields and boundaries besides the file; the upload route
# refuses a file over its own limit with a message that names the file.
_UPLOAD_SLACK = MIB


class BodyTooLarge(HTTPException):
    """Raised from ``receive`` inside the route; FastAPI re-raises an HTTPException met while
    reading the body, so the app's handlers answer it in the path's error shape."""

    def __init__(self, limit: int, what: str, setting: str):
        super().__init__(413, f"request body is over the limit of {limit} bytes for {what}")
        self.fix = f"send less, or raise {setting} on the server"


def body_limit(scope: Scope, settings) -> tuple[int, str, str]:
    """The cap for this request, what it applies to, and the setting that sets it."""
    if scope.get("method") == "POST" and scope.get("path", "").rstrip("/") == "/api/datasets":
        return settings.upload_max_bytes + _UPLOAD_SLACK, "dataset uploads", "STUDIO_UPLOAD_MAX_BYTES"
    if scope.get("method") == "POST" and scope.get("path", "").rstrip("/") == "/v1/files":
        return settings.batch_file_max_bytes + _UPLOAD_SLACK, "file uploads", "STUDIO_BATCH_FILE_MAX_BYTES"
    return int(settings.max_body_mb * MIB), "request bodies", "STUDIO_MAX_BODY_MB"


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit, what, setting = body_limit(scope, scope["app"].state.settings)
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            return await _refuse(scope, receive, send, BodyTooLarge(limit, what, setting))
        seen = 0
        started = False

        async def counted_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise BodyTooLarge(limit, what, setting)
            return message

        async def tracked_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted_receive, tracked_send)
        except BodyTooLarge as e:  # read outside a route's body parsing (a streaming route)
            if started:
                raise
            await _refuse(scope, receive, send, e)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def _refuse(scope: Scope, receive: Receive, send: Send, e: BodyTooLarge) -> None:
    response = error_response(Request(scope), 413, e.detail, e.fix, headers={"Connection": "close"})
    await response(scope, receive, send)
