from __future__ import annotations

import shutil
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, File, Form, Query, UploadFile
from fastapi.concurrency import run_in_threadpool

from studio.api.deps import KeyDep, SessionDep, SettingsDep
from studio.data.ingest import FORMATS, ingest_file
from studio.data.kinds import DatasetKind
from studio.data.snapshots import dataset_versions, list_datasets, load_split, resolve_snapshot
from studio.errors import StudioError

router = APIRouter(prefix="/api/datasets", tags=["datasets"])


@router.get("")
def get_datasets(_: KeyDep, session: SessionDep) -> list[dict]:
    return list_datasets(session)


@router.get("/{name}")
def get_dataset(name: str, _: KeyDep, session: SessionDep) -> dict:
    """All versions of a dataset name, oldest first."""
    return {"name": name, "versions": dataset_versions(session, name)}


@router.get("/{ref}/rows")
def get_rows(ref: str, _: KeyDep, session: SessionDep, split: str = "all",
             validation_ratio: float = 0.0, seed: int = 0,
             limit: Annotated[int, Query(ge=0, description="Rows per page, at most 500.")] = 20,
             offset: Annotated[int, Query(ge=0)] = 0) -> dict:
    """A page of rows of a snapshot (``name``, ``name@N`` or an id), optionally of one split."""
    snap = resolve_snapshot(session, ref).snapshot
    table = load_split(snap.uri, split, validation_ratio, seed)
    limit = max(0, min(limit, 500))
    return {"snapshot_id": snap.id, "total": table.num_rows,
            "rows": table.slice(offset, limit).to_pylist()}


@router.post("", status_code=201)
async def post_dataset(
    _: KeyDep,
    settings: SettingsDep,
    file: Annotated[UploadFile, File(description="JSONL, JSON, CSV or Parquet")],
    name: Annotated[str, Form(description="Dataset name; a new version is added on new content.")],
    kind: Annotated[DatasetKind | None, Form(description="Force the row kind.")] = None,
) -> dict:
    filename = Path(file.filename or "").name.replace("\x00", "")
    suffix = Path(filename).suffix.lower()
    if suffix not in FORMATS:
        raise StudioError(f"cannot tell the format of {file.filename!r}", f"upload one of {', '.join(sorted(FORMATS))}")
    with tempfile.TemporaryDirectory() as tmp:
        # Keep the uploaded name so ingest errors name the user's file, not a temporary one.
        dest = Path(tmp) / (filename if len(filename.encode()) <= 200 else f"upload{suffix}")
        with dest.open("wb") as out:
            shutil.copyfileobj(file.file, out)
        report = await run_in_threadpool(ingest_file, dest, name, settings, kind=kind, source=file.filename)
    out = asdict(report)
    out["source"] = file.filename
    return out
