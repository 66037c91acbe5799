"""The API-only `studio up` that test_jobs_e2e.py and test_stack.py share (no engine: the default
configs/serve/studio_api.yaml, its scheduler pointed at the test entrypoint tests/jobs/fake_train).
Each `studio up` costs ~25-35 s on 2 cores; the two modules paid it twice.

Order inside the package is file order (test_demo and test_model_export_e2e run with the modules
that share the tiny-model stack, tests/stacks.py): test_jobs_e2e, then test_stack, whose `up`
without a config redeploys the default (the scheduler's real entrypoint: no job test runs after
that) and whose `down` test stops the stack; the package's teardown then finds nothing to stop. The stack's processes are the package's, not the first
module's: they are hidden from tests/leaks.py while it is up and handed back when it stops."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import psutil
import pytest
import yaml

from tests.e2e.test_stack import REPO, free_port, processes_of, run


class ApiStack:
    def __init__(self, home, leak_watch):
        self.home, self.leak_watch = home, leak_watch
        self.env: dict[str, str] = {}
        self.up_output = ""
        self.head_pid = 0
        self.hidden: set[int] = set()

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.env['STUDIO_HTTP_PORT']}"

    def start(self) -> None:
        cfg = yaml.safe_load((REPO / "configs/serve/studio_api.yaml").read_text())
        cfg["applications"][0]["args"]["scheduler"].update(
            entrypoint_module="tests.jobs.fake_train", retry_backoff_s=0.5,
            runtime_env={"env_vars": {"PYTHONPATH": str(REPO)}})
        config = self.home / "serve.yaml"
        config.write_text(yaml.safe_dump(cfg))
        env = {**os.environ, "STUDIO_HOME": str(self.home), "STUDIO_HTTP_PORT": str(free_port()),
               "STUDIO_RAY_PORT": str(free_port()), "STUDIO_DASHBOARD_PORT": str(free_port()),
               # The one stack of the suite with the MLflow UI (tests/conftest.py turns it off).
               "STUDIO_MLFLOW_UI": "1", "STUDIO_MLFLOW_PORT": str(free_port())}
        env.pop("RAY_ADDRESS", None)
        env.pop("STUDIO_ADMIN_KEY", None)
        # As a new user runs it: `.venv/bin/studio up` from a shell where the venv is not active.
        venv_bin = str(Path(sys.executable).parent)
        env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if p != venv_bin)
        env.pop("VIRTUAL_ENV", None)
        self.env = env
        r = run(["up", "--config", str(config)], env)
        assert r.returncode == 0, r.stdout + r.stderr
        self.up_output = r.stdout
        self.head_pid = json.loads((self.home / "ray-head.json").read_text())["pid"]

    def hide_from_leak_watch(self) -> None:
        """At the end of a module while the stack stays up: its processes are the package's."""
        if self.leak_watch is not None:
            pids = {p.pid for p in processes_of(str(self.home))}
            try:  # the head's descendants: Ray's dashboard modules and agents carry no STUDIO_HOME
                head = psutil.Process(self.head_pid)
                pids |= {p.pid for p in (head, *head.children(recursive=True))}
            except psutil.Error:
                pass
            self.hidden |= pids
            self.leak_watch.own(pids)

    def close(self) -> None:
        try:
            run(["down"], self.env)  # a no-op when test_stack's down test stopped it
        finally:
            if self.leak_watch is not None and self.hidden:
                self.leak_watch.release(self.hidden)


@pytest.fixture(scope="package")
def api_stack(tmp_path_factory, request):
    stack = ApiStack(tmp_path_factory.mktemp("studio-home"),
                     request.config.pluginmanager.get_plugin("studio-leak-watch"))
    try:
        stack.start()
        yield stack
    finally:
        stack.close()
