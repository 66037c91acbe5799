"""/v1/batches: OpenAI's Batch API (``studio.batches``). Create (the input file is checked; a job
of kind ``batch`` is queued), retrieve, list (``after``/``limit``), cancel. A batch is its
creator's: other non-admin keys get 404 (docs/security.md)."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.responses import Response

from studio.api.deps import KeyDep, SessionDep, SettingsDep
from studio.batches import (BatchCreate, BatchList, BatchObject, cancel_batch, create_batch, get_batch,
                            list_batches, view)
from studio.errors import StudioError


class _BadRequestRoute(APIRoute):
    """A body that does not validate is a 400 naming every field, as OpenAI answers (not 422)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            try:
                return await handler(request)
            except RequestValidationError as e:
                parts = [f"{'.'.join(str(p) for p in err['loc'] if p != 'body') or '(body)'}: "
                         f"{err['msg']}" for err in e.errors()]
                raise StudioError(f"invalid batch request: {'; '.join(parts)}",
                                  "send {input_file_id, endpoint, completion_window: '24h', "
                                  "metadata?}") from None

        return route


router = APIRouter(prefix="/v1", tags=["batches"], route_class=_BadRequestRoute)


@router.post("/batches")
def post_batch(body: BatchCreate, key: KeyDep, session: SessionDep, settings: SettingsDep) -> BatchObject:
    """Create a batch from an uploaded file (purpose=batch). The file is refused (400) when it is
    not UTF-8 JSONL, empty, or over STUDIO_BATCH_MAX_LINES lines; each bad line becomes an
    error-file entry when the batch runs."""
    batch = create_batch(session, settings, key, body, submitted_by=key.name)
    return view(session, batch)


@router.get("/batches")
def get_batches(key: KeyDep, session: SessionDep,
                after: Annotated[str | None, Query(max_length=64, description="The last id of the "
                                                   "previous page.")] = None,
                limit: Annotated[int, Query(ge=1, le=100, description="Batches per page.")] = 20) -> BatchList:
    """Your batches (an admin: all), newest first."""
    rows, more = list_batches(session, key, after, limit)
    data = [view(session, b) for b in rows]
    return BatchList(data=data, first_id=data[0].id if data else None,
                     last_id=data[-1].id if data else None, has_more=more)


@router.get("/batches/{batch_id}")
def get_one(batch_id: str, key: KeyDep, session: SessionDep) -> BatchObject:
    return view(session, get_batch(session, key, batch_id))


@router.post("/batches/{batch_id}/cancel")
def post_cancel(batch_id: str, key: KeyDep, session: SessionDep, settings: SettingsDep) -> BatchObject:
    """``cancelling`` while it runs (lines in flight finish, then ``cancelled`` with the partial
    output); ``cancelled`` at once when nothing runs it. An ended batch: 409."""
    batch = cancel_batch(session, settings, key, batch_id, by=key.name)
    return view(session, batch)
