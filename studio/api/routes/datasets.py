from __future__ import annotations

import json
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import StreamingResponse
from pydantic import Field

from studio.access import Forbidden, is_admin
from studio.api.deps import KeyDep, SessionDep, SettingsDep
from studio.api.params import Offset
from studio.data import tools
from studio.data.curate import CurateSpec, curate
from studio.data.ingest import ALL_FORMATS, ingest_file, ingest_path
from studio.data.kinds import DatasetKind
from studio.data.snapshots import dataset_versions, list_datasets, load_split, resolve_snapshot
from studio.data.sources import check_allowed, check_tokenizer
from studio.data.upload import TooLarge, discard, receive_upload
from studio.data.writer import check_owner
from studio.errors import StudioError
from studio.recipes import Spec
from studio.settings import StudioSettings
from studio.store.artifacts import ArtifactStore
from studio.store.models import ApiKey

router = APIRouter(prefix="/api/datasets", tags=["datasets"])


@router.get("")
def get_datasets(_: KeyDep, session: SessionDep,
                 limit: Annotated[int | None, Query(ge=1, le=500, description="Names per page.")] = None,
                 offset: Offset = 0) -> list[dict]:
    """Dataset names (each with its newest version) by name; a page of them with ``limit``."""
    return list_datasets(session, limit, offset)


@router.get("/{name}")
def get_dataset(name: str, _: KeyDep, session: SessionDep,
                limit: Annotated[int | None, Query(ge=1, le=500, description="Versions per page.")] = None,
                offset: Offset = 0,
                newest_first: bool = False) -> dict:
    """Versions of a dataset name, oldest first (or newest first); a page of them with ``limit``."""
    return {"name": name, "versions": dataset_versions(session, name, limit, offset, newest_first)}


@router.get("/{ref}/rows")
def get_rows(ref: str, _: KeyDep, session: SessionDep, split: str = "all",
             validation_ratio: float = 0.0, seed: int = 0,
             limit: Annotated[int, Query(ge=0, description="Rows per page, at most 500.")] = 20,
             offset: Offset = 0) -> dict:
    """A page of rows of a snapshot (``name``, ``name@N`` or an id), optionally of one split."""
    snap = resolve_snapshot(session, ref).snapshot
    table = load_split(snap.uri, split, validation_ratio, seed)
    limit = max(0, min(limit, 500))
    return {"snapshot_id": snap.id, "total": table.num_rows,
            "rows": table.slice(offset, limit).to_pylist()}


def _server_paths_are_admin_only(key: ApiKey, what: str, instead: str) -> None:
    if not is_admin(key):
        raise Forbidden(f"{what} names a path on the server, which only an admin key may; key "
                        f"{key.name!r} has role {key.role!r}", instead)


# Dependencies, so a lesser key is refused (403) before its body is validated (422).
async def _ingest_admin(key: KeyDep) -> ApiKey:
    _server_paths_are_admin_only(key, "an ingest from a server path or URL",
                                 "upload the file instead: POST /api/datasets (multipart: file, name), "
                                 "or `studio data ingest FILE` on the studio's machine")
    return key


async def _export_admin(ref: str, key: KeyDep) -> ApiKey:
    _server_paths_are_admin_only(key, "an export to a file", f"download it instead: GET /api/datasets/"
                                 f"{ref}/export?format=jsonl (or parquet), or `studio data export` "
                                 "on the studio's machine")
    return key


@router.get("/{ref}/stats")
async def get_stats(ref: str, key: KeyDep, settings: SettingsDep,
                    tokenizer: Annotated[str | None, Query(description="A model under $STUDIO_HOME/models "
                                                           "(folder name or path) or a hub id.")] = None,
                    validation_ratio: Annotated[float, Query(ge=0, lt=1)] = 0.1, seed: int = 0,
                    bins: Annotated[int, Query(ge=1, le=100)] = 10) -> dict:
    """Rows and tokens per split, length histogram, lineage."""
    if tokenizer:
        tokenizer = check_tokenizer(tokenizer, settings, is_admin(key))
    return await run_in_threadpool(tools.snapshot_stats, settings, ref, tokenizer=tokenizer,
                                   validation_ratio=validation_ratio, seed=seed, bins=bins)


@router.get("/{ref}/sample")
async def get_sample(ref: str, _: KeyDep, settings: SettingsDep,
                     n: Annotated[int, Query(ge=1, le=500)] = 5, seed: int = 0) -> dict:
    """A seeded random sample of rows."""
    return {"rows": await run_in_threadpool(tools.sample_rows, settings, ref, n, seed)}


@router.get("/{ref}/dropped")
async def get_dropped(ref: str, _: KeyDep, settings: SettingsDep,
                      limit: Annotated[int, Query(ge=0, le=500)] = 50,
                      offset: Offset = 0) -> dict:
    """Rows the snapshot's transform dropped (or the ingest rejected), each with its reason."""
    return await run_in_threadpool(tools.dropped_rows, settings, ref, limit, offset)


@router.get("/{a}/diff/{b}")
async def get_diff(a: str, b: str, _: KeyDep, settings: SettingsDep,
                   show: Annotated[int, Query(ge=0, le=100)] = 5) -> dict:
    """Rows only in ``a``, only in ``b`` and in both."""
    return await run_in_threadpool(tools.diff_snapshots, settings, a, b, show)


@router.get("/{ref}/export", response_class=StreamingResponse, responses={200: {"content": {
    "application/jsonl": {}, "application/vnd.apache.parquet": {}}, "description": "The file."}})
async def get_export(ref: str, _: KeyDep, settings: SettingsDep,
                     format: Annotated[str, Query(description="jsonl | parquet")] = "jsonl",
                     split: Annotated[str, Query(description="all | train | validation")] = "all",
                     validation_ratio: Annotated[float, Query(ge=0, lt=1)] = 0.0,
                     seed: int = 0) -> StreamingResponse:
    """Download a snapshot (or a split) as one JSONL or Parquet file: the export for every key
    (writing to a server path is admin-only)."""
    filename, media_type, chunks = await run_in_threadpool(
        tools.export_download, settings, ref, format, split, validation_ratio, seed)
    return StreamingResponse(chunks, media_type=media_type,
                             headers={"Content-Disposition": f'attachment; filename="{filename}"'})


class ExportRequest(Spec):
    path: str = Field(description="Destination on the server (under STUDIO_DATA_ROOTS); admin keys only.")
    format: str = Field(default="jsonl", description="jsonl | parquet | hf")
    split: str = Field(default="all", description="all | train | validation")
    validation_ratio: float = Field(default=0.0, ge=0, lt=1, description="Share held out as validation.")
    seed: int = Field(default=0, description="Seed of the split.")


@router.post("/{ref}/export")
async def post_export(ref: str, body: ExportRequest, _: Annotated[ApiKey, Depends(_export_admin)],
                      settings: SettingsDep) -> dict:
    """Write a snapshot (or a split) to a server path as JSONL, Parquet or an HF dataset folder
    (admin keys; others download it with ``GET /api/datasets/{ref}/export``)."""
    dest = check_allowed(body.path, settings, "export path")
    return await run_in_threadpool(tools.export_snapshot, settings, ref, dest, body.format, body.split,
                                   body.validation_ratio, body.seed)


class SplitRequest(Spec):
    validation_ratio: float = Field(gt=0, lt=1, description="Share held out as validation.")
    seed: int = Field(default=0, description="Seed of the split.")
    name: str | None = Field(default=None, description="Base name of NAME-train / NAME-validation.")


@router.post("/{ref}/split", status_code=201)
async def post_split(ref: str, body: SplitRequest, key: KeyDep, settings: SettingsDep) -> dict:
    """Materialize train and validation snapshots (lineage: split, seed, ratio)."""
    return await run_in_threadpool(tools.split_snapshot, settings, ref, body.validation_ratio,
                                   body.seed, body.name, key)


@router.post("/curate", status_code=201)
async def post_curate(spec: CurateSpec, key: KeyDep, settings: SettingsDep) -> dict:
    """Run curation steps on a snapshot: a new snapshot with lineage and recorded dropped rows."""
    for step in spec.steps:
        if getattr(step, "tokenizer", None):
            step.tokenizer = check_tokenizer(step.tokenizer, settings, is_admin(key))
    return await run_in_threadpool(curate, spec, settings, key)


class FromEvalRequest(Spec):
    eval_job_id: int = Field(description="Evaluation job whose pairwise judge verdicts to use.")
    name: str = Field(description="Name of the preference dataset.")
    scorer: str | None = Field(default=None, description="Pairwise judge scorer; default: the first.")


@router.post("/from-eval", status_code=201)
async def post_from_eval(body: FromEvalRequest, key: KeyDep, settings: SettingsDep) -> dict:
    """A preference snapshot (prompt, chosen, rejected) from an eval run's pairwise verdicts."""
    from studio.evals.preference import preference_from_eval

    return await run_in_threadpool(preference_from_eval, settings, body.eval_job_id, body.name,
                                   body.scorer, key)


class IngestRequest(Spec):
    source: str = Field(description="Absolute file, directory or fsspec URL on the server, under "
                        "STUDIO_DATA_ROOTS; admin keys only.")
    name: str = Field(description="Dataset name; a new version is added on new content.")
    kind: DatasetKind | None = Field(default=None, description="Force the row kind.")
    column_map: dict[str, str] | None = Field(default=None, description="Target column -> source column.")
    use_ray: bool | None = Field(default=None, description="Read with Ray Data; null: by input size.")


@router.post("/ingest", status_code=201)
async def post_ingest(body: IngestRequest, key: Annotated[ApiKey, Depends(_ingest_admin)],
                      settings: SettingsDep) -> dict:
    """Ingest a file or directory the server can read (a shared volume, an s3:// prefix); admin
    keys only (others upload with ``POST /api/datasets``)."""
    report = await run_in_threadpool(ingest_path, body.source, body.name, settings, kind=body.kind,
                                     column_map=body.column_map, use_ray=body.use_ray, owner=key)
    return asdict(report)


_UPLOAD_DOC = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["file", "name"], "properties": {
        "file": {"type": "string", "format": "binary",
                 "description": "JSONL, JSON, CSV, Parquet, or a .txt/.md/.html/.pdf document"},
        "name": {"type": "string", "description": "Dataset name; a new version is added on new content."},
        "kind": {"type": "string", "enum": [k.value for k in DatasetKind], "description": "Force the row kind."},
        "column_map": {"type": "string", "description": 'JSON object target column -> file column, '
                       'e.g. {"completion": "answer"}.'}}}}}}}


@router.post("", status_code=201, openapi_extra=_UPLOAD_DOC)
async def post_dataset(request: Request, key: KeyDep, settings: SettingsDep) -> dict:
    """Upload a file (multipart: ``file``, ``name``, optional ``kind`` and ``column_map``). The body
    streams into the artifact store; over STUDIO_UPLOAD_MAX_BYTES it is refused with 413 as soon
    as the limit is passed, without reading the rest."""
    declared = request.headers.get("content-length", "")
    # The body holds the form fields and boundaries too: allow a little over the file limit.
    if declared.isdigit() and int(declared) > settings.upload_max_bytes + 1024 * 1024:
        raise TooLarge(f"upload of {declared} bytes is over the limit of {settings.upload_max_bytes} bytes",
                       "split the file, or raise STUDIO_UPLOAD_MAX_BYTES")
    store = ArtifactStore(settings.artifacts)
    up = await receive_upload(request.stream(), request.headers.get("content-type", ""), store,
                              settings.upload_max_bytes, set(ALL_FORMATS))
    try:
        name, kind, mapping = _form(up.fields)
        await run_in_threadpool(check_owner, settings, [name], key)
        report = await run_in_threadpool(_ingest_upload, store, up.key, up.filename, name, kind,
                                         mapping, settings, key)
    finally:
        discard(store, up)
    out = asdict(report)
    out["source"] = up.filename
    return out


def _form(fields: dict[str, str]) -> tuple[str, DatasetKind | None, dict[str, str] | None]:
    errors: list[dict[str, Any]] = []
    name = fields.get("name", "")
    if not name:
        errors.append({"loc": ("body", "name"), "msg": "Field required", "type": "missing"})
    kind = None
    if fields.get("kind"):
        try:
            kind = DatasetKind(fields["kind"])
        except ValueError:
            allowed = ", ".join(repr(k.value) for k in DatasetKind)
            errors.append({"loc": ("body", "kind"), "msg": f"Input should be {allowed}", "type": "enum"})
    if errors:
        raise RequestValidationError(errors)
    return name, kind, _column_map(fields.get("column_map"))


def _ingest_upload(store: ArtifactStore, key: str, filename: str, name: str, kind: DatasetKind | None,
                   mapping: dict[str, str] | None, settings: StudioSettings, owner: ApiKey):
    if store.protocol == "file":
        return ingest_file(store.path(key), name, settings, kind=kind, column_map=mapping,
                           source=filename, owner=owner)
    with tempfile.TemporaryDirectory() as tmp:  # remote store: read a local copy
        local = Path(tmp) / filename
        store.fs.get_file(store.path(key), str(local))
        return ingest_file(local, name, settings, kind=kind, column_map=mapping, source=filename,
                           owner=owner)


def _column_map(raw: str | None) -> dict[str, str] | None:
    if not raw or not raw.strip():
        return None
    try:
        mapping = json.loads(raw)
    except ValueError:
        mapping = None
    if not isinstance(mapping, dict) or not all(isinstance(k, str) and isinstance(v, str) and k and v
                                                for k, v in mapping.items()):
        raise StudioError(f"column_map {raw!r} is not a JSON object of column names",
                          'send e.g. {"completion": "answer"} (target column: column in the file)')
    return mapping or None
