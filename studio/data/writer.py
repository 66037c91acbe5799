"""Write normalized rows into a content-addressed snapshot without holding them all in memory.

Every producer of a snapshot (file ingest, curation, splits, synthesis, preference export) goes
through :class:`SnapshotWriter`: rows stream into a local Parquet file in batches while their hash
and stats accumulate; ``commit`` uploads the file under its id and records the snapshot, the
dropped rows (each with its reason) and, optionally, a new version of a dataset name.

A snapshot id is ``sha256(kind, rows)`` for an ingest, and ``sha256(kind, parent, transform,
params, rows)`` for a derived snapshot, so re-running a transform on the same input with the same
parameters gives the same id, and two transforms that happen to keep the same rows stay apart.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import tempfile
import time
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from sqlalchemy.orm import Session

from studio.access import Forbidden, claim_name, is_admin, name_owner, principal_id
from studio.data.kinds import COLUMNS, SCHEMAS, DatasetKind, row_text
from studio.errors import Conflict
from studio.settings import StudioSettings
from studio.store.artifacts import ArtifactStore
from studio.store.db import session_scope
from studio.store.models import ApiKey, DatasetSnapshot, DatasetVersion

# Who adds a version: the calling key, the submitter's key id (a job or service acting for it),
# or None for the operator in-process (CLI, demo), who acts as an admin and records no owner.
Owner = ApiKey | int | None

BATCH_ROWS = 8192
_STORE_ATTEMPTS = 16
DROPPED_SCHEMA = pa.schema([("row", pa.int64()), ("file", pa.string()), ("step", pa.string()),
                            ("reason", pa.string()), ("data", pa.string())])


# One encoder for every row: json.dumps with options builds a new encoder per call.
_ROW_ENCODER = json.JSONEncoder(sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)


def row_json(row: Any) -> str:
    return _ROW_ENCODER.encode(row)


@dataclass
class Lineage:
    """Where a derived snapshot came from: parent snapshot id, transform name and parameters."""

    parent_id: str | None
    transform: str
    params: dict[str, Any]


@dataclass
class Committed:
    snapshot_id: str
    uri: str
    row_count: int
    dropped_count: int
    version: int | None
    created: bool  # False when the name's newest version already pointed at this content
    rejected_uri: str | None = None


class _ParquetSpool:
    """A local Parquet file written batch by batch (a spool before the artifact store)."""

    def __init__(self, schema: pa.Schema, prefix: str):
        fd, self.path = tempfile.mkstemp(prefix=prefix, suffix=".parquet")
        os.close(fd)
        self.schema = schema
        self.writer = pq.ParquetWriter(self.path, schema)
        self.buf: list[dict[str, Any]] = []
        self.count = 0

    def add(self, row: dict[str, Any]) -> None:
        self.buf.append(row)
        self.count += 1
        if len(self.buf) >= BATCH_ROWS:
            self.flush()

    def flush(self) -> None:
        if self.buf:
            self.writer.write_table(pa.Table.from_pylist(self.buf, schema=self.schema))
            self.buf = []

    def close(self) -> None:
        self.flush()
        self.writer.close()

    def discard(self) -> None:
        try:
            self.writer.close()
        finally:
            if os.path.exists(self.path):
                os.unlink(self.path)


class SnapshotWriter:
    """``add`` good rows (already normalized to ``kind``), ``drop`` bad ones with a reason,
    then ``commit``. Use as a context manager so temp files go away on errors."""

    def __init__(self, kind: DatasetKind | str, lineage: Lineage | None = None):
        self.kind = DatasetKind(kind)
        self.lineage = lineage
        h = hashlib.sha256(f"studio-dataset-v1\n{self.kind.value}\n".encode())
        if lineage is not None:
            h.update(f"lineage\n{lineage.parent_id}\n{lineage.transform}\n"
                     f"{row_json(lineage.params)}\n".encode())
        self._hash = h
        self._rows = _ParquetSpool(SCHEMAS[self.kind], "studio-snap-")
        self._dropped: _ParquetSpool | None = None
        self._stats = _Stats(self.kind)

    @property
    def row_count(self) -> int:
        return self._rows.count

    @property
    def dropped_count(self) -> int:
        return self._dropped.count if self._dropped else 0

    def add(self, row: dict[str, Any]) -> None:
        self._hash.update(row_json(row).encode())
        self._hash.update(b"\n")
        self._rows.add(row)
        self._stats.add(row)

    def drop(self, row: int, reason: str, *, step: str = "", file: str | None = None,
             data: Any = None) -> None:
        if self._dropped is None:
            self._dropped = _ParquetSpool(DROPPED_SCHEMA, "studio-dropped-")
        self._dropped.add({"row": row, "file": file, "step": step, "reason": reason[:4000],
                           "data": None if data is None else row_json(data)[:100_000]})

    def __enter__(self) -> SnapshotWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.discard()

    def discard(self) -> None:
        for spool in (self._rows, self._dropped):
            if spool is not None:
                spool.discard()

    def commit(self, settings: StudioSettings, name: str | None, source: str,
               owner: Owner = None) -> Committed:
        """Upload and record the snapshot; with ``name``, add a version unless the newest version
        of that name is already this snapshot. For an ingest (no lineage) the dropped rows are the
        version's rejected rows; for a transform they belong to the snapshot. ``owner`` must own
        ``name`` (or claims it when new); refused before anything is uploaded."""
        if name is not None:
            check_owner(settings, [name], owner)
        self._rows.close()
        if self._dropped is not None:
            self._dropped.close()
        snap_id = self._hash.hexdigest()
        store = ArtifactStore(settings.artifacts)
        key = f"datasets/{snap_id}/data.parquet"
        if not store.exists(key):
            _upload(store, self._rows.path, key)
        uri = store.uri(key)
        dropped_uri = None
        if self._dropped is not None:
            # Rejects of an ingest depend on the file, not only the kept content: key them by source.
            tag = ("dropped" if self.lineage else
                   "rejected-" + hashlib.sha256(f"{source}\n{self._dropped.count}".encode()).hexdigest()[:16])
            dropped_uri = _upload(store, self._dropped.path, f"datasets/{snap_id}/{tag}.parquet")
        for _attempt in range(_STORE_ATTEMPTS):
            try:
                return self._record(settings, snap_id, uri, dropped_uri, name, source, owner)
            except IntegrityError:
                # Writers of one name (or one content) at once: each loser retries.
                time.sleep(random.uniform(0.0, 0.05))
        raise Conflict(f"could not add a version of dataset {name!r}: {_STORE_ATTEMPTS} attempts lost "
                       "the race to other writers of the same name", "run it again")

    def _record(self, settings: StudioSettings, snap_id: str, uri: str, dropped_uri: str | None,
                name: str | None, source: str, owner: Owner) -> Committed:
        derived = self.lineage is not None
        with session_scope(settings.db_url) as s:
            snap = s.get(DatasetSnapshot, snap_id)
            if snap is None:
                snap = DatasetSnapshot(
                    id=snap_id, kind=self.kind.value, row_count=self.row_count,
                    columns=list(COLUMNS[self.kind]), uri=uri, stats=self._stats.result(),
                    parent_id=self.lineage.parent_id if derived else None,
                    transform=self.lineage.transform if derived else None,
                    params=self.lineage.params if derived else None,
                    dropped_count=self.dropped_count if derived else 0,
                    dropped_uri=dropped_uri if derived else None)
                s.add(snap)
                s.flush()
            out = Committed(snap_id, uri, self.row_count, self.dropped_count, None, True,
                            None if derived else dropped_uri)
            if name is None:
                return out
            owner_id = _claim(s, name, owner)
            latest = s.scalars(select(DatasetVersion).where(DatasetVersion.name == name)
                               .order_by(DatasetVersion.version.desc()).limit(1)).first()
            if latest is not None and latest.snapshot_id == snap_id:
                out.version, out.created = latest.version, False
                return out
            version = (s.scalar(select(func.max(DatasetVersion.version))
                                .where(DatasetVersion.name == name)) or 0) + 1
            s.add(DatasetVersion(name=name, version=version, snapshot_id=snap_id, source=source[:1024],
                                 rejected_rows=0 if derived else self.dropped_count,
                                 rejected_uri=None if derived else dropped_uri, owner_key_id=owner_id))
            out.version = version
            return out


def check_owner(settings: StudioSettings, names: list[str], owner: Owner) -> None:
    """Refuse (403) before any work unless ``owner`` may add versions to every name in ``names``."""
    if owner is None:
        return
    with session_scope(settings.db_url) as s:
        for name in names:
            _may_add(s, name, owner)


def _may_add(s: Session, name: str, owner: ApiKey | int) -> int:
    if isinstance(owner, int):  # a job adds as its submitter: an admin's job may add anywhere
        owner = s.get(ApiKey, owner) or owner
    key_id = owner if isinstance(owner, int) else principal_id(owner)
    admin = not isinstance(owner, int) and is_admin(owner)
    if not isinstance(owner, int) and owner.role == "service":
        raise Forbidden(f"key {owner.name!r} has role 'service', which calls models only",
                        "use a user key to add datasets")
    current = name_owner(s, "dataset", name)
    if current is None and not admin and s.scalar(
            select(DatasetVersion.id).where(DatasetVersion.name == name).limit(1)) is not None:
        # Versions made before names had owners, or by the operator in-process.
        raise Forbidden(f"dataset name {name!r} has no owner key; only an admin adds versions to it",
                        "choose another name, or ask an admin")
    if current is not None and current != key_id and not admin:
        raise Forbidden(f"dataset name {name!r} belongs to another key",
                        "choose another name, or ask its owner or an admin to add to it")
    return key_id


def _claim(s: Session, name: str, owner: Owner) -> int | None:
    """The owner id to record on the new version; a name nobody owns becomes the caller's."""
    if owner is None:
        return None
    key_id = _may_add(s, name, owner)
    if name_owner(s, "dataset", name) is None:
        claim_name(s, "dataset", name, owner)
    return key_id


def _upload(store: ArtifactStore, local: str, key: str) -> str:
    dest = store.path(key)
    store.fs.makedirs(os.path.dirname(dest), exist_ok=True)
    if store.protocol == "file":
        tmp = f"{dest}.tmp-{os.getpid()}-{random.getrandbits(40):x}"
        with open(local, "rb") as src, open(tmp, "wb") as out:
            while chunk := src.read(2**20):
                out.write(chunk)
        os.replace(tmp, dest)
    else:
        store.fs.put_file(local, dest)
    return store.uri(key)


class _Stats:
    """The snapshot's ``stats`` JSON, accumulated row by row (same keys as before streaming)."""

    def __init__(self, kind: DatasetKind):
        self.kind = kind
        self.rows = 0
        self.turns = 0
        self.sums = {c: 0 for c in COLUMNS[kind]}
        self.maxes = {c: 0 for c in COLUMNS[kind]}

    def add(self, row: dict[str, Any]) -> None:
        self.rows += 1
        if self.kind is DatasetKind.chat:
            n = sum(len(m["content"]) for m in row["messages"])
            self.turns += len(row["messages"])
            self.sums["messages"] += n
            self.maxes["messages"] = max(self.maxes["messages"], n)
            return
        for col in self.sums:
            n = len(row[col])
            self.sums[col] += n
            self.maxes[col] = max(self.maxes[col], n)

    def result(self) -> dict[str, Any]:
        stats: dict[str, Any] = {"rows": self.rows}
        if not self.rows:
            return stats
        if self.kind is DatasetKind.chat:
            stats["avg_turns"] = round(self.turns / self.rows, 2)
        for col in self.sums:
            stats[f"avg_chars_{col}"] = round(self.sums[col] / self.rows, 1)
            stats[f"max_chars_{col}"] = self.maxes[col]
        return stats


__all__ = ["Committed", "Lineage", "Owner", "SnapshotWriter", "check_owner", "row_json", "row_text"]
