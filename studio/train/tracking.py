"""MLflow tracking of training jobs: one experiment per registry name, one run per job (a retry
continues the job's run), params from the spec, per-step metrics, the final adapter as an artifact.

Everything goes through ``MlflowClient`` with an explicit tracking URI, never MLflow's process-global
"active run": the driver and the rank-0 worker are different processes (often on different nodes)
writing to the same run. The experiment's artifact location is set explicitly under the studio's
artifact store, because with a SQL backend MLflow would otherwise write to ``./mlruns`` of whatever
directory the process happens to run in.

Tracking is best effort: MLflow down (a remote tracking server stopped, unreachable) never fails a
training job. The job's metrics are in the studio's database anyway (``job_metrics``); a failed call
is logged, and further calls to that tracking URI are skipped for ``SKIP_AFTER_FAILURE_S`` so a
run of steps does not each wait on MLflow's retries. A job started while MLflow was down has no run
(``mlflow_run_id`` stays null); its registered version is mirrored later all the same
(``studio.registry.mlflow_mirror``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from studio.mlflow_links import mlflow_client
from studio.store.artifacts import ArtifactStore

logger = logging.getLogger(__name__)
T = TypeVar("T")
SKIP_AFTER_FAILURE_S = 60.0
_failed_at: dict[str, float] = {}  # tracking URI -> monotonic time of its last failed call

def _best_effort(tracking_uri: str, what: str, call: Callable[[], T], default: T) -> T:
    """``call()``, or ``default`` (logged) when MLflow fails or failed less than
    ``SKIP_AFTER_FAILURE_S`` ago."""
    failed = _failed_at.get(tracking_uri)
    if failed is not None and time.monotonic() - failed < SKIP_AFTER_FAILURE_S:
        return default
    try:
        result = call()
    except Exception as e:  # noqa: BLE001 — MLflow's REST, SQL and file errors alike: tracking must not fail training
        _failed_at[tracking_uri] = time.monotonic()
        logger.warning("MLflow tracking at %s is unavailable (%s: %s): %s skipped; MLflow calls pause for %.0f s. "
                       "Training goes on (its metrics are in the studio's database).", _safe(tracking_uri),
                       type(e).__name__, str(e).splitlines()[0][:300] if str(e) else "", what,
                       SKIP_AFTER_FAILURE_S)
        return default
    _failed_at.pop(tracking_uri, None)
    return result


def _safe(uri: str) -> str:
    from studio.store.db import redacted_url

    return redacted_url(uri)


def artifact_location(store: ArtifactStore, experiment: str) -> str:
    key = f"mlflow/{experiment}"
    # MLflow wants a URI; a local store path becomes file:///abs/path.
    return Path(store.path(key)).as_uri() if store.protocol == "file" else store.uri(key)


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """``{"hyper": {"learning_rate": 3e-3}}`` → ``{"hyper.learning_rate": "0.003"}`` (None dropped)."""
    out: dict[str, str] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{name}."))
        elif value is not None:
            out[name] = str(value)[:6000]  # MLflow's limit on a param value
    return out


def start_run(tracking_uri: str, *, experiment: str, artifact_root: str, run_name: str,
              params: dict[str, Any], tags: dict[str, str], run_id: str | None = None) -> str | None:
    """Create the job's run (or reopen ``run_id`` on a retry) and return its id; None when MLflow
    is unavailable (the job trains without a run)."""
    if run_id:
        _best_effort(tracking_uri, f"reopening run {run_id}",
                     lambda: mlflow_client(tracking_uri).update_run(run_id, status="RUNNING"), None)
        return run_id
    return _best_effort(tracking_uri, f"creating a run in experiment {experiment!r}",
                        lambda: _create_run(tracking_uri, experiment=experiment, artifact_root=artifact_root,
                                            run_name=run_name, params=params, tags=tags), None)


def _create_run(tracking_uri: str, *, experiment: str, artifact_root: str, run_name: str,
                params: dict[str, Any], tags: dict[str, str]) -> str:
    from mlflow.entities import Param, RunTag

    client = mlflow_client(tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    exp_id = exp.experiment_id if exp else client.create_experiment(experiment, artifact_location=artifact_root)
    run = client.create_run(exp_id, run_name=run_name, tags=tags)
    items = list(flatten(params).items())
    for i in range(0, len(items), 100):  # log_batch takes at most 100 params per call
        client.log_batch(run.info.run_id, params=[Param(k, v) for k, v in items[i:i + 100]])
    client.log_batch(run.info.run_id, tags=[RunTag(k, v) for k, v in tags.items()])
    return run.info.run_id


def log_metrics(tracking_uri: str, run_id: str | None, metrics: dict[str, float], step: int) -> None:
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    batch = [Metric(k, float(v), now, step) for k, v in metrics.items()]
    if batch and run_id:
        _best_effort(tracking_uri, f"logging {len(batch)} metric(s) at step {step}",
                     lambda: mlflow_client(tracking_uri).log_batch(run_id, metrics=batch), None)


def log_artifacts(tracking_uri: str, run_id: str | None, local_dir: str | Path, artifact_path: str) -> None:
    if run_id:
        _best_effort(tracking_uri, f"logging the artifacts {artifact_path!r}",
                     lambda: mlflow_client(tracking_uri).log_artifacts(run_id, str(local_dir), artifact_path), None)


def end_run(tracking_uri: str, run_id: str | None, status: str) -> None:
    """``status``: FINISHED, FAILED or KILLED."""
    if run_id:
        _best_effort(tracking_uri, f"ending run {run_id} as {status}",
                     lambda: mlflow_client(tracking_uri).set_terminated(run_id, status=status), None)


def run_status(tracking_uri: str, run_id: str) -> str | None:
    """The run's status (RUNNING, FINISHED, FAILED, KILLED), or None when MLflow does not answer."""
    return _best_effort(tracking_uri, f"reading run {run_id}",
                        lambda: mlflow_client(tracking_uri).get_run(run_id).info.status, None)
