"""The local stack: a Ray head (started here, or joined via RAY_ADDRESS) running the studio's Serve
application. ``studio up`` / ``studio status`` / ``studio down`` are thin wrappers over this.

The head is started as ``ray start --head --block`` in its own process group, and its PID is kept in
``$STUDIO_HOME/ray-head.json``; ``down`` stops exactly that process group (never other Ray clusters
on the machine, as ``ray stop`` would).
"""

from __future__ import annotations

import importlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import httpx

from studio.errors import StudioError, Unavailable
from studio.ray_connection import (APP_NAME, HeadState, connect, kill_session, pid_alive, read_state, reap_dead_head,
                                   state_file)
from studio.ray_auth import ray_auth_token, restrict_token_file
from studio.recipes import read_yaml
from studio.settings import StudioSettings, settings_env

DEFAULT_SERVE_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "serve" / "studio_api.yaml"


def _port_open(host: str, port: int, timeout_s: float = 0.5) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(timeout_s)
        return s.connect_ex((host, port)) == 0


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        return s.getsockname()[1]


# Ray Serve's own high-throughput mode (docs.ray.io: "Enable High Throughput on Ray Serve"): HAProxy
# as the HTTP front door, ingress replicas that serve HTTP themselves (no Python proxy hop), gRPC
# between replicas. Ray's processes read it at import, so it goes in the environment Ray starts
# with. An ingress replica holds on for the draining period before it stops, so HAProxy can take it
# out of rotation first: Ray's 30 s default suits a cloud load balancer, HAProxy on the node needs
# ~1 s.
SERVE_FAST_PATH_ENV = {
    "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
    "RAY_SERVE_ENABLE_HA_PROXY": "1",
    "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "2",
    # The bundle would run each replica's handle router on its event loop, which makes a handle
    # unusable from a worker thread; the API's deploy/evict (studio.serving.lifecycle, shared with
    # the CLI) calls the Router from one.
    "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "1",
}
# HAProxy's stats page and Prometheus exporter bind fixed ports (8404, 9101); a second Ray with
# Serve on the machine (tests, a benchmark) would collide, so each Ray gets free ones, and they are
# bound to 127.0.0.1 (Ray binds them on every interface; see studio.haproxy).
HAPROXY_PORT_VARS = ("RAY_SERVE_HAPROXY_STATS_PORT", "RAY_SERVE_HAPROXY_METRICS_PORT")


def serve_env(settings: StudioSettings) -> dict[str, str]:
    """Ray Serve's env vars for a Ray this studio starts (``studio up``'s head, the tests' and the
    benchmarks' local Ray): the fast path unless ``STUDIO_SERVE_FAST_PATH=0``. Values already in
    the environment win, so a user's own Ray Serve tuning is kept."""
    if not settings.serve_fast_path:
        return {}
    from studio.haproxy import loopback_env

    env = {**SERVE_FAST_PATH_ENV, **{var: str(_free_port()) for var in HAPROXY_PORT_VARS}}
    return {**{k: os.environ.get(k, v) for k, v in env.items()}, **loopback_env(settings)}


def _ray_executable() -> str:
    return str(Path(sys.executable).with_name("ray"))


# Not in the head's environment, which every Ray worker (a job too) inherits; nor are provider keys
# (``up`` names them): deployments.app hands them to the gateway replicas' runtime_env only.
HEAD_WITHHELD = ("STUDIO_ADMIN_KEY", "STUDIO_API_KEY")


def interpreter_env(env: dict[str, str]) -> dict[str, str]:
    """PATH (and VIRTUAL_ENV) that make ``python`` in a Ray job's entrypoint (``ray job submit --
    python -m studio.train.run …``) this interpreter, with the studio's packages, however the
    head was started (``.venv/bin/studio up`` from a shell where the venv is not active)."""
    bin_dir = str(Path(sys.executable).parent)
    path = [p for p in env.get("PATH", "").split(os.pathsep) if p and p != bin_dir]
    out = {"PATH": os.pathsep.join([bin_dir, *path])}
    if sys.prefix != sys.base_prefix:  # a virtual environment
        out["VIRTUAL_ENV"] = sys.prefix
    return out


def start_head(settings: StudioSettings, wait_s: float = 90.0, withhold: tuple[str, ...] = ()) -> HeadState:
    """Start a local Ray head (or return the running one this STUDIO_HOME started), its
    environment without ``HEAD_WITHHELD`` and ``withhold``."""
    state = read_state(settings)
    if state and pid_alive(state.pid):
        return state
    if state:  # the head this home started died without `studio down` (kill -9, a crash)
        reap_dead_head(settings, state.pid)
        state_file(settings).unlink(missing_ok=True)
        _forget_current_cluster(settings)
    if _port_open("127.0.0.1", settings.ray_port):
        raise StudioError(
            f"port {settings.ray_port} (the Ray head's GCS port) is taken by another process",
            "stop it, join that cluster with RAY_ADDRESS=127.0.0.1:PORT, or set STUDIO_RAY_PORT",
        )
    if _port_open("127.0.0.1", settings.dashboard_port):
        raise StudioError(
            f"port {settings.dashboard_port} (the Ray dashboard) is taken by another process",
            "stop it or set STUDIO_DASHBOARD_PORT",
        )
    settings.logs_dir.mkdir(parents=True, exist_ok=True)
    log_path = settings.logs_dir / "ray-head.log"
    cmd = [
        _ray_executable(), "start", "--head", "--block",
        "--node-ip-address=127.0.0.1",
        f"--port={settings.ray_port}",
        f"--num-cpus={settings.ray_num_cpus}",
        "--include-dashboard=true",
        "--dashboard-host=127.0.0.1",
        f"--dashboard-port={settings.dashboard_port}",
        # The dashboard agent's HTTP port (fixed 52365 by default) is what job submission goes
        # through; a second Ray on the machine holding 52365 leaves this head with "No available
        # agent to submit job" forever. A free port of its own avoids that.
        f"--dashboard-agent-listen-port={_free_port()}",
        "--disable-usage-stats",
    ]
    env = {**os.environ, **settings_env(settings), **serve_env(settings)}
    for var in ("RAY_ADDRESS", *HEAD_WITHHELD, *withhold):
        env.pop(var, None)
    # On SIGTERM the head drains for up to 30 s by default (for rolling upgrades on Kubernetes);
    # a local single-node stack has no other node to drain to.
    env.setdefault("RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S", "2")
    env.update(interpreter_env(env))
    _ensure_ray_token(env)
    with log_path.open("ab") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True, cwd=str(settings.home_abs))
    state = HeadState(proc.pid, f"127.0.0.1:{settings.ray_port}",
                      f"http://127.0.0.1:{settings.dashboard_port}", str(log_path))
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log_path.read_text(errors="replace").splitlines()[-15:]
            raise StudioError("the Ray head exited while starting:\n  " + "\n  ".join(tail),
                              f"see {log_path}")
        if _port_open("127.0.0.1", settings.ray_port) and _dashboard_up(state.dashboard_url):
            state_file(settings).write_text(json.dumps(asdict(state)))
            return state
        time.sleep(0.5)
    _kill_group(proc.pid)
    raise Unavailable(f"the Ray head did not come up within {wait_s:.0f} s", f"see {log_path}")


def _dashboard_up(url: str) -> bool:
    token = ray_auth_token()
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        return httpx.get(f"{url}/api/version", headers=headers, timeout=1.0).status_code == 200
    except httpx.HTTPError:
        return False


def _ensure_ray_token(env: dict[str, str]) -> None:
    """The local head runs with Ray token auth (RAY_AUTH_MODE=token unless the user chose otherwise);
    a token is generated once at Ray's default path, where local clients find it."""
    env.setdefault("RAY_AUTH_MODE", "token")
    if env["RAY_AUTH_MODE"] == "token" and ray_auth_token() is None:
        subprocess.run([_ray_executable(), "get-auth-token", "--generate"], env=env, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    restrict_token_file()  # Ray writes it 644: readable by every user of the machine


def _kill_group(pid: int, timeout_s: float = 45.0, gone_s: float = 15.0) -> None:
    """SIGTERM the `ray start --block` process, which drains the node (Serve quiesces its proxy)
    and stops its children; then SIGKILL whatever of its session is left and wait (up to
    ``gone_s``) until it has gone. The session, not the process group: `studio up` starts the head
    as a session leader, and Ray starts each worker (actors, Serve replicas and the vLLM engines they
    spawn) in a process group of its own, which would otherwise outlive the head by as long as it
    takes them to notice the raylet went (seconds, under load)."""
    try:
        pgid = os.getpgid(pid)
        sid = os.getsid(pid)
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            break
        time.sleep(0.3)
    try:
        os.killpg(pgid, signal.SIGKILL)  # whatever of the group is left
    except ProcessLookupError:
        pass
    if sid == pid:  # a session of its own: what is still in it is the head's
        kill_session(sid, gone_s)


def health(settings: StudioSettings, timeout_s: float = 2.0) -> dict[str, Any] | None:
    try:
        r = httpx.get(f"{settings.base_url}/healthz", timeout=timeout_s)
    except httpx.HTTPError:
        return None
    if r.status_code != 200:
        return None
    try:
        body = r.json()
    except ValueError:
        return None
    return body if body.get("status") == "ok" else None


def _listener(port: int):
    """The process listening on ``port`` (a psutil.Process), or None."""
    import psutil

    for conn in psutil.net_connections(kind="tcp"):
        if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port and conn.pid:
            try:
                return psutil.Process(conn.pid)
            except psutil.Error:
                return None
    return None


def front_door(settings: StudioSettings) -> str | None:
    """Which process listens on the HTTP port: ``haproxy`` on the fast path, a Ray Serve proxy
    actor otherwise; None when nothing listens (or it belongs to another user)."""
    import psutil

    proc = _listener(settings.http_port)
    try:
        name = proc.name() if proc else None
    except psutil.Error:
        return None
    return "haproxy" if name and "haproxy" in name else name


def load_serve_config(path: str | Path | None = None) -> dict[str, Any]:
    """The studio application's entry of a Serve config file (name, import_path, args)."""
    path = Path(path) if path else DEFAULT_SERVE_CONFIG
    cfg = read_yaml(path)
    for app in cfg.get("applications") or []:
        if app.get("name") == APP_NAME:
            return app
    raise StudioError(f"{path} has no application named {APP_NAME!r}", "add it under `applications:`")


def serve_timeouts(path: str | Path | None = None) -> dict[str, Any]:
    """The config file's HTTP timeouts (``request_timeout_s``, ``keep_alive_timeout_s``); its host
    and port give way to STUDIO_HTTP_HOST/PORT. Applied only when Serve starts."""
    http = read_yaml(Path(path) if path else DEFAULT_SERVE_CONFIG).get("http_options") or {}
    return {k: http[k] for k in ("request_timeout_s", "keep_alive_timeout_s") if k in http}


def app_builder(app_cfg: dict[str, Any], serve_config: str | Path | None = None
                ) -> Callable[[dict[str, Any]], Any]:
    """The application builder the Serve config names (``import_path: module:function``), as
    ``serve run`` finds it: the launcher deploys whatever the config names, and knows no module of
    ``deployments/`` itself."""
    path = app_cfg.get("import_path")
    module, _, attr = str(path or "").partition(":")
    where = f"{serve_config or DEFAULT_SERVE_CONFIG}: application {APP_NAME!r}"
    if not module or not attr:
        raise StudioError(f"{where} has import_path {path!r}",
                          "name the builder as module:function, e.g. deployments.app:build_app")
    try:
        builder = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as e:
        raise StudioError(f"{where}: cannot import {path!r} ({e})",
                          "check import_path; the module must be importable here and on the cluster"
                          ) from e
    if not callable(builder):
        raise StudioError(f"{where}: {path!r} is not callable", "name a builder function")
    return builder


def deploy(settings: StudioSettings, serve_config: str | Path | None = None, wait_s: float = 180.0) -> None:
    """Deploy (or update) the studio application on the connected Ray cluster."""
    from ray import serve

    app_cfg = load_serve_config(serve_config)
    builder = app_builder(app_cfg, serve_config)
    connect(settings)
    serve.start(http_options={"host": settings.http_host, "port": settings.http_port,
                              **serve_timeouts(serve_config)})
    serve.run(builder(app_cfg.get("args") or {}), name=APP_NAME,
              route_prefix=app_cfg.get("route_prefix", "/"), blocking=False)
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if health(settings):
            return
        time.sleep(0.5)
    raise Unavailable(f"the studio did not answer {settings.base_url}/healthz within {wait_s:.0f} s",
                      "see the Serve logs in the Ray dashboard")


def up(settings: StudioSettings, serve_config: str | Path | None = None) -> HeadState | None:
    """Start or join Ray and deploy the app, and the MLflow UI (``studio.mlflow_server``, started
    first so it comes up while Ray does). Returns the head state when we started the head."""
    from studio import mlflow_server
    from studio.keys import check_admin_secret
    from studio.serving.app_config import provider_key_envs

    if settings.admin_key:
        check_admin_secret(settings.admin_key)  # before anything starts
    settings.home_abs.mkdir(parents=True, exist_ok=True)
    if health(settings):
        pass  # already serving: redeploy below updates it in place
    elif _port_open(settings.http_host, settings.http_port):
        raise StudioError(
            f"port {settings.http_port} on {settings.http_host} is taken by another program",
            "stop that program or choose another port with STUDIO_HTTP_PORT=8001",
        )
    ui = mlflow_server.start(settings)
    try:
        state = None
        if not os.environ.get("RAY_ADDRESS"):
            before = read_state(settings)
            state = start_head(settings, withhold=provider_key_envs(load_serve_config(serve_config).get("args")))
            if before is None or before.pid != state.pid:
                restoring(settings)
        deploy(settings, serve_config)
    except BaseException:
        if ui.started:  # a failed `up` leaves no UI of its own behind
            mlflow_server.stop(settings)
        raise
    return state


def restoring(settings: StudioSettings) -> list[str]:
    """On a Ray head just started: the runtime deployments that were live (the head, and their
    Serve applications, went away) are marked RESTORING; the Router deploys them again in the
    background once the studio application runs (``studio.serving.restore``)."""
    from studio.serving.restore import mark_restoring

    return mark_restoring(settings, running_apps=(), fresh=True)


def down(settings: StudioSettings) -> bool:
    """Stop the application; stop the Ray head too if this STUDIO_HOME started it, and its MLflow UI."""
    from studio import mlflow_server

    state = read_state(settings)
    stopped = mlflow_server.stop(settings)
    if os.environ.get("RAY_ADDRESS"):
        import ray
        from ray import serve

        connect(settings)
        serve.delete(APP_NAME)
        ray.shutdown()
        stopped = True
    if state is not None:
        if pid_alive(state.pid):
            _kill_group(state.pid)
            stopped = True
        else:
            stopped = bool(reap_dead_head(settings, state.pid)) or stopped
        state_file(settings).unlink(missing_ok=True)
        _forget_current_cluster(settings)
    return stopped


def _forget_current_cluster(settings: StudioSettings) -> None:
    # Ray records the last head it started in /tmp/ray/ray_current_cluster, and `ray.init()` /
    # `serve run` without an address then try to join it, hanging on a head that is gone.
    marker = Path("/tmp/ray/ray_current_cluster")
    try:
        if marker.read_text().strip().endswith(f":{settings.ray_port}"):
            marker.unlink()
    except OSError:
        pass


def ensure_admin_key(settings: StudioSettings) -> tuple[Path, bool]:
    """Make sure an admin key exists. The first one is STUDIO_ADMIN_KEY if set, else generated;
    its secret is written to $STUDIO_HOME/admin.key (mode 600). Returns (file, created_now)."""
    from studio.keys import Role, create_key, has_admin, hash_key
    from studio.store.db import session_scope
    from studio.store.models import ApiKey

    path = settings.admin_key_file
    with session_scope(settings.db_url) as s:
        if settings.admin_key:
            known = s.query(ApiKey).filter(ApiKey.key_hash == hash_key(settings.admin_key)).first()
            if known is None:
                create_key(s, f"admin-{int(time.time())}", Role.admin, secret=settings.admin_key)
                return path, True
            return path, False
        if has_admin(s):
            return path, False
        secret, _ = create_key(s, f"admin-{int(time.time())}", Role.admin)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secret + "\n")
    return path, True
