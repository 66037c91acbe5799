"""Per-format row readers for ingest: each yields ``(row_number, row)`` or ``(row_number,
RowError)`` for a row it cannot read, and goes on with the next row. A file that cannot be read at
all raises ``StudioError`` naming the file and the fix."""

from __future__ import annotations

import codecs
import csv
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from studio.data.kinds import RowError
from studio.errors import StudioError

FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
MAX_ROW_BYTES = 8 * 1024 * 1024


def _utf8(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise RowError(
            f"not valid UTF-8 (byte 0x{raw[e.start]:02x} at offset {e.start}); re-encode the file as UTF-8"
        ) from None


def _read_jsonl(path: Path) -> Iterator[tuple[int, Any]]:
    # Read at most a row's worth (+ room for a BOM and '\r\n') so a huge line is never held whole.
    read_size = MAX_ROW_BYTES + 8
    with path.open("rb") as f:
        lineno = 0
        while raw := f.readline(read_size):
            lineno += 1
            size = len(raw)
            over = size == read_size and not raw.endswith(b"\n")
            while over and (more := f.readline(2**20)):  # skip the rest of the line
                size += len(more)
                if more.endswith(b"\n"):
                    break
            if lineno == 1:
                raw = raw.removeprefix(codecs.BOM_UTF8)
            if over or len(raw.rstrip(b"\r\n")) > MAX_ROW_BYTES:
                yield lineno, RowError(
                    f"line is {size / 2**20:.1f} MiB, over the {MAX_ROW_BYTES // 2**20} MiB row limit"
                )
                continue
            try:
                line = _utf8(raw).strip()
            except RowError as e:
                yield lineno, e
                continue
            if not line:
                continue
            try:
                yield lineno, json.loads(line)
            except json.JSONDecodeError as e:
                yield lineno, RowError(f"broken JSON: {e.msg} at column {e.colno}")


def _read_json(path: Path) -> Iterator[tuple[int, Any]]:
    try:
        data = json.loads(_utf8(path.read_bytes().removeprefix(codecs.BOM_UTF8)))
    except (RowError, json.JSONDecodeError) as e:
        raise StudioError(f"{path} is not a JSON document: {e}", "use JSON Lines (.jsonl), one object per line") from e
    if not isinstance(data, list):
        raise StudioError(f"{path} must hold a JSON array of row objects", "or use JSON Lines (.jsonl)")
    yield from enumerate(data, start=1)


def _read_csv(path: Path) -> Iterator[tuple[int, Any]]:
    csv.field_size_limit(MAX_ROW_BYTES)  # the csv module's default, 128 KiB, is below our row limit
    # utf-8-sig: spreadsheet exports start with a BOM that would otherwise join the first column name.
    with path.open("r", encoding="utf-8-sig", errors="surrogateescape", newline="") as f:
        reader = csv.DictReader(f)
        rowno = 0
        while True:
            rowno += 1
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as e:  # the reader goes on with the next row
                reason = (f"a field is over the {MAX_ROW_BYTES // 2**20} MiB row limit"
                          if "field limit" in str(e) else f"not readable as CSV: {e}")
                yield rowno, RowError(reason)
                continue
            values = [v for v in row.values() if isinstance(v, str)]
            if any(_has_surrogate(v) for v in values):
                yield rowno, RowError("not valid UTF-8; re-encode the file as UTF-8")
                continue
            if None in row:
                yield rowno, RowError("has more fields than the header; quote values that hold commas")
                continue
            # Chat rows in CSV carry their message list as a JSON string.
            if isinstance(row.get("messages"), str):
                try:
                    row["messages"] = json.loads(row["messages"])
                except json.JSONDecodeError:
                    yield rowno, RowError("column 'messages' is not a JSON list")
                    continue
            yield rowno, row


def _has_surrogate(s: str) -> bool:
    return any("\udc80" <= ch <= "\udcff" for ch in s)


def _read_parquet(path: Path) -> Iterator[tuple[int, Any]]:
    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as e:
        raise StudioError(f"{path} is not a readable Parquet file: {e}", "check the file") from e
    rowno = 0
    for batch in pf.iter_batches(batch_size=4096):
        for row in batch.to_pylist():
            rowno += 1
            yield rowno, row


READERS = {"jsonl": _read_jsonl, "json": _read_json, "csv": _read_csv, "parquet": _read_parquet}
