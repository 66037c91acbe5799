"""What the API and the CLI show of a job of any kind, typed: ``JobSummary`` (a row of
``GET /api/jobs``), ``JobDetail`` (``GET /api/jobs/{id}``: spec, result, progress, events) and
``JobMetrics`` (``GET /api/jobs/{id}/metrics``), and ``Progress`` (every kind's, computed by
``studio.jobs.progress``). ``studio.jobs.queue`` builds them from the rows;
each kind's service types its own views on top (``studio.evals.views``, ``studio.data.synth.views``)
and reuses ``JobEventView`` and ``IsoDateTime``.

Times go out as ``datetime.isoformat()`` of aware UTC ("2026-12-06T04:00:00.123456+00:00"), as
they did before these models: pydantic's own JSON would write "Z", and nothing needs that change.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (BaseModel, ConfigDict, Field, FieldSerializationInfo, PlainSerializer,
                      SerializerFunctionWrapHandler, WithJsonSchema, field_serializer, model_serializer)

from studio.jobs.results import JobResult
from studio.jobs.status import JobStatus

IsoDateTime = Annotated[datetime, PlainSerializer(lambda d: d.isoformat(), return_type=str, when_used="json"),
                        WithJsonSchema({"type": "string", "format": "date-time"})]


class View(BaseModel):
    """A response model: attribute access for the CLI, a named schema for the OpenAPI."""

    model_config = ConfigDict(validate_by_name=True, validate_by_alias=True, serialize_by_alias=True)


class StoredJobView(View):
    """A view with a job's typed ``result`` and its ``spec`` (maybe withheld: ``spec_hidden``), as
    ``JobDetail``, ``EvalDetail`` and ``SynthStatus`` have: ``result`` goes out as stored (the keys
    that were set, none of the model's defaults) and ``spec_hidden`` only when the spec was withheld
    (the UI and clients test its presence). Serializers without a return annotation: the OpenAPI
    keeps the field's and the model's schema."""

    @field_serializer("result", mode="wrap", check_fields=False)
    def _result_as_stored(self, result: JobResult | None, _: SerializerFunctionWrapHandler,
                          info: FieldSerializationInfo):
        return None if result is None else result.model_dump(mode=info.mode, exclude_unset=True)

    @model_serializer(mode="wrap")
    def _hidden_note_when_hidden(self, handler: SerializerFunctionWrapHandler):
        out = handler(self)
        if out.get("spec_hidden") is None:
            out.pop("spec_hidden", None)
        return out


class JobEventView(View):
    """One status change of a job (a ``job_events`` row)."""

    at: IsoDateTime = Field(description="When it changed (ISO 8601, UTC).")
    from_: JobStatus | None = Field(alias="from", description="The status before; null for the first event.")
    to: JobStatus = Field(description="The status after.")
    reason: str = Field(description="Why, as the part that moved it wrote it (a failure carries a log tail).")


Unit = Literal["step", "row", "chunk"]


class Progress(View):
    """Done out of total in the job's unit, with the rate and ETA of the current attempt."""

    unit: Unit = Field(description="What is counted: step (training), row (an eval: one model's answer to "
                       "one datapoint) or chunk (a synthesis: one document chunk generated).")
    done: int = Field(description="Units done so far (a resumed run counts what earlier attempts did).")
    total: int | None = Field(description="Units the run takes; null when not known (shown as ?).")
    epoch: float | None = Field(default=None, description="Training: the epoch reached (fractional); null "
                                "for other kinds or before the first logged step.")
    epochs: float | None = Field(default=None, description="Training: the epochs the run makes; null when "
                                 "not known.")
    rows: int | None = Field(default=None, description="Synthesis: rows generated so far (their total is "
                             "not known before the replies are).")
    rate_per_s: float | None = Field(description="Units per second in the current attempt, from its first "
                                     "and latest stored points; null before two points.")
    eta_s: float | None = Field(description="Seconds left at that rate, counted from the server's clock now; "
                                "null when the total or the rate is unknown, or the job is not running.")
    updated_at: IsoDateTime | None = Field(description="When the latest point was stored (ISO 8601, UTC).")
    text: str = Field(description="The same as one line, as the CLI and the UI show it: "
                      "'step 120/600 · epoch 1.2/3 · ETA 2m10s', 'rows 150/200 · 12.3 rows/s · ETA 4s'.")


class JobSummary(View):
    """A job of any kind (train, eval, synth, ...) as ``GET /api/jobs`` lists it."""

    id: int = Field(description="The job's id.")
    kind: str = Field(description="train, eval, synth, batch, ...")
    name: str = Field(description="The name given at submission.")
    method: str | None = Field(description="A training job's method (sft, dpo, grpo, ...); null for other kinds.")
    status: JobStatus = Field(description="Where the job is in its state machine (studio/jobs/status.py).")
    attempts: int = Field(description="Attempts started so far.")
    max_retries: int = Field(description="Retries allowed after the first attempt.")
    cancel_requested: bool = Field(description="A cancel was asked; the scheduler stops it within a tick.")
    submitted_by: str | None = Field(description="The name of the key (or cli:user) that submitted it.")
    owner_key_id: int | None = Field(description="The key that owns it (its spec and logs are theirs and admins').")
    ray_submission_id: str | None = Field(description="The Ray job of the current attempt, once submitted.")
    error: str | None = Field(description="Why the last attempt failed.")
    created_at: IsoDateTime = Field(description="When it was queued (ISO 8601, UTC).")
    updated_at: IsoDateTime = Field(description="When its row last changed (ISO 8601, UTC).")
    next_attempt_at: IsoDateTime | None = Field(description="When a RETRYING job tries again.")
    heartbeat_at: IsoDateTime | None = Field(description="The last beat of the process running it (null before "
                                             "it started, or for a job that ran before heartbeats).")
    progress: Progress | None = Field(default=None, description="How far it is: steps (train), rows (eval) or "
                                      "chunks (synth) of the total, rate and ETA; null for other kinds.")
    parent_id: int | None = Field(default=None, description="A sweep's trial: the sweep job it belongs to.")


class TrialView(View):
    """One trial of a sweep: a training job with the values the search gave it."""

    job_id: int = Field(description="The trial's training job.")
    trial: str | None = Field(description="Ray Tune's trial id.")
    params: dict[str, Any] = Field(description="The sampled recipe fields (dotted) and their values.")
    status: JobStatus = Field(description="The trial job's status (CANCELLED: stopped early by ASHA, or the sweep "
                              "was cancelled).")
    eval_loss: float | None = Field(description="Its last eval_loss.")
    score: float | None = Field(description="Its eval_after exact match, when the sweep scores by it.")
    wall_s: float | None = Field(description="Seconds from its start to its end (to now while it runs).")
    registered: str | None = Field(description="name@N when this trial is the sweep's best, registered.")


class JobDetail(JobSummary, StoredJobView):
    """A job with its spec (the owner's and admins' only), result, progress and every status change."""

    spec: dict[str, Any] | None = Field(description="The submitted spec, secrets redacted; null when hidden "
                                        "from the caller.")
    spec_hidden: str | None = Field(default=None, description="Present only when the spec is hidden: why.")
    result: JobResult | None = Field(description="What the job recorded (its kind's result model; unknown keys "
                                     "kept).")
    checkpoint_uri: str | None = Field(description="The latest checkpoint, where a retry resumes.")
    mlflow_run_id: str | None = Field(description="The MLflow run of a training job.")
    mlflow_url: str | None = Field(default=None, description="The run's page in the MLflow UI (null: no run, or "
                                   "no UI to link to; see STUDIO_MLFLOW_UI_URL).")
    step: int | None = Field(description="The highest step the current attempt reported (see progress).")
    total_steps: int | None = Field(description="Steps the run takes, when known (see progress).")
    events: list[JobEventView] = Field(description="Every status change, oldest first.")
    trials: list[TrialView] | None = Field(default=None, description="A sweep's trials (training jobs), "
                                           "oldest first; null for other kinds.")


class MetricPoint(View):
    """One reported value of one metric."""

    step: int = Field(description="The training step.")
    value: float = Field(description="The value at that step.")
    attempt: int = Field(description="The attempt that reported it (a retry may report a step again).")
    at: IsoDateTime = Field(description="When it was reported (ISO 8601, UTC).")


class JobMetrics(View):
    """``job_metrics`` as one series per key (loss, learning_rate, ...), chart-ready."""

    job_id: int = Field(description="The job.")
    metrics: dict[str, list[MetricPoint]] = Field(description="key → points ordered by attempt, then step.")
