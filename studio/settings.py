"""Studio-wide settings, read from ``STUDIO_*`` environment variables.

Everything defaults to a self-contained layout under ``STUDIO_HOME`` (``./.studio``) so a laptop
needs no configuration; a cluster overrides the database, artifact store, MLflow and Redis by URL.
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from studio.errors import StudioError


class StudioSettings(BaseSettings):
    """Process-wide configuration. Every field maps to ``STUDIO_<FIELD>`` in the environment."""

    model_config = SettingsConfigDict(env_prefix="STUDIO_", extra="ignore")

    home: Path = Field(
        default=Path(".studio"),
        description="Root for the database, artifacts, MLflow, models and logs (STUDIO_HOME).",
    )
    database_url: str | None = Field(
        default=None,
        description="SQLAlchemy URL of the state store; default sqlite:///$STUDIO_HOME/studio.db.",
    )
    artifacts_uri: str | None = Field(
        default=None,
        description="fsspec URI of the artifact store; default $STUDIO_HOME/artifacts.",
    )
    mlflow_uri: str | None = Field(
        default=None,
        description="MLflow tracking URI; default sqlite under $STUDIO_HOME.",
    )
    redis_url: str | None = Field(
        default=None, description="Redis URL for the gateway cache; unset means in-process cache."
    )
    http_host: str = Field(default="127.0.0.1", description="Host the HTTP front door binds.")
    http_port: int = Field(default=8000, ge=1, le=65535, description="Port of the HTTP front door.")
    ray_port: int = Field(
        default=6380,
        ge=1,
        le=65535,
        description="GCS port of the local Ray head started by `studio up` (6379 is Redis here).",
    )
    ray_num_cpus: int = Field(
        default=8,
        ge=1,
        description="Logical CPUs the local Ray head advertises; more than cores so light "
        "deployments, train workers and engines can all be placed on a small machine.",
    )
    dashboard_port: int = Field(default=8265, ge=1, le=65535, description="Ray dashboard port.")
    mlflow_ui: bool = Field(
        default=True,
        description="`studio up` starts the MLflow UI (`mlflow server` on the studio's own tracking "
        "store) and `studio down` stops it (STUDIO_MLFLOW_UI=0: not). Never started for a remote "
        "tracking URI (STUDIO_MLFLOW_URI=http…), whose own server is the UI.",
    )
    mlflow_host: str = Field(default="127.0.0.1", description="Interface the MLflow UI binds (STUDIO_MLFLOW_HOST).")
    mlflow_port: int = Field(default=5000, ge=1, le=65535, description="Port of the MLflow UI (STUDIO_MLFLOW_PORT).")
    mlflow_ui_url: str | None = Field(
        default=None,
        description="Where the links to runs and registered model versions point (STUDIO_MLFLOW_UI_URL); "
        "default: the tracking URI when it is an http(s) server, else the local UI "
        "(http://STUDIO_MLFLOW_HOST:STUDIO_MLFLOW_PORT) when STUDIO_MLFLOW_UI is on, else no links.",
    )
    mlflow_sync_interval_s: float = Field(
        default=60.0, gt=0,
        description="How often the scheduler checks that MLflow's model registry mirrors the studio's "
        "(STUDIO_MLFLOW_SYNC_INTERVAL_S): versions missed while MLflow was down, aliases moved by "
        "loops and auto-promotion.",
    )
    serve_fast_path: bool = Field(
        default=True,
        description="Start the local Ray head in Ray Serve's high-throughput mode (HAProxy in "
        "front, the ingress replica serving HTTP itself, gRPC between replicas): about half the "
        "per-request latency and CPU of the Python proxy. Off: Serve's default proxy.",
    )
    serve_isolate_engine: bool = Field(
        default=False,
        description="On CPU, once a model's vLLM engine is up, bind every other process of the stack "
        "(Ray's own, the Serve replicas, HAProxy) to the cores the engine is not bound to "
        "(STUDIO_SERVE_ISOLATE_ENGINE): +15-25 % tokens/s at 8 clients on 2 cores; what Ray starts "
        "later on the node (training workers, another engine) shares the cores left. For a node that serves.",
    )
    train_worker_resources: dict[str, float] = Field(
        default_factory=dict,
        description="Custom Ray resources every training worker reserves on top of CPU/GPU, as JSON, "
        'e.g. {"training": 1} on a cluster whose training worker group alone advertises it '
        "(cluster/aws.yaml): training then never lands on, or starves, the serving GPUs.",
    )
    cluster_max_gpus: int | None = Field(
        default=None, ge=0,
        description="GPUs the cluster can autoscale to. Set: a GPU job is refused only when it asks "
        "for more than this, and otherwise waits for the autoscaler (an autoscaling cluster may "
        "have 0 GPUs attached). Unset: the GPUs attached now are the limit.",
    )
    admin_key: str | None = Field(
        default=None,
        description="Admin API key to register at `studio up` instead of generating one.",
    )
    data_roots: str | None = Field(
        default=None,
        description="Directories / URL prefixes (comma-separated) under which an admin key may name "
        "server paths over HTTP (STUDIO_DATA_ROOTS): ingest, export to a path, tokenizer folders; "
        "default: STUDIO_HOME and the artifact store. Non-admin keys name no server path.",
    )
    upload_max_bytes: int = Field(
        default=2 * 1024**3, ge=1,
        description="Largest dataset upload accepted over HTTP, in bytes (STUDIO_UPLOAD_MAX_BYTES).",
    )
    max_body_mb: float = Field(
        default=10.0, gt=0,
        description="Largest request body any other HTTP request may send, in MiB (STUDIO_MAX_BODY_MB); "
        "past it the API answers 413 while reading, Content-Length or not.",
    )
    max_streams_per_key: int = Field(
        default=8, ge=1,
        description="Follow-streams (job logs, eval and synth events) one key may hold open at once "
        "in one API replica (STUDIO_MAX_STREAMS_PER_KEY); the next one is a 429.",
    )
    stream_idle_s: float = Field(
        default=900.0, gt=0,
        description="A follow-stream with no event for this long ends with an `error` event saying "
        "so (STUDIO_STREAM_IDLE_S); heartbeats do not count.",
    )
    stream_max_s: float = Field(
        default=1800.0, gt=0,
        description="Longest a follow-stream stays open (STUDIO_STREAM_MAX_S); it then ends with an "
        "`error` event and the client reconnects. Keep it under Serve's request_timeout_s (1860 s "
        "in configs/serve/*.yaml).",
    )
    egress_allow: str | None = Field(
        default=None,
        description="Hosts, IP addresses or CIDRs (comma-separated) that URLs fetched for a caller "
        "(BYO evaluator, init_adapter, dataset URLs) may reach although they are loopback, private, "
        "link-local or metadata addresses (STUDIO_EGRESS_ALLOW); default: none, only public "
        "addresses. A metadata address (169.254.169.254…) opens only when listed by itself.",
    )
    reward_allowlist: str | None = Field(
        default=None,
        description="GRPO `python` rewards allowed besides studio.train.rewards' own, comma-separated "
        "`module:function` or `module:*` (STUDIO_REWARD_ALLOWLIST); anything else is refused "
        "before it is imported.",
    )
    max_n: int = Field(
        default=8, ge=1,
        description="Most choices (`n`, `best_of`) one /v1 or /gateway/v1 request may ask for "
        "(STUDIO_MAX_N).",
    )
    max_tokens: int = Field(
        default=8192, ge=1,
        description="Most tokens (`max_tokens`, `max_completion_tokens`) one /v1 or /gateway/v1 "
        "request may ask for (STUDIO_MAX_TOKENS).",
    )
    data_ray_min_bytes: int = Field(
        default=256 * 1024**2, ge=0,
        description="Inputs at least this large ingest through Ray Data (STUDIO_DATA_RAY_MIN_BYTES); "
        "smaller ones stream in-process, which skips Ray's start-up cost.",
    )
    job_heartbeat_s: float = Field(
        default=10.0, gt=0,
        description="Seconds between two heartbeats of a running job's process (`jobs.heartbeat_at`, "
        "STUDIO_JOB_HEARTBEAT_S); the scheduler fails a job run outside Ray whose beats stop for its "
        "`heartbeat_timeout_s`, so keep it well below that. Passed to jobs.",
    )

    batch_concurrency: int = Field(
        default=32, ge=1, le=1024,
        description="Calls one batch (/v1/batches) keeps in flight through the gateway "
        "(STUDIO_BATCH_CONCURRENCY): wide enough for the engine to batch them; also the batch "
        "job's concurrency cap at the gateway. Read when a batch is created.",
    )
    batch_max_lines: int = Field(
        default=50_000, ge=1,
        description="Most requests (lines) one batch input file may hold (STUDIO_BATCH_MAX_LINES); "
        "a file with more is refused with 400 when the batch is created.",
    )
    batch_file_max_bytes: int = Field(
        default=200 * 1024**2, ge=1,
        description="Largest file accepted by POST /v1/files, in bytes (STUDIO_BATCH_FILE_MAX_BYTES); "
        "past it the upload is refused with 413 while it is read.",
    )

    @property
    def home_abs(self) -> Path:
        # Ray workers run in another cwd, so everything handed to them must be absolute.
        return self.home.expanduser().resolve()

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{self.home_abs / 'studio.db'}"

    @property
    def artifacts(self) -> str:
        return self.artifacts_uri or str(self.home_abs / "artifacts")

    @property
    def mlflow(self) -> str:
        return self.mlflow_uri or f"sqlite:///{self.home_abs / 'mlflow.db'}"

    @property
    def models_dir(self) -> Path:
        return self.home_abs / "models"

    @property
    def logs_dir(self) -> Path:
        return self.home_abs / "logs"

    @property
    def admin_key_file(self) -> Path:
        return self.home_abs / "admin.key"

    @property
    def base_url(self) -> str:
        return f"http://{self.http_host}:{self.http_port}"


HOME_VARS = ("${STUDIO_HOME}", "$STUDIO_HOME")
_VARIABLE = re.compile(r"\$(?:\{([^}]*)\}|([A-Za-z_][A-Za-z0-9_]*))")


def expand_home(value: str, home: Path, *, field: str) -> str:
    """A path field of a recipe with a leading ``${STUDIO_HOME}`` / ``$STUDIO_HOME`` read against
    ``home`` (the settings' home, made absolute: never the process's cwd). No other variable is
    expanded: one left in the path is an error naming the field, never a literal ``$FOO`` (and a
    recipe sent over HTTP can't read the server's environment into a path or an error message)."""
    rest = value
    for var in HOME_VARS:
        if value == var or value.startswith(var + "/"):
            rest = value[len(var):]
            value = str(home) + rest
            break
    match = _VARIABLE.search(rest)
    if match is None:
        return value
    name = match.group(1) if match.group(1) is not None else match.group(2)
    if name == "STUDIO_HOME":
        raise StudioError(f"{field}: {value!r} has ${{STUDIO_HOME}} inside the path; it is expanded only at "
                          "the start", f"write {field} as ${{STUDIO_HOME}}/<path under the studio's home>")
    raise StudioError(f"{field}: {value!r} names the variable {match.group(0)}, which recipes do not expand "
                      "(only a leading ${STUDIO_HOME} is)",
                      f"write {field} as ${{STUDIO_HOME}}/..., an absolute path, or a path relative to the cwd")


@lru_cache
def get_settings() -> StudioSettings:
    return StudioSettings()


def settings_env(settings: StudioSettings) -> dict[str, str]:
    """The settings as ``STUDIO_*`` env vars for Ray workers and replicas, which run in another cwd:
    STUDIO_HOME is made absolute so every process resolves the same store."""
    env = {"STUDIO_HOME": str(settings.home_abs)}
    for name in ("database_url", "artifacts_uri", "mlflow_uri", "redis_url"):
        value = getattr(settings, name)
        if value:
            env[f"STUDIO_{name.upper()}"] = value
    if settings.train_worker_resources:
        env["STUDIO_TRAIN_WORKER_RESOURCES"] = json.dumps(settings.train_worker_resources)
    if settings.cluster_max_gpus is not None:
        env["STUDIO_CLUSTER_MAX_GPUS"] = str(settings.cluster_max_gpus)
    for name in ("egress_allow", "reward_allowlist"):  # jobs check evaluator URLs and rewards again
        value = getattr(settings, name)
        if value:
            env[f"STUDIO_{name.upper()}"] = value
    env["STUDIO_MAX_N"], env["STUDIO_MAX_TOKENS"] = str(settings.max_n), str(settings.max_tokens)
    env["STUDIO_JOB_HEARTBEAT_S"] = str(settings.job_heartbeat_s)
    # The ingress replicas enforce these (docs/security.md, Limits).
    for name in ("upload_max_bytes", "max_body_mb", "max_streams_per_key", "stream_idle_s", "stream_max_s",
                 "batch_concurrency", "batch_max_lines", "batch_file_max_bytes"):
        env[f"STUDIO_{name.upper()}"] = str(getattr(settings, name))
    # The API's links to the MLflow UI, and the scheduler's registry mirror.
    for name in ("mlflow_ui", "mlflow_host", "mlflow_port", "mlflow_sync_interval_s"):
        env[f"STUDIO_{name.upper()}"] = str(getattr(settings, name))
    if settings.mlflow_ui_url:
        env["STUDIO_MLFLOW_UI_URL"] = settings.mlflow_ui_url
    env["STUDIO_HTTP_HOST"] = settings.http_host
    env["STUDIO_HTTP_PORT"] = str(settings.http_port)
    return env
