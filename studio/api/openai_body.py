"""The typed request body of the OpenAI-shaped routes (``/v1``, ``/gateway/v1``): FastAPI
validates it against ``studio.gateway.request`` (so the OpenAPI shows the schema), and this
route class turns a failed validation into the one 400 that names every field not accepted and
why, instead of the app's generic 422 per field."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.responses import Response

from studio.gateway.request import invalid_request


class OpenAIBodyRoute(APIRoute):
    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        endpoint = "chat" if self.path.endswith("/chat/completions") else "completions"

        async def route(request: Request) -> Response:
            try:
                return await handler(request)
            except RequestValidationError as e:
                raise invalid_request(list(e.errors()), endpoint) from None

        return route
