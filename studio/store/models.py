"""SQLAlchemy 2 models of the studio's state. Schema changes go through Alembic migrations
(``studio/store/migrations``); ``tests/store`` checks the migrations match these models."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Boolean, Float, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

# Base, the column type and the clock are shared with the other table module (loop_models).
from studio.store.base import Base, UTCDateTime, utcnow


class ApiKey(Base):
    """A studio API key. Only the SHA-256 of the secret is stored; the secret is shown once."""

    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    role: Mapped[str] = mapped_column(String(16))
    # First characters of the secret, so a person can tell keys apart in listings.
    prefix: Mapped[str] = mapped_column(String(24))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Gateway limits (null: unlimited): requests and tokens per minute, total spend in USD.
    rpm_limit: Mapped[int | None] = mapped_column(Integer)
    tpm_limit: Mapped[int | None] = mapped_column(Integer)
    budget_usd: Mapped[float | None] = mapped_column(Float)
    # A job key: derived from its submitter's key (parent_id) for one job, revoked when it ends.
    parent_id: Mapped[int | None] = mapped_column(Integer)
    job_id: Mapped[int | None] = mapped_column(Integer, index=True)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class DatasetSnapshot(Base):
    """An immutable, content-addressed set of normalized rows (Parquet in the artifact store)."""

    __tablename__ = "dataset_snapshots"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # sha256 of kind + rows
    kind: Mapped[str] = mapped_column(String(32))
    row_count: Mapped[int] = mapped_column(Integer)
    columns: Mapped[list[Any]] = mapped_column(JSON)
    uri: Mapped[str] = mapped_column(String(1024))
    stats: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # Lineage of a derived snapshot (curation, split, synthesis, mix): the snapshot it came from,
    # the transform and its parameters. Null for an ingested file.
    parent_id: Mapped[str | None] = mapped_column(String(64), index=True)
    transform: Mapped[str | None] = mapped_column(String(64))
    params: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # Rows the transform dropped, each with its reason (Parquet in the artifact store).
    dropped_count: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    dropped_uri: Mapped[str | None] = mapped_column(String(1024))

    versions: Mapped[list[DatasetVersion]] = relationship(back_populates="snapshot")


class DatasetVersion(Base):
    """A name pointing at a snapshot: ``name`` resolves to its newest version, ``name@N`` to N."""

    __tablename__ = "dataset_versions"
    __table_args__ = (UniqueConstraint("name", "version", name="uq_dataset_name_version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), index=True)
    version: Mapped[int] = mapped_column(Integer)
    snapshot_id: Mapped[str] = mapped_column(ForeignKey("dataset_snapshots.id"))
    source: Mapped[str] = mapped_column(String(1024))
    rejected_rows: Mapped[int] = mapped_column(Integer, default=0)
    # Every row the ingest rejected, with its file, row number and reason (Parquet artifact).
    rejected_uri: Mapped[str | None] = mapped_column(String(1024))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    owner_key_id: Mapped[int | None] = mapped_column(Integer, index=True)  # the key that owns it

    snapshot: Mapped[DatasetSnapshot] = relationship(back_populates="versions")


class Job(Base):
    """A unit of bursty work (training today) run as a Ray Job. Status follows
    ``studio.jobs.status``; every change is also a row in ``job_events``."""

    __tablename__ = "jobs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(32), default="train")
    name: Mapped[str] = mapped_column(String(128))  # registry name the result is registered under
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)  # the validated TrainSpec, as submitted
    status: Mapped[str] = mapped_column(String(16), index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    max_retries: Mapped[int] = mapped_column(Integer, default=0)
    ray_submission_id: Mapped[str | None] = mapped_column(String(128))
    submitted_by: Mapped[str | None] = mapped_column(String(128))  # key name or "ray job submit"
    owner_key_id: Mapped[int | None] = mapped_column(Integer, index=True)  # the key that owns it
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    checkpoint_uri: Mapped[str | None] = mapped_column(String(1024))  # latest, for resume
    mlflow_run_id: Mapped[str | None] = mapped_column(String(64))
    error: Mapped[str | None] = mapped_column(String(4096))
    result: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime)  # retry backoff
    # Written every STUDIO_JOB_HEARTBEAT_S by the process running the job (JobDriver.beating); the
    # scheduler fails a job without a Ray submission whose beats stopped (heartbeat_timeout_s).
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # A sweep's trial: the sweep job it belongs to (studio.train.sweep_run); None for other jobs.
    parent_id: Mapped[int | None] = mapped_column(Integer, index=True)

    events: Mapped[list[JobEvent]] = relationship(back_populates="job", order_by="JobEvent.id")


class JobEvent(Base):
    __tablename__ = "job_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"), index=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    from_status: Mapped[str | None] = mapped_column(String(16))
    to_status: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str] = mapped_column(String(4096))

    job: Mapped[Job] = relationship(back_populates="events")


class JobMetric(Base):
    """Per-step training metrics (loss, reward, lr, tokens/s), for charts; MLflow has them too."""

    __tablename__ = "job_metrics"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"), index=True)
    attempt: Mapped[int] = mapped_column(Integer, default=1)
    step: Mapped[int] = mapped_column(Integer)
    key: Mapped[str] = mapped_column(String(64))
    value: Mapped[float] = mapped_column(Float)
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class ModelVersion(Base):
    """A registered model version: an adapter (plain PEFT directory) or full weights, with lineage."""

    __tablename__ = "model_versions"
    __table_args__ = (UniqueConstraint("name", "version", name="uq_model_name_version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), index=True)
    version: Mapped[int] = mapped_column(Integer)
    base_model: Mapped[str] = mapped_column(String(1024))
    method: Mapped[str] = mapped_column(String(16))  # cpt | sft | dpo | grpo
    adapter_type: Mapped[str] = mapped_column(String(16))  # lora | qlora | full
    uri: Mapped[str] = mapped_column(String(1024))  # artifact URI of the adapter / weights directory
    dataset_snapshot_id: Mapped[str | None] = mapped_column(ForeignKey("dataset_snapshots.id"))
    job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id"))
    mlflow_run_id: Mapped[str | None] = mapped_column(String(64))
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    stage: Mapped[str] = mapped_column(String(16), default="candidate")  # candidate|champion|archived
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # The gate's train/serve parity check, once per version (studio.evals.parity): None until checked.
    parity: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)


class Experiment(Base):
    """An A/B experiment: an endpoint alias split over arms (model names the router resolves) by
    weight. ``arms`` is ``[{"model": "tiny", "weight": 0.5}, ...]``; status ``active|stopped``."""

    __tablename__ = "experiments"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    alias: Mapped[str] = mapped_column(String(128), unique=True)
    arms: Mapped[list[Any]] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(16), default="active")
    created_by: Mapped[str | None] = mapped_column(String(128))
    owner_key_id: Mapped[int | None] = mapped_column(Integer, index=True)  # the key that owns it
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


class Completion(Base):
    """One answered /v1 request, recorded by the Router in the background: what was asked, by
    which name, which concrete version answered, and what it said (the first choice)."""

    __tablename__ = "completions"

    id: Mapped[str] = mapped_column(String(128), primary_key=True)  # the response's own id
    endpoint: Mapped[str] = mapped_column(String(16))  # chat | completions
    requested_model: Mapped[str] = mapped_column(String(256))
    experiment: Mapped[str | None] = mapped_column(String(128), index=True)  # alias, if any
    arm: Mapped[str | None] = mapped_column(String(256))  # the arm's model name
    model_version: Mapped[str] = mapped_column(String(256), index=True)  # base id or name@N
    prompt: Mapped[Any] = mapped_column(JSON)  # messages list (chat) or prompt (completions)
    prompt_text: Mapped[str] = mapped_column(Text)  # the prompt flattened; preference rows use it
    response: Mapped[str] = mapped_column(Text)
    latency_ms: Mapped[float] = mapped_column(Float)
    ttft_ms: Mapped[float | None] = mapped_column(Float)
    output_tokens: Mapped[int | None] = mapped_column(Integer)
    user: Mapped[str | None] = mapped_column(String(256))
    owner_key_id: Mapped[int | None] = mapped_column(Integer, index=True)  # the key that owns it
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Feedback(Base):
    """A judgement of a completion: a rating (+1/-1 or any number) and/or "the completion
    ``preferred_completion_id`` is better than this one" (same prompt), and a comment."""

    __tablename__ = "feedback"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    completion_id: Mapped[str] = mapped_column(ForeignKey("completions.id"), index=True)
    rating: Mapped[float | None] = mapped_column(Float)
    preferred_completion_id: Mapped[str | None] = mapped_column(ForeignKey("completions.id"))
    comment: Mapped[str | None] = mapped_column(String(4096))
    key_name: Mapped[str | None] = mapped_column(String(128))
    owner_key_id: Mapped[int | None] = mapped_column(Integer, index=True)  # the key that owns it
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class UsageRecord(Base):
    """One gateway call: who (key, service, job) asked which model group, which concrete
    deployment answered, tokens, cost, latency, cache hit, error. Written in the background."""

    __tablename__ = "usage_records"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    key_id: Mapped[int | None] = mapped_column(Integer, index=True)
    key_name: Mapped[str | None] = mapped_column(String(128))
    service: Mapped[str] = mapped_column(String(64), index=True)  # synth | eval | grpo | playground
    job_id: Mapped[str | None] = mapped_column(String(128), index=True)
    endpoint: Mapped[str] = mapped_column(String(16))  # chat | completions
    model_group: Mapped[str] = mapped_column(String(256), index=True)
    deployment: Mapped[str | None] = mapped_column(String(256))  # concrete model/version answered
    prompt_tokens: Mapped[int] = mapped_column(Integer, default=0)
    completion_tokens: Mapped[int] = mapped_column(Integer, default=0)
    cost_usd: Mapped[float] = mapped_column(Float, default=0.0)
    latency_ms: Mapped[float] = mapped_column(Float)
    cache_hit: Mapped[bool] = mapped_column(Boolean, default=False)
    status: Mapped[int] = mapped_column(Integer, default=200)  # HTTP status the caller saw
    error: Mapped[str | None] = mapped_column(String(1024))


class EvalOutput(Base):
    """One model's completion of one datapoint in an eval run (a ``jobs`` row of kind ``eval``).
    Written once its pointwise scores are in, so a resumed run skips exactly these pairs."""

    __tablename__ = "eval_outputs"
    __table_args__ = (UniqueConstraint("job_id", "datapoint", "model", name="uq_eval_output"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"), index=True)
    datapoint: Mapped[int] = mapped_column(Integer)  # row index in the evaluated split
    model: Mapped[str] = mapped_column(String(256))  # the name as the spec lists it
    model_version: Mapped[str | None] = mapped_column(String(256))  # what answered (base id or name@N)
    input: Mapped[Any] = mapped_column(JSON)  # the messages sent
    reference: Mapped[str | None] = mapped_column(Text)
    output: Mapped[str | None] = mapped_column(Text)  # None: the call failed (error says why)
    error: Mapped[str | None] = mapped_column(String(2048))
    latency_ms: Mapped[float | None] = mapped_column(Float)
    cost_usd: Mapped[float] = mapped_column(Float, default=0.0)
    cache_hit: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class EvalScore(Base):
    """One scorer's verdict on one output. ``score`` None = unscored (``status`` unscored | error |
    skipped, ``reason`` says why, ``raw`` keeps e.g. the judge's unparseable reply). Pairwise judge
    rows score ``model`` against the judge's baseline (1 win, 0.5 tie, 0 loss)."""

    __tablename__ = "eval_scores"
    __table_args__ = (UniqueConstraint("job_id", "datapoint", "model", "scorer", name="uq_eval_score"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"), index=True)
    datapoint: Mapped[int] = mapped_column(Integer)
    model: Mapped[str] = mapped_column(String(256))
    scorer: Mapped[str] = mapped_column(String(128))
    score: Mapped[float | None] = mapped_column(Float)
    status: Mapped[str] = mapped_column(String(16), default="scored")  # scored|unscored|error|skipped
    reason: Mapped[str | None] = mapped_column(String(2048))
    raw: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class PromotionGate(Base):
    """A registry name's promotion gate: a new champion must beat the current one on ``dataset``
    by ``margin`` in the mean of ``scorer`` (an EvalSpec scorer, as JSON)."""

    __tablename__ = "promotion_gates"

    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    dataset: Mapped[str] = mapped_column(String(256))
    scorer: Mapped[dict[str, Any]] = mapped_column(JSON)
    margin: Mapped[float] = mapped_column(Float, default=0.0)
    limit: Mapped[int | None] = mapped_column(Integer)
    generation: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


class PromotionEvent(Base):
    """Every stage change of a model version, with why: the gate's verdict (and its eval run),
    ``forced`` when --force skipped a refusal, or "no gate"."""

    __tablename__ = "promotion_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), index=True)
    version: Mapped[int] = mapped_column(Integer)
    to_stage: Mapped[str] = mapped_column(String(16))
    outcome: Mapped[str] = mapped_column(String(16))  # promoted | refused | forced
    forced: Mapped[bool] = mapped_column(Boolean, default=False)
    eval_job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id"))
    reason: Mapped[str] = mapped_column(String(4096))
    by: Mapped[str | None] = mapped_column(String(128))
    by_key_id: Mapped[int | None] = mapped_column(Integer)
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class ServingDeployment(Base):
    """A base model deployed at runtime from a serving recipe (``studio serve deploy``,
    ``POST /api/deployments``): its own Serve application, found by the Router through this row.
    ``status`` follows ``studio.serving.state.DeploymentStatus``; evicted rows stay so the name
    answers "not deployed" rather than "unknown"."""

    __tablename__ = "serving_deployments"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)  # the served model name
    app_name: Mapped[str] = mapped_column(String(160))  # the Serve application
    recipe: Mapped[dict[str, Any]] = mapped_column(JSON)  # a ServingRecipe, as JSON
    status: Mapped[str] = mapped_column(String(16))
    message: Mapped[str | None] = mapped_column(Text)  # why it failed / was evicted
    created_by: Mapped[str | None] = mapped_column(String(128))
    owner_key_id: Mapped[int | None] = mapped_column(Integer, index=True)  # the key that owns it
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


class OwnedName(Base):
    """Who owns a name that several rows share: a registry name (``kind`` "model") or a dataset
    name ("dataset"). The first key to register the name owns it; only the owner (or an admin)
    adds versions to it, promotes them or changes its gate."""

    __tablename__ = "owned_names"

    kind: Mapped[str] = mapped_column(String(16), primary_key=True)
    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    owner_key_id: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class StoredFile(Base):
    """A file of the OpenAI Files API (``/v1/files``): a batch input its owner uploaded (purpose
    ``batch``) or a batch's output or error file (``batch_output``). Bytes in the artifact store."""

    __tablename__ = "files"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # file-<time-ordered hex>
    purpose: Mapped[str] = mapped_column(String(32))
    filename: Mapped[str] = mapped_column(String(256))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    key: Mapped[str] = mapped_column(String(1024))  # the artifact store key of the bytes
    owner_key_id: Mapped[int | None] = mapped_column(Integer, index=True)  # the key that owns it
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Batch(Base):
    """A batch of the OpenAI Batch API (``/v1/batches``), run as a job of kind ``batch``
    (``studio.batches``: states, counts, files). ``labels`` is the API's ``metadata``."""

    __tablename__ = "batches"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # batch_<time-ordered hex>
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"), index=True)
    owner_key_id: Mapped[int | None] = mapped_column(Integer, index=True)
    endpoint: Mapped[str] = mapped_column(String(32))
    input_file_id: Mapped[str] = mapped_column(String(64), index=True)
    completion_window: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16))
    labels: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    output_file_id: Mapped[str | None] = mapped_column(String(64))
    error_file_id: Mapped[str | None] = mapped_column(String(64))
    total: Mapped[int] = mapped_column(Integer, default=0)
    completed: Mapped[int] = mapped_column(Integer, default=0)
    failed: Mapped[int] = mapped_column(Integer, default=0)
    prompt_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    completion_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    errors: Mapped[list[Any] | None] = mapped_column(JSON)  # batch-level errors ({code, message})
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    in_progress_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finalizing_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    failed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    expired_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    cancelling_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    cancelled_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class BatchResult(Base):
    """One finished line of a batch that is still running: its output or error file line, written
    as lines finish (a resumed attempt skips these lines); moved into the files when it ends."""

    __tablename__ = "batch_results"
    __table_args__ = (UniqueConstraint("batch_id", "line", name="uq_batch_result"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    batch_id: Mapped[str] = mapped_column(ForeignKey("batches.id"), index=True)
    line: Mapped[int] = mapped_column(Integer)  # 0-based index of the input line
    ok: Mapped[bool] = mapped_column(Boolean)  # True: the output file; False: the error file
    record: Mapped[str] = mapped_column(Text)  # the file's JSONL line
    prompt_tokens: Mapped[int] = mapped_column(Integer, default=0)
    completion_tokens: Mapped[int] = mapped_column(Integer, default=0)


# The loop tables live in their own module (this one is long enough); importing it here registers
# them on Base for every reader of the metadata (Alembic, the schema check).
from studio.store import loop_models as _loop_models  # noqa: E402,F401
from studio.store import log_models as _log_models  # noqa: E402,F401
