"""MLflow tracking of training jobs: one experiment per registry name, one run per job (a retry
continues the job's run), params from the spec, per-step metrics, the final adapter as an artifact.

Everything goes through ``MlflowClient`` with an explicit tracking URI, never MLflow's process-global
"active run": the driver and the rank-0 worker are different processes (often on different nodes)
writing to the same run. The experiment's artifact location is set explicitly under the studio's
artifact store, because with a SQL backend MLflow would otherwise write to ``./mlruns`` of whatever
directory the process happens to run in.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from studio.store.artifacts import ArtifactStore


def _client(tracking_uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri)


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
              params: dict[str, Any], tags: dict[str, str], run_id: str | None = None) -> str:
    """Create the job's run (or reopen ``run_id`` on a retry) and return its id."""
    from mlflow.entities import Param, RunTag

    client = _client(tracking_uri)
    if run_id:
        client.update_run(run_id, status="RUNNING")
        return run_id
    exp = client.get_experiment_by_name(experiment)
    exp_id = exp.experiment_id if exp else client.create_experiment(experiment, artifact_location=artifact_root)
    run = client.create_run(exp_id, run_name=run_name, tags=tags)
    items = list(flatten(params).items())
    for i in range(0, len(items), 100):  # log_batch takes at most 100 params per call
        client.log_batch(run.info.run_id, params=[Param(k, v) for k, v in items[i:i + 100]])
    client.log_batch(run.info.run_id, tags=[RunTag(k, v) for k, v in tags.items()])
    return run.info.run_id


def log_metrics(tracking_uri: str, run_id: str, metrics: dict[str, float], step: int) -> None:
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    batch = [Metric(k, float(v), now, step) for k, v in metrics.items()]
    if batch:
        _client(tracking_uri).log_batch(run_id, metrics=batch)


def log_artifacts(tracking_uri: str, run_id: str, local_dir: str | Path, artifact_path: str) -> None:
    _client(tracking_uri).log_artifacts(run_id, str(local_dir), artifact_path)


def end_run(tracking_uri: str, run_id: str, status: str) -> None:
    """``status``: FINISHED, FAILED or KILLED."""
    _client(tracking_uri).set_terminated(run_id, status=status)
