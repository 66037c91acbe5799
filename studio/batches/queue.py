"""What the API and the CLI do with batches: create (the file checked, a job of kind ``batch``
queued), read, list, cancel. Only the database and the artifact store are touched; the scheduler
takes the job to Ray (``python -m studio.batches.run --job-id N``).

``key`` is the calling API key (its batches and files only, unless it is an admin) or ``None``
for the operator's CLI on the server, which sees all and whose batches spend on a key derived
from the oldest admin key (``submitted_by`` ``cli:USER``, docs/security.md).
"""

from __future__ import annotations

from datetime import timedelta

from pydantic import Field, field_validator
from sqlalchemy import select
from sqlalchemy.orm import Session

from studio.access import owns, principal_id
from studio.batches.files import get_file, new_id, owner_of
from studio.batches.output import write_files
from studio.batches.state import effective_status, locked, request_cancel
from studio.batches.validation import check_endpoint, check_file
from studio.batches.views import BatchObject
from studio.errors import NotFound, StudioError
from studio.jobs.status import create_job
from studio.recipes import Spec
from studio.settings import StudioSettings
from studio.store.artifacts import ArtifactStore
from studio.store.models import ApiKey, Batch, utcnow

KIND = "batch"
WINDOWS = {"24h": timedelta(hours=24)}
MAX_RETRIES = 3
MAX_METADATA = 16


class BatchCreate(Spec):
    """The body of ``POST /v1/batches`` (OpenAI's ``BatchCreateParams``)."""

    input_file_id: str = Field(max_length=64, description="A file uploaded with purpose=batch.")
    endpoint: str = Field(max_length=64, description="/v1/chat/completions or /v1/completions: "
                          "every line's `url`.")
    completion_window: str = Field(default="24h", max_length=16,
                                   description="Only 24h: lines not run 24 h after creation expire.")
    metadata: dict[str, str] | None = Field(
        default=None, description="Up to 16 pairs; keys ≤ 64 characters, values ≤ 512.")
    output_expires_after: dict | None = Field(
        default=None, description="Accepted and not applied: output files are kept until deleted.")

    @field_validator("metadata")
    @classmethod
    def _metadata(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        if value is None:
            return None
        if len(value) > MAX_METADATA:
            raise ValueError(f"at most {MAX_METADATA} pairs, got {len(value)}")
        bad = [k for k, v in value.items() if len(k) > 64 or len(v) > 512]
        if bad:
            raise ValueError(f"keys ≤ 64 and values ≤ 512 characters; too long: {bad[0][:64]!r}")
        return value


class BatchJobSpec(Spec):
    """The batch job's spec (``jobs.spec``): which batch, how wide."""

    batch_id: str
    concurrency: int = Field(ge=1, description="Calls in flight (STUDIO_BATCH_CONCURRENCY at creation).")


def create_batch(session: Session, settings: StudioSettings, key: ApiKey | None, body: BatchCreate,
                 submitted_by: str) -> Batch:
    """Check the endpoint, window and input file (yours, purpose batch, usable JSONL within the
    line limit: a 4xx otherwise), then queue the batch's job. Lines are checked one by one when
    the job runs (each bad line an error-file entry)."""
    check_endpoint(body.endpoint)
    if body.completion_window not in WINDOWS:
        raise StudioError(f"completion_window {body.completion_window!r} is not supported",
                          f"pass one of {', '.join(WINDOWS)}")
    source = get_file(session, key, body.input_file_id)
    if source.purpose != "batch":
        raise StudioError(f"file {source.id} has purpose {source.purpose!r}, not 'batch'",
                          "upload the input with purpose=batch")
    data = ArtifactStore(settings.artifacts).get_bytes(source.key)
    total = check_file(data, f"file {source.id} ({source.filename})", settings.batch_max_lines)
    batch_id = new_id("batch_")
    owner = owner_of(key)
    spec = BatchJobSpec(batch_id=batch_id, concurrency=settings.batch_concurrency)
    job = create_job(session, name=batch_id, spec=spec.model_dump(mode="json"), max_retries=MAX_RETRIES,
                     submitted_by=submitted_by, kind=KIND, owner_key_id=owner)
    now = utcnow()
    batch = Batch(id=batch_id, job_id=job.id, owner_key_id=owner, endpoint=body.endpoint,
                  input_file_id=source.id, completion_window=body.completion_window,
                  status="validating", labels=body.metadata, total=total, completed=0, failed=0,
                  prompt_tokens=0, completion_tokens=0, created_at=now,
                  expires_at=now + WINDOWS[body.completion_window])
    session.add(batch)
    session.flush()
    return batch


def get_batch(session: Session, key: ApiKey | None, batch_id: str) -> Batch:
    batch = session.get(Batch, batch_id)
    if batch is None or (key is not None and not owns(key, batch.owner_key_id)):
        raise NotFound(f"no batch {batch_id!r}", "list your batches with GET /v1/batches")
    return batch


def view(session: Session, batch: Batch) -> BatchObject:
    status, errors, at = effective_status(session, batch)
    return BatchObject.of(batch, status, errors, failed_at=at if status == "failed" else None,
                          cancelled_at=at if status == "cancelled" else None)


def list_batches(session: Session, key: ApiKey | None, after: str | None = None, limit: int = 20
                 ) -> tuple[list[Batch], bool]:
    """A page of the batches ``key`` may see, newest first, after the batch ``after``."""
    stmt = select(Batch)
    if key is not None and key.role != "admin":
        stmt = stmt.where(Batch.owner_key_id == principal_id(key))
    if after:
        stmt = stmt.where(Batch.id < after)
    rows = list(session.scalars(stmt.order_by(Batch.id.desc()).limit(limit + 1)))
    return rows[:limit], len(rows) > limit


def cancel_batch(session: Session, settings: StudioSettings, key: ApiKey | None, batch_id: str,
                 by: str) -> Batch:
    """``cancelling`` while a runner holds it; ``cancelled`` now (with the files of what
    finished in an earlier attempt) when nothing does."""
    get_batch(session, key, batch_id)  # 404 before any lock
    batch = locked(session, batch_id)
    if request_cancel(session, batch, by):
        write_files(session, ArtifactStore(settings.artifacts), batch, "cancelled")
    return batch
