"""Find, list and read dataset snapshots; split them into train/validation by seed and ratio."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from studio.errors import NotFound, StudioError
from studio.store.artifacts import open_uri
from studio.store.models import DatasetSnapshot, DatasetVersion

SPLITS = ("train", "validation", "all")


@dataclass
class SnapshotRef:
    """What a dataset reference resolved to."""

    snapshot: DatasetSnapshot
    name: str | None
    version: int | None


def resolve_snapshot(session: Session, ref: str) -> SnapshotRef:
    """``ref`` is a name (newest version), ``name@N``, a full snapshot id, or an id prefix (≥ 8)."""
    ref = ref.strip()
    if "@" in ref:
        name, _, v = ref.partition("@")
        if not v.isdigit():
            raise StudioError(f"dataset reference {ref!r}: version must be a number", "write name@3")
        dv = _first(session, select(DatasetVersion).where(DatasetVersion.name == name, DatasetVersion.version == int(v)))
        if dv is None:
            raise NotFound(f"dataset {name!r} has no version {v}", "list versions with `studio data show NAME`")
        return SnapshotRef(dv.snapshot, dv.name, dv.version)
    dv = _first(
        session,
        select(DatasetVersion).where(DatasetVersion.name == ref).order_by(DatasetVersion.version.desc()).limit(1),
    )
    if dv is not None:
        return SnapshotRef(dv.snapshot, dv.name, dv.version)
    if len(ref) >= 8 and all(c in "0123456789abcdef" for c in ref):
        matches = session.scalars(select(DatasetSnapshot).where(DatasetSnapshot.id.startswith(ref)).limit(2)).all()
        if len(matches) == 1:
            return SnapshotRef(matches[0], None, None)
        if len(matches) > 1:
            raise StudioError(f"snapshot id prefix {ref!r} is ambiguous", "give more characters")
    raise NotFound(f"no dataset named {ref!r} and no snapshot with that id", "see `studio data ls`")


def _first(session: Session, stmt):
    return session.scalars(stmt).first()


def list_datasets(session: Session, limit: int | None = None, offset: int = 0) -> list[dict[str, Any]]:
    """One entry per name: its newest version and snapshot; a page of names with ``limit``."""
    newest = (
        select(DatasetVersion.name, func.max(DatasetVersion.version).label("v"))
        .group_by(DatasetVersion.name)
        .subquery()
    )
    rows = session.execute(
        select(DatasetVersion, DatasetSnapshot)
        .join(newest, (DatasetVersion.name == newest.c.name) & (DatasetVersion.version == newest.c.v))
        .join(DatasetSnapshot, DatasetSnapshot.id == DatasetVersion.snapshot_id)
        .order_by(DatasetVersion.name)
        .limit(limit).offset(offset)
    ).all()
    return [version_info(dv, snap) for dv, snap in rows]


def version_info(dv: DatasetVersion, snap: DatasetSnapshot) -> dict[str, Any]:
    return {
        "name": dv.name,
        "version": dv.version,
        "snapshot_id": snap.id,
        "kind": snap.kind,
        "rows": snap.row_count,
        "rejected_rows": dv.rejected_rows,
        "columns": snap.columns,
        "source": dv.source,
        "uri": snap.uri,
        "stats": snap.stats,
        "created_at": dv.created_at.isoformat(),
    }


def dataset_versions(session: Session, name: str, limit: int | None = None,
                     offset: int = 0, newest_first: bool = False) -> list[dict[str, Any]]:
    order = DatasetVersion.version.desc() if newest_first else DatasetVersion.version
    rows = session.execute(
        select(DatasetVersion, DatasetSnapshot)
        .join(DatasetSnapshot, DatasetSnapshot.id == DatasetVersion.snapshot_id)
        .where(DatasetVersion.name == name)
        .order_by(order).limit(limit).offset(offset)
    ).all()
    # An empty page past the end of an existing name is not "no such dataset".
    if not rows and not _first(session, select(DatasetVersion.id).where(DatasetVersion.name == name)):
        raise NotFound(f"no dataset named {name!r}", "see `studio data ls`")
    return [version_info(dv, snap) for dv, snap in rows]


def read_table(uri: str) -> pa.Table:
    try:
        with open_uri(uri, "rb") as f:
            return pq.read_table(f)
    except FileNotFoundError as e:
        raise NotFound(f"snapshot data {uri} is missing from the artifact store", "ingest the file again") from e


def split_indices(n: int, split: str, validation_ratio: float, seed: int) -> list[int]:
    """Deterministic split: a seeded permutation; the first round(n·ratio) rows are validation."""
    if split not in SPLITS:
        raise StudioError(f"unknown split {split!r}", f"use one of {', '.join(SPLITS)}")
    if not 0.0 <= validation_ratio < 1.0:
        raise StudioError(f"validation ratio {validation_ratio} is out of range", "use 0 <= ratio < 1")
    if split == "all":
        return list(range(n))
    order = list(range(n))
    random.Random(seed).shuffle(order)
    n_val = round(n * validation_ratio)
    if validation_ratio > 0 and n_val == 0 and n > 1:
        n_val = 1
    chosen = order[:n_val] if split == "validation" else order[n_val:]
    return sorted(chosen)


def load_split(uri: str, split: str = "all", validation_ratio: float = 0.0, seed: int = 0) -> pa.Table:
    table = read_table(uri)
    if split == "all":
        return table
    return table.take(split_indices(table.num_rows, split, validation_ratio, seed))
