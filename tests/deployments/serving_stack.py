"""One studio Serve stack for the serving test modules (``SERVING_MODULES``): the studio application
(ingress + Router + a ModelDeployment of the tiny model) on a private local Ray with its own
STUDIO_HOME (SQLite) and a free HTTP port. The package pays for Ray, Serve and the engine once
(≈40-60 s each time on 2 cores) instead of once per module.

The engine is the union of what the modules need: max_model_len 512 (the router's over-long
prompts and 480-token answers), max_loras 4, max_num_seqs 8 (the router's n=8 sequences run at
once), the Hermes tool parser and compact structured outputs (the router's tool calls). The
gateway is off: no module calls it. Replicas differ: the experiments module needs two (hot swap
on every replica), while the router asks its ModelDeployment handle for engine stats and must
reach the replica that holds the stream (Serve sends a call to the less busy replica, the other
one). So the app is deployed from a config (Serve's declarative API), where changing only
``num_replicas`` is an in-place update: scaling 2 → 1 stops one replica and restarts nothing.

Each module registers its own names (registry names, experiment aliases, deployments), so no test
depends on another module's leftovers.

tests/leaks.py lists, at the end of each module, the processes that did not exist when the session
started: the stack's Ray would be listed under the first module that used it. Its processes are
marked as seen while the stack is up (each module ends with that), and those still alive after
the stack closes are handed back to the watch, which reports them under the last module.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import psutil

# The modules that share the stack; conftest.py runs them last in the package (see there).
SERVING_MODULES = ("test_experiments_serving.py", "test_lifecycle.py", "test_model_deployment.py",
                   "test_router.py")
APP_NAME = "studio"
READY_TIMEOUT_S = 300


def stack_args(model_dir: str | Path, replicas: int) -> dict[str, Any]:
    return {"scheduler": {"enabled": False}, "gateway": {"enabled": False}, "models": [{
        "engine": {"model": str(model_dir), "served_model_name": "tiny",
                   "dtype": "float32", "max_model_len": 512, "max_loras": 4, "max_num_seqs": 8,
                   "kv_cache_space_gib": 1, "seed": 0,
                   # tools: the tiny model's template is ChatML + Hermes tool calls
                   "tool_call_parser": "hermes", "enable_auto_tool_choice": True,
                   "structured_outputs_compact": True},
        "num_replicas": replicas, "num_cpus": 0.5}]}


class ServingStack:
    """Started by the first module that asks (``ensure``), with the replicas it asks for; closed
    by the package fixture."""

    def __init__(self, model_dir: Path, home: Path, leak_watch: Any | None):
        self.model_dir = str(model_dir)
        self.home = home
        self.leak_watch = leak_watch  # tests/leaks.LeakWatch, when registered
        self.replicas = 0
        self.url = self.key = self.settings = None
        self._ray_up = False
        self._failed: str | None = None
        self._roots: list[psutil.Process] = []
        self._hidden: set[int] = set()
        self._saved_env: dict[str, str | None] = {}

    # ---- start, scale, close --------------------------------------------------------------------
    def ensure(self, replicas: int) -> ServingStack:
        """The stack with ``replicas`` replicas of the tiny model, started or scaled."""
        if self._failed:  # the modules after the first one fail fast, saying why
            raise RuntimeError(f"the shared studio stack did not start: {self._failed}")
        try:
            if not self.replicas:
                self._start(replicas)
            elif replicas != self.replicas:
                self._deploy(replicas)
        except Exception as e:
            self._failed = f"{type(e).__name__}: {e}"
            raise
        return self

    def _start(self, replicas: int) -> None:
        import ray
        from ray import serve

        from studio.keys import create_key
        from studio.settings import StudioSettings
        from studio.stack import serve_env
        from studio.store.db import init_db, session_scope
        from tests.loopback import free_port

        self._saved_env = {k: os.environ.get(k) for k in ("STUDIO_HOME", "STUDIO_DATABASE_URL")}
        os.environ["STUDIO_HOME"] = str(self.home)
        os.environ.pop("STUDIO_DATABASE_URL", None)
        self.settings = StudioSettings()
        init_db(self.settings.db_url)
        with session_scope(self.settings.db_url) as session:
            self.key, _ = create_key(session, "serving-tests", "admin")
        port = free_port()
        # Serve's fast path, as `studio up` starts its head. The Ray processes inherit this
        # environment now; tests/leaks.py puts the test process's back after each module.
        os.environ.update(serve_env(self.settings))
        before = {p.pid for p in psutil.Process().children()}
        ray.init(address="local", num_cpus=8, include_dashboard=False, logging_level="ERROR")
        self._ray_up = True
        self._roots = [p for p in psutil.Process().children() if p.pid not in before]
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        self.url = f"http://127.0.0.1:{port}"
        started = time.perf_counter()
        self._deploy(replicas)
        self._wait_healthy()
        print(f"studio ready in {time.perf_counter() - started:.1f} s ({replicas} replica(s))")

    def _deploy(self, replicas: int) -> None:
        """Deploy the app from its config and wait until the model has ``replicas`` replicas
        running and no others. Only ``num_replicas`` differs between calls, which Serve applies
        in place (same code version: args, import path and runtime_env unchanged); ``serve.run``
        would give every deployment a new random version and restart them all. The controller
        client is what ``serve deploy`` reaches through the dashboard, which this Ray runs
        without."""
        from ray.serve.context import _get_global_client
        from ray.serve.schema import ServeApplicationSchema, ServeDeploySchema

        from studio.serving.config import deployment_name

        app = ServeApplicationSchema(
            name=APP_NAME, route_prefix="/", import_path="deployments.app:build_app",
            args=stack_args(self.model_dir, 1),
            deployments=[{"name": deployment_name("tiny"), "num_replicas": replicas}])
        started = time.perf_counter()
        _get_global_client().deploy_apps(ServeDeploySchema(applications=[app]))
        self._wait_replicas(deployment_name("tiny"), replicas)
        if self.replicas:
            print(f"scaled {self.replicas} -> {replicas} replica(s) in "
                  f"{time.perf_counter() - started:.1f} s")
        self.replicas = replicas

    def _wait_replicas(self, deployment: str, replicas: int) -> None:
        from ray import serve

        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            app = serve.status().applications.get(APP_NAME)
            if app is not None and app.status == "DEPLOY_FAILED":
                raise RuntimeError(f"the studio app failed to deploy: {app.message}")
            states = app.deployments[deployment].replica_states if (
                app is not None and deployment in app.deployments) else {}
            if app is not None and app.status == "RUNNING" and states == {"RUNNING": replicas}:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"{deployment}: {states} after {READY_TIMEOUT_S} s, "
                                   f"wanted {replicas} running ({app})")
            time.sleep(0.5)

    def _wait_healthy(self) -> None:
        import httpx

        deadline = time.monotonic() + 120
        while True:
            try:
                httpx.get(f"{self.url}/healthz", timeout=2).raise_for_status()
                return
            except httpx.HTTPError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)

    def close(self) -> None:
        import ray
        from ray import serve

        if not self._ray_up:
            return
        ours = {p.pid for p in self.processes()}
        try:
            serve.shutdown()
            ray.shutdown()
        finally:
            for k, v in self._saved_env.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
            self.replicas, self._ray_up = 0, False
            self._unhide_survivors(ours | self._hidden)

    # ---- the leak watch ---------------------------------------------------------------------
    def processes(self) -> list[psutil.Process]:
        """The stack's processes: those ray.init started (GCS, raylet, ...) and their descendants
        (workers, Serve replicas, vLLM engine processes)."""
        out = []
        for root in self._roots:
            try:
                if root.is_running():
                    out += [root, *root.children(recursive=True)]
            except psutil.Error:
                continue
        return out

    def hide_from_leak_watch(self) -> None:
        """At the end of a module while the stack stays up: its processes are the package's."""
        if self.leak_watch is None or not self._ray_up:
            return
        pids = {p.pid for p in self.processes()}
        self._hidden |= pids
        self.leak_watch.own(pids)

    def _unhide_survivors(self, pids: set[int]) -> None:
        # Still running after the stack closed: a leak, which the watch reports at the next
        # module end.
        if self.leak_watch is not None:
            self.leak_watch.release(pids)
        self._hidden = set()

