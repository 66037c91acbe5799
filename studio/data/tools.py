"""Snapshot tools: stats, samples, diffs, exports, splits and dropped rows.

All take snapshot references (``name``, ``name@N``, an id or id prefix) and read the snapshot's
Parquet from the artifact store; a split materializes train / validation as two new snapshots with
lineage (``split``, seed, ratio), so training can pin either by name.
"""

from __future__ import annotations

import hashlib
import io
import json
import random
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from studio.data.curate import iter_rows
from studio.data.kinds import DatasetKind, row_text
from studio.data.snapshots import read_table, resolve_snapshot, split_indices
from studio.data.tokens import token_counter
from studio.data.writer import Lineage, Owner, SnapshotWriter, check_owner, row_json
from studio.errors import NotFound, StudioError
from studio.settings import StudioSettings
from studio.store.db import session_scope
from studio.store.models import DatasetSnapshot, DatasetVersion

EXPORT_FORMATS = ("jsonl", "parquet", "hf")
# An HF folder is many files: downloads are one file; `datasets.Dataset.from_parquet` reads parquet.
DOWNLOAD_FORMATS = ("jsonl", "parquet")
MEDIA_TYPES = {"jsonl": "application/jsonl", "parquet": "application/vnd.apache.parquet"}


def _snapshot(settings: StudioSettings, ref: str) -> tuple[DatasetSnapshot, str | None]:
    with session_scope(settings.db_url) as s:
        r = resolve_snapshot(s, ref)
        s.expunge(r.snapshot)
        return r.snapshot, r.name


def _histogram(lengths: list[int], bins: int) -> list[dict[str, int]]:
    if not lengths:
        return []
    lo, hi = min(lengths), max(lengths)
    width = max(1, -(-(hi - lo + 1) // bins))
    counts = [0] * bins
    for n in lengths:
        counts[min((n - lo) // width, bins - 1)] += 1
    return [{"from": lo + i * width, "to": lo + (i + 1) * width - 1, "rows": c}
            for i, c in enumerate(counts)]


def snapshot_stats(settings: StudioSettings, ref: str, *, tokenizer: str | None = None,
                   validation_ratio: float = 0.1, seed: int = 0, bins: int = 10) -> dict[str, Any]:
    """Rows and tokens per split (train / validation by ``seed`` and ``validation_ratio``) and a
    histogram of row lengths in tokens (or words without a tokenizer)."""
    snap, _ = _snapshot(settings, ref)
    kind = DatasetKind(snap.kind)
    count, unit = token_counter(tokenizer)
    lengths = [count(row_text(r, kind)) for r in iter_rows(snap.uri)]
    val = set(split_indices(len(lengths), "validation", validation_ratio, seed))
    splits = {"train": {"rows": 0, unit: 0}, "validation": {"rows": 0, unit: 0}}
    for i, n in enumerate(lengths):
        part = splits["validation" if i in val else "train"]
        part["rows"] += 1
        part[unit] += n
    return {"snapshot_id": snap.id, "kind": snap.kind, "rows": len(lengths), "unit": unit,
            unit: sum(lengths), "splits": splits, "validation_ratio": validation_ratio, "seed": seed,
            "length": {"min": min(lengths, default=0), "max": max(lengths, default=0),
                       "mean": round(sum(lengths) / len(lengths), 2) if lengths else 0.0},
            "histogram": _histogram(lengths, bins), "lineage": lineage(snap)}


def lineage(snap: DatasetSnapshot) -> dict[str, Any] | None:
    if snap.transform is None:
        return None
    return {"parent_id": snap.parent_id, "transform": snap.transform, "params": snap.params,
            "dropped": snap.dropped_count}


def sample_rows(settings: StudioSettings, ref: str, n: int = 5, seed: int = 0) -> list[dict[str, Any]]:
    snap, _ = _snapshot(settings, ref)
    table = read_table(snap.uri)
    picked = sorted(random.Random(seed).sample(range(table.num_rows), min(n, table.num_rows)))
    return table.take(picked).to_pylist()


def _diff_key(row: dict[str, Any], kind: str) -> str | None:
    """What makes two rows one row changed: the prompt (prompt/completion, preference) or the
    turns before the last one (chat); text and document rows have none."""
    if kind in (DatasetKind.prompt_completion, DatasetKind.preference):
        return json.dumps(row.get("prompt"), ensure_ascii=False)
    if kind == DatasetKind.chat and row.get("messages"):
        return json.dumps(row["messages"][:-1], ensure_ascii=False, sort_keys=True)
    return None


def diff_snapshots(settings: StudioSettings, a: str, b: str, show: int = 5) -> dict[str, Any]:
    """Rows only in ``a``, only in ``b`` and in both (compared by content, as multisets). Of the
    one-sided rows, a row of ``b`` with the same prompt (chat: the same turns before the last) as a
    row of ``a`` is that row ``changed`` (paired one to one in row order); the others are
    ``removed`` (only in ``a``) and ``added`` (only in ``b``); up to ``show`` examples of each."""
    sa, _ = _snapshot(settings, a)
    sb, _ = _snapshot(settings, b)
    if sa.kind != sb.kind:
        raise StudioError(f"{a} holds {sa.kind} rows and {b} holds {sb.kind} rows", "diff snapshots of one kind")

    def counts(uri: str) -> dict[str, int]:
        out: dict[str, int] = {}
        for r in iter_rows(uri):
            k = hashlib.sha256(row_json(r).encode()).hexdigest()
            out[k] = out.get(k, 0) + 1
        return out

    ca, cb = counts(sa.uri), counts(sb.uri)
    only_a = {k: v - cb.get(k, 0) for k, v in ca.items() if v > cb.get(k, 0)}
    only_b = {k: v - ca.get(k, 0) for k, v in cb.items() if v > ca.get(k, 0)}

    def examples(uri: str, keys: dict[str, int]) -> list[dict[str, Any]]:
        out = []
        for r in iter_rows(uri):
            if len(out) >= show:
                break
            if hashlib.sha256(row_json(r).encode()).hexdigest() in keys:
                out.append(r)
        return out

    def one_sided(uri: str, keys: dict[str, int]) -> Iterator[dict[str, Any]]:
        left = dict(keys)
        for r in iter_rows(uri):
            h = hashlib.sha256(row_json(r).encode()).hexdigest()
            if left.get(h, 0) > 0:
                left[h] -= 1
                yield r

    # a's one-sided rows by key; b's one-sided rows pair with them in order (changed) or are added;
    # a second pass over a's finds the rows each pair replaced, and the removed ones.
    free: dict[str, int] = {}
    for r in one_sided(sa.uri, only_a):
        if (key := _diff_key(r, sa.kind)) is not None:
            free[key] = free.get(key, 0) + 1
    paired: dict[str, int] = {}
    changed: list[dict[str, Any]] = []
    wanted: dict[tuple[str, int], dict[str, Any]] = {}
    added: list[dict[str, Any]] = []
    for r in one_sided(sb.uri, only_b):
        key = _diff_key(r, sb.kind)
        if key is not None and free.get(key, 0) > 0:
            free[key] -= 1
            if len(changed) < show:
                changed.append({"a": None, "b": r})
                wanted[(key, paired.get(key, 0))] = changed[-1]
            paired[key] = paired.get(key, 0) + 1
        elif len(added) < show:
            added.append(r)
    seen: dict[str, int] = {}
    removed: list[dict[str, Any]] = []
    for r in one_sided(sa.uri, only_a):
        key = _diff_key(r, sa.kind)
        i = seen.get(key, 0) if key is not None else 0
        if key is not None and i < paired.get(key, 0):
            seen[key] = i + 1
            if (key, i) in wanted:
                wanted[(key, i)]["a"] = r
        elif len(removed) < show:
            removed.append(r)
    n_a, n_b, n_changed = sum(only_a.values()), sum(only_b.values()), sum(paired.values())
    return {"a": sa.id, "b": sb.id, "rows_a": sa.row_count, "rows_b": sb.row_count,
            "only_a": n_a, "only_b": n_b, "common": sum(min(v, cb.get(k, 0)) for k, v in ca.items()),
            "changed": n_changed, "removed": n_a - n_changed, "added": n_b - n_changed,
            "examples_only_a": examples(sa.uri, only_a), "examples_only_b": examples(sb.uri, only_b),
            "examples_changed": changed, "examples_removed": removed, "examples_added": added}


def export_snapshot(settings: StudioSettings, ref: str, dest: str | Path, fmt: str = "jsonl",
                    split: str = "all", validation_ratio: float = 0.0, seed: int = 0) -> dict[str, Any]:
    """Write a snapshot (or one split) to ``dest``: a .jsonl file, a .parquet file, or a folder
    from ``datasets.Dataset.save_to_disk`` (``hf``)."""
    if fmt not in EXPORT_FORMATS:
        raise StudioError(f"unknown export format {fmt!r}", f"use one of {', '.join(EXPORT_FORMATS)}")
    snap, _, table = _export_table(settings, ref, split, validation_ratio, seed)
    dest = Path(dest).expanduser()
    empty_dir = dest.is_dir() and not any(dest.iterdir())
    if (dest.exists() or dest.is_symlink()) and not (fmt == "hf" and empty_dir):
        raise StudioError(f"{dest} already exists", "pass a new path (exports never overwrite)")
    dest.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "jsonl":
        with dest.open("x", encoding="utf-8") as f:  # "x": never through a link planted meanwhile
            for chunk in _jsonl_chunks(table):
                f.write(chunk.decode())
    elif fmt == "parquet":
        with dest.open("xb") as f:
            pq.write_table(table, f)
    else:
        import datasets

        datasets.Dataset(table).save_to_disk(str(dest))
    return {"snapshot_id": snap.id, "format": fmt, "split": split, "rows": table.num_rows, "path": str(dest)}


def _export_table(settings: StudioSettings, ref: str, split: str, validation_ratio: float,
                  seed: int) -> tuple[DatasetSnapshot, str, pa.Table]:
    """The snapshot, a file name stem for it (``name-v3-train``) and the rows of the split."""
    with session_scope(settings.db_url) as s:
        r = resolve_snapshot(s, ref)
        s.expunge(r.snapshot)
    table = read_table(r.snapshot.uri)
    if split != "all":
        table = table.take(split_indices(table.num_rows, split, validation_ratio, seed))
    stem = f"{r.name}-v{r.version}" if r.name else r.snapshot.id[:12]
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", stem).lstrip(".") + ("" if split == "all" else f"-{split}")
    return r.snapshot, stem, table


def _jsonl_chunks(table: pa.Table) -> Iterator[bytes]:
    for batch in table.to_batches(4096):
        yield "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in batch.to_pylist()).encode()


def export_download(settings: StudioSettings, ref: str, fmt: str = "jsonl", split: str = "all",
                    validation_ratio: float = 0.0, seed: int = 0) -> tuple[str, str, Iterator[bytes]]:
    """A snapshot (or one split) as the bytes of one file, for an HTTP download: (file name,
    media type, chunks). No server path is involved."""
    if fmt not in DOWNLOAD_FORMATS:
        raise StudioError(f"format {fmt!r} cannot be downloaded as one file" if fmt == "hf"
                          else f"unknown export format {fmt!r}",
                          "download parquet (datasets.Dataset.from_parquet reads it) or jsonl")
    _, stem, table = _export_table(settings, ref, split, validation_ratio, seed)
    if fmt == "jsonl":
        return f"{stem}.jsonl", MEDIA_TYPES[fmt], _jsonl_chunks(table)
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return f"{stem}.parquet", MEDIA_TYPES[fmt], iter([buf.getvalue()])


def split_snapshot(settings: StudioSettings, ref: str, validation_ratio: float, seed: int = 0,
                   name: str | None = None, owner: Owner = None) -> dict[str, Any]:
    """Materialize ``name-train`` and ``name-validation`` snapshots (lineage: split, seed, ratio)."""
    snap, snap_name = _snapshot(settings, ref)
    base = name or snap_name
    if not base:
        raise StudioError(f"{ref!r} is a bare snapshot id", "give the splits a base name (--name)")
    if not 0.0 < validation_ratio < 1.0:
        raise StudioError(f"validation ratio {validation_ratio} is out of range", "use 0 < ratio < 1")
    check_owner(settings, [f"{base}-train", f"{base}-validation"], owner)
    table = read_table(snap.uri)
    out = {}
    for split in ("train", "validation"):
        idx = split_indices(table.num_rows, split, validation_ratio, seed)
        params = {"split": split, "validation_ratio": validation_ratio, "seed": seed}
        with SnapshotWriter(snap.kind, Lineage(snap.id, "split", params)) as w:
            for row in table.take(idx).to_pylist():
                w.add(row)
            done = w.commit(settings, f"{base}-{split}", f"split {snap.id[:12]} {split}", owner)
        out[split] = {"snapshot_id": done.snapshot_id, "name": f"{base}-{split}",
                      "version": done.version, "rows": done.row_count}
    return out


def dropped_rows(settings: StudioSettings, ref: str, limit: int = 50, offset: int = 0) -> dict[str, Any]:
    """Rows a transform dropped (or, for an ingested version, rows the ingest rejected)."""
    with session_scope(settings.db_url) as s:
        r = resolve_snapshot(s, ref)
        uri, total = r.snapshot.dropped_uri, r.snapshot.dropped_count
        if r.snapshot.transform is None and r.name is not None:
            dv = s.query(DatasetVersion).filter_by(name=r.name, version=r.version).one()
            uri, total = dv.rejected_uri, dv.rejected_rows
        snap_id = r.snapshot.id
    if total and uri is None:
        raise NotFound(f"{ref} has {total} dropped rows but no record of them (ingested before "
                       "dropped rows were kept)", "ingest the file again")
    rows: list[dict[str, Any]] = []
    if uri:
        table = read_table(uri)
        total = table.num_rows
        rows = table.slice(offset, limit).to_pylist()
        for row in rows:
            row["data"] = json.loads(row["data"]) if row["data"] else None
    return {"snapshot_id": snap_id, "total": total, "rows": rows}

