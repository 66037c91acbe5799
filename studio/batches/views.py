"""What ``/v1/files`` and ``/v1/batches`` answer, in OpenAI's shapes (``openai.types.FileObject``,
``FileDeleted``, ``Batch`` and their list pages parse these); also what ``studio batches`` prints.
Times are Unix seconds, as OpenAI's are."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from studio.store.models import Batch, StoredFile

BatchStatus = Literal["validating", "failed", "in_progress", "finalizing", "completed", "expired",
                      "cancelling", "cancelled"]


def unix(at: datetime | None) -> int | None:
    return int(at.timestamp()) if at is not None else None


class FileObject(BaseModel):
    id: str = Field(description="file-…: name it as a batch's input_file_id, or read its content.")
    object: Literal["file"] = "file"
    bytes: int = Field(description="Size of the file.")
    created_at: int = Field(description="Unix seconds.")
    filename: str
    purpose: Literal["batch", "batch_output"] = Field(
        description="batch: an input uploaded for /v1/batches; batch_output: a batch's output or "
        "error file.")
    status: Literal["uploaded", "processed", "error"] = "processed"
    expires_at: int | None = Field(default=None, description="Files are kept until deleted.")
    status_details: str | None = None

    @classmethod
    def of(cls, row: StoredFile) -> FileObject:
        return cls(id=row.id, bytes=row.size_bytes, created_at=unix(row.created_at) or 0,
                   filename=row.filename, purpose=row.purpose)  # type: ignore[arg-type]


class FileList(BaseModel):
    object: Literal["list"] = "list"
    data: list[FileObject]
    first_id: str | None = None
    last_id: str | None = None
    has_more: bool = False


class FileDeleted(BaseModel):
    id: str
    object: Literal["file"] = "file"
    deleted: bool = True


class RequestCounts(BaseModel):
    total: int = Field(description="Lines in the input file (blank lines aside).")
    completed: int = Field(description="Lines answered: in the output file.")
    failed: int = Field(description="Lines refused or failed: in the error file.")


class _InputDetails(BaseModel):
    cached_tokens: int = 0


class _OutputDetails(BaseModel):
    reasoning_tokens: int = 0


class BatchUsage(BaseModel):
    input_tokens: int
    input_tokens_details: _InputDetails = Field(default_factory=_InputDetails)
    output_tokens: int
    output_tokens_details: _OutputDetails = Field(default_factory=_OutputDetails)
    total_tokens: int


class BatchError(BaseModel):
    code: str | None = None
    message: str | None = None
    param: str | None = None
    line: int | None = None


class BatchErrors(BaseModel):
    object: Literal["list"] = "list"
    data: list[BatchError]


class BatchObject(BaseModel):
    id: str = Field(description="batch_…")
    object: Literal["batch"] = "batch"
    endpoint: str
    input_file_id: str
    completion_window: str
    status: BatchStatus = Field(description="validating → in_progress → finalizing → completed; "
                                "failed, expired, cancelling → cancelled (docs/batch.md).")
    output_file_id: str | None = None
    error_file_id: str | None = None
    errors: BatchErrors | None = None
    created_at: int
    in_progress_at: int | None = None
    expires_at: int | None = None
    finalizing_at: int | None = None
    completed_at: int | None = None
    failed_at: int | None = None
    expired_at: int | None = None
    cancelling_at: int | None = None
    cancelled_at: int | None = None
    request_counts: RequestCounts
    usage: BatchUsage
    metadata: dict[str, str] | None = None
    studio_job_id: int = Field(description="The studio job that runs it (`studio jobs show`).")

    @classmethod
    def of(cls, row: Batch, status: str, errors: list[dict[str, Any]] | None = None,
           failed_at: datetime | None = None, cancelled_at: datetime | None = None) -> BatchObject:
        """``status`` (and the failure or cancellation a job row adds) from ``studio.batches.state``."""
        errs = errors if errors is not None else row.errors
        return cls(
            id=row.id, endpoint=row.endpoint, input_file_id=row.input_file_id,
            completion_window=row.completion_window, status=status,  # type: ignore[arg-type]
            output_file_id=row.output_file_id, error_file_id=row.error_file_id,
            errors=BatchErrors(data=[BatchError(**e) for e in errs]) if errs else None,
            created_at=unix(row.created_at) or 0, in_progress_at=unix(row.in_progress_at),
            expires_at=unix(row.expires_at), finalizing_at=unix(row.finalizing_at),
            completed_at=unix(row.completed_at), failed_at=unix(row.failed_at or failed_at),
            expired_at=unix(row.expired_at), cancelling_at=unix(row.cancelling_at),
            cancelled_at=unix(row.cancelled_at or cancelled_at),
            request_counts=RequestCounts(total=row.total, completed=row.completed, failed=row.failed),
            usage=BatchUsage(input_tokens=row.prompt_tokens, output_tokens=row.completion_tokens,
                             total_tokens=row.prompt_tokens + row.completion_tokens),
            metadata=row.labels or None, studio_job_id=row.job_id)


class BatchList(BaseModel):
    object: Literal["list"] = "list"
    data: list[BatchObject]
    first_id: str | None = None
    last_id: str | None = None
    has_more: bool = False
