"""Read ingest sources with Ray Data, for inputs too large to pay off streaming in one process.

JSONL goes through ``ray.data.read_text`` (one row per line, so a broken line is one rejected row
with its line number instead of a failed read) and Parquet through ``read_parquet``; order is
preserved so row numbers are exact. Documents (one row per file; extraction is the cost), CSV and
JSON arrays keep the in-process readers: Arrow's CSV reader fails a whole file on one malformed row, while the
issue asks for per-row reasons. Normalization and the content hash run where the rows arrive, in
order, so the snapshot id is the same whichever engine read the input.

On a small machine Ray must advertise more logical CPUs than cores, or read tasks wait forever:
a local Ray started here advertises ``settings.ray_num_cpus``; with RAY_ADDRESS (or a running
`studio up`) the existing cluster is joined.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from studio import ray_connection
from studio.data.kinds import RowError
from studio.data.readers import FORMATS, MAX_ROW_BYTES
from studio.data.sources import DOCUMENT_FORMATS, SourceFile
from studio.settings import StudioSettings

Record = tuple[str | None, int, Any]
_RAY_FORMATS = {"jsonl", "parquet"}


def ray_records(files: list[SourceFile], settings: StudioSettings, single: bool,
                fallback: Callable[[SourceFile, bool], Iterator[Record]]) -> Iterator[Record]:
    """Records of every file, in file order; files Ray Data does not read use ``fallback``."""
    import ray

    ray_connection.join_or_start(settings)
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True
    ctx.enable_progress_bars = False
    for f in files:
        fmt = FORMATS.get(Path(f.label).suffix.lower())
        if f.hf or f.size == 0 or (fmt not in _RAY_FORMATS and Path(f.label).suffix.lower() not in DOCUMENT_FORMATS):
            yield from fallback(f, single)
        elif fmt == "jsonl":
            yield from _jsonl(f, single)
        elif fmt == "parquet":
            label = None if single else f.label
            rowno = 0
            for batch in ray.data.read_parquet(f.path).iter_batches(batch_size=4096, batch_format="pyarrow"):
                for row in batch.to_pylist():
                    rowno += 1
                    yield label, rowno, row
        else:
            yield from fallback(f, single)  # documents: one row per file; extraction is the cost


def _jsonl(f: SourceFile, single: bool) -> Iterator[Record]:
    import ray

    label = None if single else f.label
    ds = ray.data.read_text(f.path, drop_empty_lines=False, encoding="utf-8")
    lineno = 0
    for batch in ds.iter_batches(batch_size=8192, batch_format="pyarrow"):
        for line in batch.column("text").to_pylist():
            lineno += 1
            if lineno == 1:
                line = line.removeprefix("\ufeff")
            line = line.strip()
            if not line:
                continue
            if len(line.encode()) > MAX_ROW_BYTES:
                yield label, lineno, RowError(f"line is over the {MAX_ROW_BYTES // 2**20} MiB row limit")
                continue
            try:
                yield label, lineno, json.loads(line)
            except json.JSONDecodeError as e:
                yield label, lineno, RowError(f"broken JSON: {e.msg} at column {e.colno}")
