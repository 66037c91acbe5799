"""Ingest a JSONL / JSON / CSV / Parquet file into an immutable, content-addressed snapshot.

Rows are read one by one; each bad row is reported with its row number and reason and the good
rows are kept. The snapshot id is the SHA-256 of the kind and the normalized rows, so ingesting the
same content twice returns the same snapshot (and the same version of its name).
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import io
import json
import random
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from studio.data.kinds import COLUMNS, DatasetKind, RowError, detect_kind, normalize_row
from studio.errors import Conflict, StudioError
from studio.settings import StudioSettings
from studio.store.artifacts import ArtifactStore
from studio.store.db import session_scope
from studio.store.models import DatasetSnapshot, DatasetVersion

FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
MAX_ROW_BYTES = 8 * 1024 * 1024
MAX_REPORTED = 1000  # rejected rows kept in the report; the count is always exact
_STORE_ATTEMPTS = 16

_SCHEMAS: dict[DatasetKind, pa.Schema] = {
    DatasetKind.chat: pa.schema(
        [("messages", pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())])))]
    ),
    DatasetKind.prompt_completion: pa.schema([("prompt", pa.string()), ("completion", pa.string())]),
    DatasetKind.preference: pa.schema(
        [("prompt", pa.string()), ("chosen", pa.string()), ("rejected", pa.string())]
    ),
    DatasetKind.text: pa.schema([("text", pa.string())]),
}


@dataclass
class RejectedRow:
    row: int
    reason: str


@dataclass
class IngestReport:
    snapshot_id: str
    name: str
    version: int
    kind: str
    row_count: int
    rejected_count: int
    rejected: list[RejectedRow] = field(default_factory=list)
    created: bool = True  # False when the same content was already the newest version of the name
    uri: str = ""


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


_READERS = {"jsonl": _read_jsonl, "json": _read_json, "csv": _read_csv, "parquet": _read_parquet}


def content_id(kind: DatasetKind, rows: list[dict[str, Any]]) -> str:
    h = hashlib.sha256(f"studio-dataset-v1\n{kind.value}\n".encode())
    for row in rows:
        h.update(json.dumps(row, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode())
        h.update(b"\n")
    return h.hexdigest()


def ingest_file(
    path: str | Path,
    name: str,
    settings: StudioSettings,
    *,
    kind: DatasetKind | str | None = None,
    column_map: dict[str, str] | None = None,
    source: str | None = None,
) -> IngestReport:
    """``source`` is what the version records as its origin (default: the file's absolute path)."""
    path = Path(path).expanduser()
    if not name or "@" in name or "/" in name:
        raise StudioError(f"dataset name {name!r} is not allowed", "use letters, digits, '-', '_' and '.'")
    if not path.is_file():
        raise StudioError(f"dataset file {path} does not exist", "check the path")
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise StudioError(
            f"cannot tell the format of {path.name} from its extension",
            f"use one of {', '.join(sorted(FORMATS))}",
        )
    if path.stat().st_size == 0:
        raise StudioError(f"{path} is empty; there is nothing to ingest", "pass a file with rows")
    if kind is not None:
        try:
            kind = DatasetKind(kind)
        except ValueError:
            raise StudioError(
                f"unknown dataset kind {kind!r}", f"use one of {', '.join(k.value for k in DatasetKind)}"
            ) from None

    # column_map {"completion": "answer"}: the file's column ``answer`` becomes ``completion``.
    rename = {src: dst for dst, src in (column_map or {}).items()}
    parsed: list[tuple[int, Any]] = []
    rejected: list[RejectedRow] = []
    for rowno, row in _READERS[fmt](path):
        if isinstance(row, RowError):
            rejected.append(RejectedRow(rowno, str(row)))
            continue
        if not isinstance(row, dict):
            rejected.append(RejectedRow(rowno, f"a row must be a JSON object, got {type(row).__name__}"))
            continue
        if rename:
            row = {rename.get(c, c): v for c, v in row.items()}
        parsed.append((rowno, row))
    if not parsed:
        if not rejected:
            raise StudioError(f"{path} holds no rows, only blank lines", "pass a file with rows")
        raise _no_valid_rows(kind.value if kind else "", path, rejected)

    if kind is None:
        votes = Counter(detect_kind(r) for _, r in parsed)
        votes.pop(None, None)
        if not votes:
            seen = sorted({c for _, r in parsed[:100] for c in r})
            raise StudioError(
                f"cannot tell what kind of rows {path.name} holds (columns: {', '.join(seen) or 'none'})",
                "rows need messages | prompt+completion | prompt+chosen+rejected | text; "
                "rename columns with --map completion=answer or pass --kind",
            )
        kind = votes.most_common(1)[0][0]
    kind = DatasetKind(kind)

    good: list[dict[str, Any]] = []
    for rowno, row in parsed:
        try:
            good.append(normalize_row(row, kind))
        except RowError as e:
            rejected.append(RejectedRow(rowno, str(e)))
    rejected.sort(key=lambda r: r.row)

    if not good:
        raise _no_valid_rows(kind.value, path, rejected)
    return _store_snapshot(good, kind, name, source or str(path.resolve()), rejected, settings)


def _no_valid_rows(kind: str, path: Path, rejected: list[RejectedRow]) -> StudioError:
    shown = "; ".join(f"row {r.row}: {r.reason}" for r in rejected[:5])
    return StudioError(
        f"no valid {kind + ' ' if kind else ''}rows in {path.name} ({len(rejected)} rejected: {shown})",
        "fix the rows named above; nothing was stored",
    )


def _store_snapshot(
    rows: list[dict[str, Any]],
    kind: DatasetKind,
    name: str,
    source: str,
    rejected: list[RejectedRow],
    settings: StudioSettings,
) -> IngestReport:
    snap_id = content_id(kind, rows)
    store = ArtifactStore(settings.artifacts)
    key = f"datasets/{snap_id}/data.parquet"
    if not store.exists(key):
        buf = io.BytesIO()
        pq.write_table(pa.Table.from_pylist(rows, schema=_SCHEMAS[kind]), buf)
        store.put_bytes(key, buf.getvalue())
    uri = store.uri(key)

    # Ingests of one name (or one content) at once: each loser of the race retries, and a later
    # round has one contender fewer, so this many attempts serve that many simultaneous ingests.
    for _attempt in range(_STORE_ATTEMPTS):
        try:
            with session_scope(settings.db_url) as s:
                snap = s.get(DatasetSnapshot, snap_id)
                if snap is None:
                    snap = DatasetSnapshot(
                        id=snap_id,
                        kind=kind.value,
                        row_count=len(rows),
                        columns=list(COLUMNS[kind]),
                        uri=uri,
                        stats=_stats(rows, kind),
                    )
                    s.add(snap)
                    s.flush()
                latest = s.scalars(
                    select(DatasetVersion)
                    .where(DatasetVersion.name == name)
                    .order_by(DatasetVersion.version.desc())
                    .limit(1)
                ).first()
                if latest is not None and latest.snapshot_id == snap_id:
                    return IngestReport(snap_id, name, latest.version, kind.value, len(rows),
                                        len(rejected), rejected[:MAX_REPORTED], created=False, uri=uri)
                version = (s.scalar(select(func.max(DatasetVersion.version)).where(DatasetVersion.name == name)) or 0) + 1
                s.add(DatasetVersion(name=name, version=version, snapshot_id=snap_id, source=source,
                                     rejected_rows=len(rejected)))
            return IngestReport(snap_id, name, version, kind.value, len(rows), len(rejected),
                                rejected[:MAX_REPORTED], created=True, uri=uri)
        except IntegrityError:
            time.sleep(random.uniform(0.0, 0.05))
    raise Conflict(
        f"could not add a version of dataset {name!r}: {_STORE_ATTEMPTS} attempts lost the race "
        "to other ingests of the same name",
        "run the ingest again",
    )


def _stats(rows: list[dict[str, Any]], kind: DatasetKind) -> dict[str, Any]:
    stats: dict[str, Any] = {"rows": len(rows)}
    for col in COLUMNS[kind]:
        if kind is DatasetKind.chat:
            lengths = [sum(len(m["content"]) for m in r["messages"]) for r in rows]
            stats["avg_turns"] = round(sum(len(r["messages"]) for r in rows) / len(rows), 2)
        else:
            lengths = [len(r[col]) for r in rows]
        stats[f"avg_chars_{col}"] = round(sum(lengths) / len(lengths), 1)
        stats[f"max_chars_{col}"] = max(lengths)
    return stats
