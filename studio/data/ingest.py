"""Ingest files or directories into an immutable, content-addressed snapshot.

Sources: JSONL / JSON / CSV / Parquet files, Hugging Face ``datasets`` saved to disk, and documents
(plain text, Markdown, HTML, PDF → one ``document`` row per file), from a file, a directory or an
fsspec URL. Rows stream through: each bad row (or unreadable file of a directory) is reported with
its file, row number and reason and kept in the version's rejected-rows artifact; the good rows are
kept. The snapshot id is the SHA-256 of the kind and the normalized rows, so ingesting the same
content twice returns the same snapshot (and the same version of its name).

Large inputs (``STUDIO_DATA_RAY_MIN_BYTES``), or any input when this process is already connected
to Ray, are read with Ray Data (``studio.data.ray_read``); small ones stream in-process.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from studio.data.kinds import COLUMNS, SCHEMAS, DatasetKind, RowError, detect_kind, normalize_row  # noqa: F401
from studio.data.readers import FORMATS, MAX_ROW_BYTES, READERS
from studio.data.sources import (DOCUMENT_FORMATS, SourceFile, check_allowed, check_path_syntax,
                                 check_text_file, document_text, is_directory, is_hf_dataset_dir,
                                 list_files, local_copy, read_hf_dataset)
from studio.data.writer import Owner, SnapshotWriter, check_owner
from studio.errors import StudioError
from studio.settings import StudioSettings

__all__ = ["FORMATS", "MAX_REPORTED", "MAX_ROW_BYTES", "IngestReport", "RejectedRow", "content_id",
           "ingest_file", "ingest_path"]

MAX_REPORTED = 1000  # rejected rows kept in the report; the count is always exact (all are stored)
DETECT_ROWS = 1000  # rows that vote on the kind when it is not given
ALL_FORMATS = {**FORMATS, **{s: "document" for s in DOCUMENT_FORMATS}}
_SCHEMAS = SCHEMAS  # kept for importers of the old name


@dataclass
class RejectedRow:
    row: int  # 0: the whole file
    reason: str
    file: str | None = None  # relative to the ingested directory; None for a single file


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
    rejected_uri: str | None = None  # every rejected row (Parquet): `studio data show --dropped`
    engine: str = "python"  # "ray" when Ray Data read the input


Record = tuple[str | None, int, Any]  # (file label, row number, row dict | RowError)


def content_id(kind: DatasetKind, rows: list[dict[str, Any]]) -> str:
    h = hashlib.sha256(f"studio-dataset-v1\n{kind.value}\n".encode())
    for row in rows:
        h.update(json.dumps(row, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode())
        h.update(b"\n")
    return h.hexdigest()


def _check_name(name: str) -> None:
    if not name or "@" in name or "/" in name:
        raise StudioError(f"dataset name {name!r} is not allowed", "use letters, digits, '-', '_' and '.'")


def _check_kind(kind: DatasetKind | str | None) -> DatasetKind | None:
    if kind is None:
        return None
    try:
        return DatasetKind(kind)
    except ValueError:
        raise StudioError(f"unknown dataset kind {kind!r}",
                          f"use one of {', '.join(k.value for k in DatasetKind)}") from None


def _format_of(name: str) -> str | None:
    return ALL_FORMATS.get(Path(name).suffix.lower())


def ingest_file(
    path: str | Path,
    name: str,
    settings: StudioSettings,
    *,
    kind: DatasetKind | str | None = None,
    column_map: dict[str, str] | None = None,
    source: str | None = None,
    owner: Owner = None,
) -> IngestReport:
    """Ingest one local file. ``source`` is what the version records as its origin (default: the
    file's absolute path); ``owner`` the calling key (or the submitter's key id) that must own
    ``name`` or may claim it (None: the operator, in-process). No allowed-roots check: callers
    pass trusted paths (use ``ingest_path`` for user-given ones)."""
    path = Path(path).expanduser()
    _check_name(name)
    check_owner(settings, [name], owner)
    if not path.is_file():
        raise StudioError(f"dataset file {path} does not exist", "check the path")
    fmt = _format_of(path.name)
    if fmt is None:
        raise StudioError(f"cannot tell the format of {path.name} from its extension",
                          f"use one of {', '.join(sorted(ALL_FORMATS))}")
    if path.stat().st_size == 0:
        raise StudioError(f"{path} is empty; there is nothing to ingest", "pass a file with rows")
    files = [SourceFile(path.name, str(path), path.stat().st_size, False)]
    return _ingest(files, name, settings, kind=_check_kind(kind), column_map=column_map,
                   source=source or str(path.resolve()), single=True, use_ray=False, owner=owner)


def ingest_path(
    source: str,
    name: str,
    settings: StudioSettings,
    *,
    kind: DatasetKind | str | None = None,
    column_map: dict[str, str] | None = None,
    use_ray: bool | None = None,
    owner: Owner = None,
    check_roots: bool = True,
) -> IngestReport:
    """Ingest a file, a directory (every file under it) or an fsspec URL of either, after checking
    it lies under the allowed roots. ``use_ray``: None decides by size (see module doc).
    ``check_roots=False`` is for the operator in-process (the CLI on its own machine), who may
    read any file it can: relative paths are then taken from the working directory."""
    _check_name(name)
    kind = _check_kind(kind)
    if check_roots:
        where = check_allowed(str(source), settings, "source")
    else:
        where = check_path_syntax(str(source), "source")
        where = where if "://" in where else str(Path(where).expanduser().resolve())
    check_owner(settings, [name], owner)
    if is_hf_dataset_dir(where):
        return _ingest_hf(where, name, settings, kind, column_map, owner)
    files = list_files(where)
    if check_roots:  # a link inside an allowed folder may point anywhere
        for f in files:
            if not f.remote:
                check_allowed(f.path, settings, "source file")
    single = not is_directory(where)
    if single and files[0].size == 0:
        raise StudioError(f"{where} is empty; there is nothing to ingest", "pass a file with rows")
    if single and _format_of(files[0].label) is None:
        raise StudioError(f"cannot tell the format of {files[0].label} from its extension",
                          f"use one of {', '.join(sorted(ALL_FORMATS))}")
    if use_ray is None:
        use_ray = _ray_connected() or sum(f.size for f in files) >= settings.data_ray_min_bytes
    return _ingest(files, name, settings, kind=kind, column_map=column_map, source=where,
                   single=single, use_ray=use_ray, owner=owner)


def _ray_connected() -> bool:
    import sys

    return "ray" in sys.modules and sys.modules["ray"].is_initialized()


def _ingest_hf(where: str, name: str, settings: StudioSettings, kind: DatasetKind | None,
               column_map: dict[str, str] | None, owner: Owner) -> IngestReport:
    return _consume(read_hf_dataset(where), name, settings, kind, column_map, where, where, "python",
                    owner)


def _file_records(f: SourceFile, single: bool) -> Iterator[Record]:
    label = None if single else f.label
    fmt = _format_of(f.label)
    if f.hf:  # a `save_to_disk` folder inside the directory: rows labelled folder[split]
        try:
            yield from read_hf_dataset(f.path, label=f.label)
        except StudioError as e:
            yield label, 0, RowError(e.problem + (f"; {e.fix}" if e.fix else ""))
        return
    try:
        if fmt is None:
            raise StudioError(f"unknown format (extension {Path(f.label).suffix or 'none'})",
                              f"use one of {', '.join(sorted(ALL_FORMATS))}")
        if f.size == 0:
            raise StudioError("the file is empty", "remove it or fill it")
        with local_copy(f) as path:
            if fmt == "document":
                try:
                    yield label, 1, {"source": f.label, "text": document_text(
                        path, DOCUMENT_FORMATS[Path(f.label).suffix.lower()])}
                except RowError as e:
                    yield label, 1, e
                return
            if fmt in ("jsonl", "json", "csv"):
                check_text_file(path, fmt.upper() if fmt == "csv" else fmt.upper())
            for rowno, row in READERS[fmt](path):
                yield label, rowno, row
    except StudioError as e:
        if single:
            raise
        yield label, 0, RowError(e.problem + (f"; {e.fix}" if e.fix else ""))


def _ingest(files: list[SourceFile], name: str, settings: StudioSettings, *, kind: DatasetKind | None,
            column_map: dict[str, str] | None, source: str, single: bool, use_ray: bool,
            owner: Owner) -> IngestReport:
    if use_ray:
        from studio.data.ray_read import ray_records

        records: Iterator[Record] = ray_records(files, settings, single, _file_records)
    else:
        records = (r for f in files for r in _file_records(f, single))
    shown = files[0].label if single else source
    return _consume(records, name, settings, kind, column_map, source, shown,
                    "ray" if use_ray else "python", owner)


def _consume(records: Iterator[Record], name: str, settings: StudioSettings, kind: DatasetKind | None,
             column_map: dict[str, str] | None, source: str, shown: str, engine: str,
             owner: Owner = None) -> IngestReport:
    # column_map {"completion": "answer"}: the file's column ``answer`` becomes ``completion``.
    rename = {src: dst for dst, src in (column_map or {}).items()}
    rejected: list[RejectedRow] = []
    head: list[Record] = []  # rows held back until the kind is known
    writer: SnapshotWriter | None = None
    n_rejected = 0

    def reject(label: str | None, rowno: int, reason: str, data: Any = None) -> None:
        nonlocal n_rejected
        n_rejected += 1
        if len(rejected) < MAX_REPORTED:
            rejected.append(RejectedRow(rowno, reason, label))
        writer.drop(rowno, reason, file=label, data=data)

    def take(rec: Record) -> None:
        label, rowno, row = rec
        if isinstance(row, RowError):
            reject(label, rowno, str(row))
        elif not isinstance(row, dict):
            reject(label, rowno, f"a row must be a JSON object, got {type(row).__name__}", row)
        else:
            try:
                writer.add(normalize_row(row, kind))
            except RowError as e:
                reject(label, rowno, str(e), row)

    def rows() -> Iterator[Record]:
        for label, rowno, row in records:
            if rename and isinstance(row, dict):
                row = {rename.get(c, c): v for c, v in row.items()}
            yield label, rowno, row

    it = rows()
    try:
        if kind is None:
            parsed = 0
            for rec in it:
                head.append(rec)
                parsed += isinstance(rec[2], dict)
                if parsed >= DETECT_ROWS:
                    break
            kind = _vote(head, shown)
        writer = SnapshotWriter(kind)
        for rec in head:
            take(rec)
        head = []
        for rec in it:
            take(rec)
        if writer.row_count == 0 and n_rejected == 0:
            raise StudioError(f"{shown} holds no rows, only blank lines", "pass a file with rows")
        if writer.row_count == 0:
            raise _no_valid_rows(kind.value, shown, rejected, n_rejected)
        done = writer.commit(settings, name, source, owner)
    finally:
        if writer is not None:
            writer.discard()
    return IngestReport(done.snapshot_id, name, done.version, kind.value, done.row_count, n_rejected,
                        rejected, created=done.created, uri=done.uri, rejected_uri=done.rejected_uri,
                        engine=engine)


def _vote(head: list[Record], shown: str) -> DatasetKind:
    parsed = [r for _, _, r in head if isinstance(r, dict)]
    if not parsed:
        errors = [RejectedRow(n, str(r), label) for label, n, r in head]
        if not errors:
            raise StudioError(f"{shown} holds no rows, only blank lines", "pass a file with rows")
        kinds = ""
        raise _no_valid_rows(kinds, shown, errors, len(errors))
    votes = Counter(detect_kind(r) for r in parsed)
    votes.pop(None, None)
    if not votes:
        seen = sorted({c for r in parsed[:100] for c in r})
        raise StudioError(
            f"cannot tell what kind of rows {shown} holds (columns: {', '.join(seen) or 'none'})",
            "rows need messages | prompt+completion | prompt+chosen+rejected | text; "
            "rename columns with --map completion=answer or pass --kind",
        )
    return votes.most_common(1)[0][0]


def _no_valid_rows(kind: str, shown: str, rejected: list[RejectedRow], total: int) -> StudioError:
    listed = "; ".join(f"{r.file + ' ' if r.file else ''}row {r.row}: {r.reason}" for r in rejected[:5])
    return StudioError(
        f"no valid {kind + ' ' if kind else ''}rows in {Path(shown).name or shown} ({total} rejected: {listed})",
        "fix the rows named above; nothing was stored",
    )

