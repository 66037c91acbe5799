"""Prometheus metrics of the studio's HTTP API: requests, latency and errors by route and status.

A pure ASGI middleware: it reads the status from the response's start message and times the
request until the app has sent the whole response (a stream: until its last chunk), so a
``/v1`` stream costs it one comparison per chunk and nothing else. ``route`` is the path template
the request matched (``/api/jobs/{job_id}``, ``/ui/static/{path}`` for the UI's files), never the raw path,
so clients cannot mint label values; a path that matched no route counts as ``(unmatched)``.

The series live in the process's default registry (``/metrics`` prints it first): each ApiIngress
replica counts what it answered.
"""

from __future__ import annotations

import time

from prometheus_client import Counter, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

UNMATCHED = "(unmatched)"
_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)

REQUESTS = Counter("studio_http_requests", "HTTP requests answered, by route template, method and "
                   "status (errors: status 4xx/5xx).", ["route", "method", "status"])
LATENCY = Histogram("studio_http_request_duration_seconds", "HTTP request until its response was "
                    "sent whole (streams: their last chunk), by route template and method.",
                    ["route", "method"], buckets=_SECONDS)


def route_of(scope: Scope) -> str:
    route = scope.get("route")  # set by the router on the scope it was given (mounts too)
    path = getattr(route, "path_format", None) or getattr(route, "path", None)
    return path or UNMATCHED


class HttpMetricsMiddleware:
    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = [500]  # an app that raised before it answered

        async def send_status(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route, method = route_of(scope), scope.get("method", "")
            REQUESTS.labels(route, method, str(status[0])).inc()
            LATENCY.labels(route, method).observe(time.perf_counter() - start)
