"""The Files API's objects: a row in ``files`` (who owns it, its name, purpose and size) and its
bytes in the artifact store at ``files/<id>``.

A file belongs to the key that uploaded it (a job key's files to its submitter); every other
non-admin key is told it does not exist (404), as OpenAI answers for another organization's file.
``key=None`` is the operator's CLI on the server, which sees every file. Uploads are batch inputs
(purpose ``batch``); a batch writes its output and error files with purpose ``batch_output``.
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Iterator

from sqlalchemy import select
from sqlalchemy.orm import Session

from studio.access import owns, principal_id
from studio.batches.state import TERMINAL, effective_status
from studio.errors import Conflict, NotFound, StudioError
from studio.store.artifacts import ArtifactStore, storage_errors
from studio.store.models import ApiKey, Batch, StoredFile

UPLOAD_PURPOSES = ("batch",)
OUTPUT_PURPOSE = "batch_output"
MAX_LIST = 10_000  # files per page, as OpenAI
_CHUNK = 1024 * 1024


def new_id(prefix: str) -> str:
    """``prefix`` + the time in ms (12 hex digits) + 12 random ones: ids sort by creation, so a
    list's ``after`` cursor is an id comparison."""
    return f"{prefix}{int(time.time() * 1000):012x}{secrets.token_hex(6)}"


def file_key(file_id: str) -> str:
    return f"files/{file_id}"


def owner_of(key: ApiKey | None) -> int | None:
    return principal_id(key) if key is not None else None


def check_purpose(purpose: str | None) -> str:
    if not purpose:
        raise StudioError("the upload has no `purpose` form field", "send purpose=batch with the file")
    if purpose not in UPLOAD_PURPOSES:
        raise StudioError(f"purpose {purpose!r} is not supported here: the studio's Files API holds "
                          "batch inputs", "upload with purpose=batch (fine-tuning data goes to "
                          "POST /api/datasets)")
    return purpose


def add_file(session: Session, store: ArtifactStore, data: bytes, filename: str, purpose: str,
             owner_key_id: int | None) -> StoredFile:
    """Store ``data`` as a new file (a CLI upload, a batch's output or error file)."""
    row = StoredFile(id=new_id("file-"), purpose=purpose, filename=filename[:256],
                     size_bytes=len(data), owner_key_id=owner_key_id, key="")
    row.key = file_key(row.id)
    store.put_bytes(row.key, data)
    session.add(row)
    session.flush()
    return row


def adopt_upload(session: Session, store: ArtifactStore, upload_key: str, filename: str, size: int,
                 purpose: str, owner_key_id: int | None) -> StoredFile:
    """A new file whose bytes an upload streamed to ``upload_key``: moved, not copied."""
    row = StoredFile(id=new_id("file-"), purpose=purpose, filename=filename[:256], size_bytes=size,
                     owner_key_id=owner_key_id, key="")
    row.key = file_key(row.id)
    with storage_errors(store.uri(row.key), "writing"):
        if store.protocol == "file":
            store.fs.makedirs(os.path.dirname(store.path(row.key)), exist_ok=True)
        store.fs.mv(store.path(upload_key), store.path(row.key))
    session.add(row)
    session.flush()
    return row


def get_file(session: Session, key: ApiKey | None, file_id: str) -> StoredFile:
    row = session.get(StoredFile, file_id)
    if row is None or (key is not None and not owns(key, row.owner_key_id)):
        raise NotFound(f"no file {file_id!r}", "list your files with GET /v1/files")
    return row


def list_files(session: Session, key: ApiKey | None, *, purpose: str | None = None,
               after: str | None = None, limit: int = 100, order: str = "desc"
               ) -> tuple[list[StoredFile], bool]:
    """A page of the files ``key`` may see, newest first (``order=asc``: oldest first), after
    the file ``after``; and whether more follow."""
    stmt = select(StoredFile)
    if key is not None and key.role != "admin":
        stmt = stmt.where(StoredFile.owner_key_id == principal_id(key))
    if purpose:
        stmt = stmt.where(StoredFile.purpose == purpose)
    if after:
        stmt = stmt.where(StoredFile.id > after if order == "asc" else StoredFile.id < after)
    stmt = stmt.order_by(StoredFile.id.asc() if order == "asc" else StoredFile.id.desc())
    rows = list(session.scalars(stmt.limit(limit + 1)))
    return rows[:limit], len(rows) > limit


def delete_file(session: Session, store: ArtifactStore, key: ApiKey | None, file_id: str) -> None:
    """Remove the row and the bytes; refused (409) while a batch that has not ended reads it."""
    row = get_file(session, key, file_id)
    for batch in session.scalars(select(Batch).where(Batch.input_file_id == file_id)):
        status = effective_status(session, batch)[0]
        if status not in TERMINAL:
            raise Conflict(f"file {file_id} is the input of batch {batch.id}, which is {status}",
                           f"wait for it to end or cancel it (POST /v1/batches/{batch.id}/cancel)")
    session.delete(row)
    session.flush()
    if store.exists(row.key):
        with storage_errors(store.uri(row.key), "deleting"):
            store.fs.rm(store.path(row.key))


def read_bytes(store: ArtifactStore, row: StoredFile) -> bytes:
    return store.get_bytes(row.key)


def iter_bytes(store: ArtifactStore, row: StoredFile) -> Iterator[bytes]:
    """The content in 1 MiB chunks (a download streams; nothing holds the whole file)."""
    with storage_errors(store.uri(row.key), "reading"), store.fs.open(store.path(row.key), "rb") as f:
        while chunk := f.read(_CHUNK):
            yield chunk
