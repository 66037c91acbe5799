"""A synthesis job as the API, the CLI and the event stream show it: ``SynthStatus`` (progress,
result, spec) and ``SynthDraftRows`` (the rows generated so far)."""

from __future__ import annotations

from typing import Any

from pydantic import ConfigDict, Field

from studio.data.synth.spec import SynthResult
from studio.jobs.status import JobStatus
from studio.jobs.views import IsoDateTime, Progress, StoredJobView, View


class SynthProgress(Progress):
    """How far the generation is: ``Progress`` in chunks (rate, ETA, text) with the counts of
    ``result.progress`` of the job (unknown keys kept)."""

    model_config = ConfigDict(extra="allow")
    chunks_done: int = Field(default=0, description="Chunks generated.")
    chunks_total: int = Field(default=0, description="Chunks planned.")
    rows: int = Field(default=0, description="Rows generated so far (before curation).")
    parse_failures: int = Field(default=0, description="Replies that did not parse into rows.")
    tokens: int = Field(default=0, description="Prompt and completion tokens spent.")
    cost_usd: float = Field(default=0.0, description="Cost so far in USD.")


class SynthStatus(StoredJobView):
    """A synthesis job: status, progress, result (once done) and its spec for its owner and admins."""

    id: int = Field(description="The job's id.")
    name: str = Field(description="The dataset name it generates.")
    status: JobStatus = Field(description="Its job status.")
    attempts: int = Field(description="Attempts started so far.")
    error: str | None = Field(description="Why the last attempt failed.")
    progress: SynthProgress = Field(description="Chunks done/total, rows, parse failures, tokens, cost, "
                                    "rate and ETA (text: 'chunks 15/20 · 63 rows · 1.2 chunks/s · ETA 4s').")
    result: SynthResult = Field(description="What the job recorded besides its progress: the snapshot it "
                                "wrote (name, version, snapshot_id, rows, dropped) once it SUCCEEDED.")
    spec: dict[str, Any] | None = Field(description="The SynthSpec; null when hidden from the caller.")
    spec_hidden: str | None = Field(default=None, description="Present only when the spec is hidden: why.")
    owner_key_id: int | None = Field(description="The key that owns it.")
    created_at: IsoDateTime = Field(description="When it was queued (ISO 8601, UTC).")
    updated_at: IsoDateTime = Field(description="When its row last changed (ISO 8601, UTC).")

    @property
    def ended(self) -> bool:
        return self.status in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED)


class SynthDraftRows(View):
    """A page of the rows generated so far, in chunk order, before curation."""

    job_id: int = Field(description="The synthesis job.")
    status: JobStatus = Field(description="Its job status.")
    total: int = Field(description="Rows generated so far.")
    rows: list[dict[str, Any]] = Field(description="The page: each row with its chunk index and source.")
