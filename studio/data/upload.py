"""Stream a multipart dataset upload into the artifact store, enforcing a size limit as it goes.

Starlette's form parsing would spool the whole body to a temporary file before the route sees it;
here the body is parsed chunk by chunk (``python_multipart``'s push parser): small form fields are
kept in memory (64 KiB each at most), the file part is written straight to
``uploads/<uuid>/<filename>`` in the artifact store, and the request fails with 413 the moment the
file passes the limit — nothing beyond one chunk is held. The declared part content type must
fit the file's extension, and the first bytes are sniffed so a binary file named ``.csv`` is
refused with its reason.

Caps: one file part (named ``file``), at most ``MAX_FIELDS`` other form fields of
``MAX_FIELD_BYTES`` each; a malformed body (bad boundary, truncated before its closing
boundary) is a 400, and whatever the upload wrote is removed however it ends — an error, a
client that disconnects mid-body, a cancelled request.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import PurePath
from typing import Any

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header

from studio.errors import StudioError
from studio.store.artifacts import ArtifactStore

MAX_FIELD_BYTES = 64 * 1024
MAX_FIELDS = 8  # name, kind, column_map and room for clients that send a few more
GENERIC = {"application/octet-stream", ""}
# Content types a client may declare per extension (browsers and curl vary); others are refused.
CONTENT_TYPES = {
    ".jsonl": {"application/jsonl", "application/x-ndjson", "application/json", "text/plain",
               "application/jsonlines", "application/x-jsonlines"},
    ".ndjson": {"application/x-ndjson", "application/json", "text/plain"},
    ".json": {"application/json", "text/plain"},
    ".csv": {"text/csv", "application/csv", "text/plain", "application/vnd.ms-excel"},
    ".parquet": {"application/vnd.apache.parquet", "application/x-parquet"},
    ".txt": {"text/plain"}, ".text": {"text/plain"},
    ".md": {"text/markdown", "text/x-markdown", "text/plain"},
    ".markdown": {"text/markdown", "text/x-markdown", "text/plain"},
    ".html": {"text/html"}, ".htm": {"text/html"},
    ".pdf": {"application/pdf"},
}
TEXT_SUFFIXES = {".jsonl", ".ndjson", ".json", ".csv", ".txt", ".text", ".md", ".markdown", ".html", ".htm"}


class TooLarge(StudioError):
    status_code = 413


@dataclass
class Upload:
    fields: dict[str, str] = field(default_factory=dict)
    filename: str | None = None
    key: str | None = None  # artifact key of the stored file
    size: int = 0


async def receive_upload(stream: AsyncIterator[bytes], content_type: str, store: ArtifactStore,
                         max_bytes: int, allowed_suffixes: set[str]) -> Upload:
    """Parse the multipart body from ``stream``; the one file part goes to the store."""
    ctype, params = parse_options_header(content_type or "")
    if ctype != b"multipart/form-data" or b"boundary" not in params:
        raise StudioError(f"expected a multipart/form-data upload, got {content_type or 'no content type'!r}",
                          "send the file as a form field 'file' (curl -F file=@data.jsonl -F name=...)",
                          status_code=415)
    up = Upload()
    state: dict[str, Any] = {"headers": {}, "hf": b"", "hv": b"", "out": None, "name": None,
                             "value": b"", "head": b"", "fields": 0, "ended": False}
    errors: list[StudioError] = []

    def on_header_field(data: bytes, start: int, end: int) -> None:
        state["hf"] += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        state["hv"] += data[start:end]

    def on_header_end() -> None:
        state["headers"][state["hf"].decode("latin-1").lower()] = state["hv"].decode("latin-1")
        state["hf"] = state["hv"] = b""

    def on_headers_finished() -> None:
        _, disp = parse_options_header(state["headers"].get("content-disposition", ""))
        name = disp.get(b"name", b"").decode("utf-8", "replace")
        filename = disp.get(b"filename")
        state["name"], state["value"] = name, b""
        if filename is not None and name != "file":
            raise StudioError(f"the upload has a file in form field {name!r}",
                              "send one file, as form field 'file'")
        if filename is None:
            state["fields"] += 1
            if state["fields"] > MAX_FIELDS:
                raise StudioError(f"the upload has more than {MAX_FIELDS} form fields",
                                  "send file, name and optionally kind and column_map")
        if filename is not None and name == "file":
            if up.key is not None:
                raise StudioError("more than one file in the upload", "send one file per request")
            fname = PurePath(filename.decode("utf-8", "replace").replace("\\", "/")).name.replace("\x00", "")
            suffix = PurePath(fname).suffix.lower()
            if suffix not in allowed_suffixes:
                raise StudioError(f"cannot tell the format of {fname!r}",
                                  f"upload one of {', '.join(sorted(allowed_suffixes))}")
            declared = state["headers"].get("content-type", "").split(";")[0].strip().lower()
            if declared not in GENERIC and declared not in CONTENT_TYPES.get(suffix, set()):
                raise StudioError(f"{fname} is sent as {declared!r}, which is not a {suffix} file",
                                  "send it with its own content type or application/octet-stream",
                                  status_code=415)
            up.filename = fname if len(fname.encode()) <= 200 else f"upload{suffix}"
            up.key = f"uploads/{uuid.uuid4().hex}/{up.filename}"
            dest = store.path(up.key)
            store.fs.makedirs(os.path.dirname(dest), exist_ok=True)
            state["out"] = store.fs.open(dest, "wb")

    def on_part_data(data: bytes, start: int, end: int) -> None:
        chunk = data[start:end]
        if state["out"] is not None:
            if up.size < 8192 and up.filename and PurePath(up.filename).suffix.lower() in TEXT_SUFFIXES:
                state["head"] += chunk[: 8192 - up.size]
                if b"\x00" in state["head"]:
                    raise StudioError(f"{up.filename} claims to be {PurePath(up.filename).suffix} text but "
                                      "holds binary data (NUL bytes)", "upload the real file")
            up.size += len(chunk)
            if up.size > max_bytes:
                raise TooLarge(f"upload is over the limit of {max_bytes} bytes",
                               "split the file, or raise STUDIO_UPLOAD_MAX_BYTES")
            state["out"].write(chunk)
        else:
            state["value"] += chunk
            if len(state["value"]) > MAX_FIELD_BYTES:
                raise StudioError(f"form field {state['name']!r} is over {MAX_FIELD_BYTES} bytes",
                                  "send the data as the 'file' part")

    def on_part_end() -> None:
        if state["out"] is not None:
            state["out"].close()
            state["out"] = None
        elif state["name"]:
            up.fields[state["name"]] = state["value"].decode("utf-8", "replace")
        state["headers"], state["head"] = {}, b""

    def on_end() -> None:
        state["ended"] = True

    callbacks = {"on_header_field": on_header_field, "on_header_value": on_header_value,
                 "on_header_end": on_header_end, "on_headers_finished": on_headers_finished,
                 "on_part_data": on_part_data, "on_part_end": on_part_end, "on_end": on_end}
    try:
        parser = MultipartParser(params[b"boundary"], callbacks)  # type: ignore[arg-type]
        async for chunk in stream:
            parser.write(chunk)
        parser.finalize()
        if not state["ended"]:
            raise StudioError("the multipart body ended before its closing boundary (truncated, or "
                              "a boundary other than the one in the Content-Type)",
                              "send the whole form again (curl -F file=@data.jsonl -F name=...)")
    except StudioError as e:
        errors.append(e)
    except FormParserError as e:  # the parser's ValueErrors: a malformed body, not a server fault
        errors.append(StudioError(f"malformed multipart body: {str(e)[:200]}",
                                  "send a well-formed multipart/form-data body (curl -F ...)"))
    except BaseException:  # the client went away (or the request was cancelled) mid-body
        _close(state)
        discard(store, up)
        raise
    finally:
        _close(state)
    if errors:
        discard(store, up)
        raise errors[0]
    if up.key is None:
        raise StudioError("the upload holds no file part", "send the file as form field 'file'")
    if up.size == 0:
        discard(store, up)
        raise StudioError(f"{up.filename} is empty; there is nothing to ingest", "upload a file with rows")
    return up


def _close(state: dict[str, Any]) -> None:
    if state["out"] is not None:
        state["out"].close()
        state["out"] = None


def discard(store: ArtifactStore, up: Upload) -> None:
    """Remove the upload's folder (``uploads/<uuid>``) with whatever it holds."""
    if up.key:
        folder = os.path.dirname(up.key)
        if store.exists(folder):
            store.fs.rm(store.path(folder), recursive=True)
