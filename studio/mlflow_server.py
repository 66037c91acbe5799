"""The MLflow UI of a local studio: ``mlflow server`` on the studio's own tracking store (the same
backend and artifact locations training logs to), started by ``studio up``, stopped by
``studio down``, shown by ``studio status``.

It runs in a process group of its own (a restart of the Ray head leaves it alone), its PID kept in
``$STUDIO_HOME/mlflow-ui.json``; ``down`` stops exactly that group. One worker and no job runner
(``MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false``): a UI for one person, ~0.7 GB in three processes
instead of ~1.4 GB. Not started when the tracking URI is a remote server (that server is the UI),
nor with STUDIO_MLFLOW_UI=0; a port already taken is reported, never fatal to ``studio up``.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx

from studio.mlflow_links import is_remote, local_ui_url, ui_url
from studio.settings import StudioSettings, settings_env


@dataclass
class UiState:
    pid: int
    url: str
    log: str


@dataclass
class UiStatus:
    """``state``: up, starting (the process lives, /health not yet answering), down (not running),
    remote (the tracking server is the UI), off (STUDIO_MLFLOW_UI=0), blocked (port taken)."""

    state: str
    url: str | None
    note: str = ""
    started: bool = False  # by this call (``start``), not found running


def state_file(settings: StudioSettings) -> Path:
    return settings.home_abs / "mlflow-ui.json"


def read_state(settings: StudioSettings) -> UiState | None:
    try:
        return UiState(**json.loads(state_file(settings).read_text()))
    except (OSError, ValueError, TypeError):
        return None


def _alive(state: UiState | None) -> bool:
    """The recorded process still runs and is still an mlflow server (not a reused PID)."""
    if state is None:
        return False
    try:
        import psutil

        proc = psutil.Process(state.pid)
        return proc.status() != psutil.STATUS_ZOMBIE and "mlflow" in " ".join(proc.cmdline())
    except Exception:  # noqa: BLE001 — psutil.Error and friends: no such process, not ours
        return False


def _port_open(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def healthy(url: str, timeout_s: float = 1.0) -> bool:
    try:
        return httpx.get(f"{url}/health", timeout=timeout_s).status_code == 200
    except httpx.HTTPError:
        return False


def command(settings: StudioSettings) -> list[str]:
    from studio.store.artifacts import ArtifactStore
    from studio.train.tracking import artifact_location

    return [str(Path(sys.executable).with_name("mlflow")), "server",
            "--backend-store-uri", settings.mlflow,
            # Experiments made from the UI store their artifacts where the studio's runs do.
            "--default-artifact-root", artifact_location(ArtifactStore(settings.artifacts), "ui"),
            "--no-serve-artifacts",
            "--host", settings.mlflow_host, "--port", str(settings.mlflow_port), "--workers", "1"]


def start(settings: StudioSettings) -> UiStatus:
    """Start the UI in the background (``wait_ready`` waits for it), unless it runs already, is
    off, is remote, or its port is taken."""
    if is_remote(settings.mlflow):
        return UiStatus("remote", ui_url(settings), "the tracking server is the UI")
    if not settings.mlflow_ui:
        return UiStatus("off", None, "STUDIO_MLFLOW_UI=0")
    state = read_state(settings)
    if _alive(state):
        return UiStatus("starting", state.url)
    state_file(settings).unlink(missing_ok=True)
    url = local_ui_url(settings)
    if _port_open("127.0.0.1" if settings.mlflow_host in ("0.0.0.0", "::") else settings.mlflow_host,
                  settings.mlflow_port):
        return UiStatus("blocked", url, f"port {settings.mlflow_port} is taken by another program: the MLflow UI "
                        "was not started; set STUDIO_MLFLOW_PORT to a free port (or STUDIO_MLFLOW_UI=0)")
    settings.logs_dir.mkdir(parents=True, exist_ok=True)
    log_path = settings.logs_dir / "mlflow-ui.log"
    env = {**os.environ, **settings_env(settings), "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    with log_path.open("ab") as log:
        proc = subprocess.Popen(command(settings), stdout=log, stderr=subprocess.STDOUT, env=env,
                                stdin=subprocess.DEVNULL, start_new_session=True, cwd=str(settings.home_abs))
    state_file(settings).write_text(json.dumps(asdict(UiState(proc.pid, url, str(log_path)))))
    return UiStatus("starting", url, started=True)


def wait_ready(settings: StudioSettings, wait_s: float = 60.0) -> UiStatus:
    """Wait for the UI ``start`` launched to answer; ``down`` with the log's tail if it exited."""
    state = read_state(settings)
    if state is None:
        return status(settings)
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if healthy(state.url):
            return UiStatus("up", state.url)
        if not _alive(state):
            tail = " | ".join(Path(state.log).read_text(errors="replace").splitlines()[-3:])
            state_file(settings).unlink(missing_ok=True)
            return UiStatus("down", state.url, f"mlflow server exited: {tail[-400:]} (see {state.log})")
        time.sleep(0.3)
    return UiStatus("starting", state.url, f"not answering after {wait_s:.0f} s (see {state.log})")


def status(settings: StudioSettings) -> UiStatus:
    if is_remote(settings.mlflow):
        return UiStatus("remote", ui_url(settings), "the tracking server is the UI")
    state = read_state(settings)
    if _alive(state):
        return UiStatus("up" if healthy(state.url) else "starting", state.url)
    if not settings.mlflow_ui:
        return UiStatus("off", None, "STUDIO_MLFLOW_UI=0")
    return UiStatus("down", local_ui_url(settings), "`studio up` starts it")


def stop(settings: StudioSettings, timeout_s: float = 10.0) -> bool:
    """Stop the UI ``start`` launched (its process group); True if one was running."""
    state = read_state(settings)
    state_file(settings).unlink(missing_ok=True)
    if not _alive(state):
        return False
    try:
        pgid = os.getpgid(state.pid)
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and _alive(state):
        time.sleep(0.2)
    try:
        os.killpg(pgid, signal.SIGKILL)  # whatever of the group is left (uvicorn's worker)
    except ProcessLookupError:
        pass
    return True
