"""/v1/files: OpenAI's Files API for batch inputs and outputs (``studio.batches.files``). Upload
(multipart: ``file``, ``purpose=batch``), list, retrieve, content, delete. A file is its
uploader's: other non-admin keys get 404 (docs/security.md)."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse

from studio.api.deps import KeyDep, SessionDep, SettingsDep
from studio.batches.files import (MAX_LIST, adopt_upload, check_purpose, delete_file, get_file,
                                  iter_bytes, list_files, owner_of)
from studio.batches.views import FileDeleted, FileList, FileObject
from studio.data.upload import TooLarge, discard, receive_upload
from studio.errors import NotFound
from studio.settings import StudioSettings
from studio.store.artifacts import ArtifactStore
from studio.store.db import session_scope
from studio.store.models import ApiKey

router = APIRouter(prefix="/v1", tags=["files"])
# The input is checked line by line when a batch is created; any name is taken (the openai SDK
# sends bytes without one as "upload").
SUFFIXES = {".jsonl", ".ndjson", ".json", ".txt", ""}
_UPLOAD_DOC = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["file", "purpose"], "properties": {
        "file": {"type": "string", "format": "binary",
                 "description": "JSONL: one request per line (docs/batch.md)."},
        "purpose": {"type": "string", "enum": ["batch"]}}}}}}}


def _store(settings: StudioSettings) -> ArtifactStore:
    return ArtifactStore(settings.artifacts)


@router.post("/files", openapi_extra=_UPLOAD_DOC)
async def upload_file(request: Request, key: KeyDep, settings: SettingsDep) -> FileObject:
    """Upload a batch input (multipart ``file`` and ``purpose=batch``), at most
    STUDIO_BATCH_FILE_MAX_BYTES; it streams into the artifact store."""
    store = _store(settings)
    try:
        up = await receive_upload(request.stream(), request.headers.get("content-type", ""), store,
                                  settings.batch_file_max_bytes, SUFFIXES)
    except TooLarge as e:
        raise TooLarge(f"{e.problem} (STUDIO_BATCH_FILE_MAX_BYTES)",
                       "split the requests into several files, or an admin raises "
                       "STUDIO_BATCH_FILE_MAX_BYTES") from None
    try:
        purpose = check_purpose(up.fields.get("purpose"))
        row = await run_in_threadpool(_adopt, settings, store, up.key, up.filename or "upload",
                                      up.size, purpose, key)
    finally:
        discard(store, up)
    return row


def _adopt(settings: StudioSettings, store: ArtifactStore, upload_key: str, filename: str,
           size: int, purpose: str, key: ApiKey) -> FileObject:
    with session_scope(settings.db_url) as s:
        return FileObject.of(adopt_upload(s, store, upload_key, filename, size, purpose, owner_of(key)))


@router.get("/files")
def get_files(key: KeyDep, session: SessionDep,
              purpose: Annotated[str | None, Query(max_length=32, description="Only this purpose.")] = None,
              limit: Annotated[int, Query(ge=1, le=MAX_LIST, description="Files per page.")] = MAX_LIST,
              order: Annotated[Literal["asc", "desc"], Query(description="By creation.")] = "desc",
              after: Annotated[str | None, Query(max_length=64, description="The last id of the "
                                                 "previous page.")] = None) -> FileList:
    """Your files (an admin: all), newest first."""
    rows, more = list_files(session, key, purpose=purpose, after=after, limit=limit, order=order)
    data = [FileObject.of(r) for r in rows]
    return FileList(data=data, first_id=data[0].id if data else None,
                    last_id=data[-1].id if data else None, has_more=more)


@router.get("/files/{file_id}")
def get_one(file_id: str, key: KeyDep, session: SessionDep) -> FileObject:
    return FileObject.of(get_file(session, key, file_id))


@router.get("/files/{file_id}/content", response_class=StreamingResponse, responses={200: {
    "content": {"application/jsonl": {}}, "description": "The file's bytes."}})
def get_content(file_id: str, key: KeyDep, session: SessionDep, settings: SettingsDep) -> StreamingResponse:
    """The file's bytes (a batch's output and error files: JSONL, one line per request)."""
    row = get_file(session, key, file_id)
    store = _store(settings)
    if not store.exists(row.key):
        raise NotFound(f"the bytes of file {file_id} are missing from the artifact store",
                       "upload it again (an admin checks STUDIO_ARTIFACTS_URI)")
    # A header is latin-1: the name as ASCII, without quotes.
    name = row.filename.encode("ascii", "replace").decode().replace('"', "_").replace("?", "_")
    return StreamingResponse(iter_bytes(store, row), media_type="application/jsonl",
                             headers={"Content-Disposition": f'attachment; filename="{name}"',
                                      "Content-Length": str(row.size_bytes)})


@router.delete("/files/{file_id}")
def delete_one(file_id: str, key: KeyDep, session: SessionDep, settings: SettingsDep) -> FileDeleted:
    """Delete a file and its bytes (409 while an unfinished batch reads it)."""
    delete_file(session, _store(settings), key, file_id)
    return FileDeleted(id=file_id)
