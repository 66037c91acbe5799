"""Links into the MLflow UI: a training job's run and a registered model version's page; and the
MLflow client every writer (training's tracking, the registry's mirror) uses (``mlflow_client``).

The UI is whatever ``StudioSettings.mlflow_ui_url`` names, else the tracking server itself when the
tracking URI is http(s) (an MLflow tracking server serves its UI on the same address), else the
local UI ``studio up`` starts (``studio.mlflow_server``) unless STUDIO_MLFLOW_UI=0. The MLflow UI
routes with the URL's fragment (``#/runs/<id>``, ``#/models/<name>/versions/<n>``).
"""

from __future__ import annotations

import os
from urllib.parse import quote, urlsplit, urlunsplit

from studio.settings import StudioSettings

# MLflow's HTTP client retries 7 times with doubling backoff (~4 minutes) before it gives up on a
# server that is down; a training job (and a registration) should not wait that long for a
# best-effort record. A user's own setting wins.
HTTP_RETRY_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_TIMEOUT": "20"}


def mlflow_client(tracking_uri: str):
    """An ``MlflowClient`` for ``tracking_uri`` with the studio's HTTP retry defaults (mlflow is
    imported on first use)."""
    from mlflow.tracking import MlflowClient

    for var, value in HTTP_RETRY_DEFAULTS.items():
        os.environ.setdefault(var, value)
    return MlflowClient(tracking_uri=tracking_uri)


def is_remote(tracking_uri: str) -> bool:
    return tracking_uri.startswith(("http://", "https://"))


def ui_url(settings: StudioSettings) -> str | None:
    """The MLflow UI's base URL, or None when there is none to link to."""
    if settings.mlflow_ui_url:
        return settings.mlflow_ui_url.rstrip("/")
    if is_remote(settings.mlflow):
        parts = urlsplit(settings.mlflow)
        # Never hand credentials in a tracking URI (https://user:token@host) to a browser.
        netloc = parts.hostname or ""
        if parts.port:
            netloc += f":{parts.port}"
        return urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))
    if settings.mlflow_ui:
        return local_ui_url(settings)
    return None


def local_ui_url(settings: StudioSettings) -> str:
    host = "127.0.0.1" if settings.mlflow_host in ("0.0.0.0", "::") else settings.mlflow_host
    return f"http://{host}:{settings.mlflow_port}"


def run_url(settings: StudioSettings, run_id: str | None) -> str | None:
    base = ui_url(settings)
    return f"{base}/#/runs/{quote(run_id, safe='')}" if base and run_id else None


def version_url(settings: StudioSettings, name: str, version: int) -> str | None:
    base = ui_url(settings)
    return f"{base}/#/models/{quote(name, safe='')}/versions/{version}" if base else None
