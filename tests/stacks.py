"""One live `studio up` serving the tiny model, shared by the end-to-end modules in
``TINY_STACK_MODULES`` (the evaluation e2e, the gateway e2e, the UI walk...): each used to start its
own stack (Ray head + Serve app + a vLLM engine, ≈50 s on 2 cores); now the run pays once. The
batch e2e (an OpenAI Batch API batch through the scheduler) and the adapter export e2e (download and
merge answer like `/v1`) share it too, and so does the demo's run (tests/demo_run.py): the demo's
step 0 is this stack's `studio up`, and its outcomes are checked (tests/e2e/test_demo.py) while the
stack is still up; its last check stops the stack.

The configuration is the union of what the modules need (configs/serve/studio.yaml with):
- the tiny model built under the stack's STUDIO_HOME (``$STUDIO_HOME/models/tiny``: the synth test
  reads its tokenizer there), compact structured outputs (the gateway's synthetic-data replies);
- the scheduler on (evaluations and the UI's training job run as Ray jobs);
- the gateway's test groups (judge, flaky → a fake provider answering 500, ext → the fake provider,
  nokey), fallbacks flaky → judge, no retries, a 1 s cooldown, a cache namespace of its own, and
  Redis (STUDIO_REDIS_URL: cache hits and per-key rate limits). Names that are not groups (tiny,
  registry names) still go to the studio's Router, which is what the evaluation and the UI call.

Each module registers its own names (datasets, registry names, experiment aliases, keys) and reads
back the ids it created (jobs, evals, usage by job or model), so none depends on another's leftovers
or on the order the modules run in.

Two engines alive at once starve each other on 2 cores: tests/conftest.py runs the modules that use
the stack one after another (``group_items``) and closes it right after the last of them
(``pytest_runtest_teardown``), so no other module runs while it is up.

tests/leaks.py lists, after each module, the processes that were not there when the session started.
The stack's processes (found by their STUDIO_HOME, which `studio up` hands to the Ray head and
everything it starts) are marked as seen at the end of each module while the stack stays up; those
still alive after `studio down` are handed back to the watch, which reports them under the last
module that used the stack.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path
from typing import Any

import psutil
import pytest
import yaml

# The modules that share the stack, in the order they run. The evaluation comes first: it asks for
# the demo's run (``demo_run``), which starts this stack as its step 0 (the demo runs on the stack's
# config and environment) and hands it over when it ends, so the run pays one stack for both. The
# demo's own checks come last: the last of them stops the stack and finds nothing of it left.
TINY_STACK_MODULES = ("tests/evals/test_eval_e2e.py", "tests/e2e/test_model_export_e2e.py",
                      "tests/gateway/test_gateway_e2e.py", "tests/batches/test_batch_e2e.py",
                      "tests/ui/test_stack_walk.py", "tests/loops/test_canary_live.py", "tests/loops/test_loop_e2e.py",
                      "tests/e2e/test_demo.py")
REDIS_URL = "redis://127.0.0.1:6379/0"
# Not in the stack's environment (the stack's own settings come from its home).
UNSET = ("RAY_ADDRESS", "STUDIO_ADMIN_KEY", "STUDIO_API_KEY", "STUDIO_GATEWAY_URL", "STUDIO_DATABASE_URL",
         "STUDIO_ARTIFACTS_URI", "STUDIO_MLFLOW_URI", "STUDIO_TEST_UNSET_KEY")
FAKE_KEY_ENV = "STUDIO_TEST_FAKE_PROVIDER_KEY"


def module_of(item: pytest.Item, root: Path) -> str:
    try:
        return item.path.relative_to(root).as_posix()
    except ValueError:
        return ""


def uses_tiny_stack(item: pytest.Item | None, root: Path) -> bool:
    return item is not None and module_of(item, root) in TINY_STACK_MODULES


def group_items(items: list[pytest.Item], root: Path) -> None:
    """The items of ``TINY_STACK_MODULES`` run together (in that module order, each module's tests
    in file order) where the first of them was collected; every other item keeps its order."""
    users = [item for item in items if uses_tiny_stack(item, root)]
    if not users:
        return
    first = next(i for i, item in enumerate(items) if uses_tiny_stack(item, root))
    rank = {name: i for i, name in enumerate(TINY_STACK_MODULES)}
    users.sort(key=lambda item: rank[module_of(item, root)])  # stable: file order inside a module
    rest = [item for item in items if not uses_tiny_stack(item, root)]
    items[:] = rest[:first] + users + rest[first:]


class TinyStack:
    """Started by the first module that asks (``ensure``); closed after the last one (``close``)."""

    def __init__(self, home: Path, leak_watch: Any | None):
        self.home = home
        self.leak_watch = leak_watch  # tests/leaks.LeakWatch, when registered
        self.env: dict[str, str] = {}
        self.base = self.admin = self.model = self.namespace = None
        self.provider = None  # tests/gateway/fake_provider.FakeProvider
        self.config: Path | None = None  # the Serve config, once prepared
        self._up = False
        self._failed: str | None = None
        self._hidden: set[int] = set()

    # ---- start and close ----------------------------------------------------------------------
    def ensure(self) -> TinyStack:
        if self._failed:  # the modules after the first one fail fast, saying why
            raise RuntimeError(f"the shared tiny-model studio stack did not start: {self._failed}")
        if not self._up:
            try:
                self._start()
            except BaseException as e:
                self._failed = f"{type(e).__name__}: {e}"
                self.close()
                raise
        return self

    def tiny_model(self) -> Path:
        """The tiny model the stack serves (``$STUDIO_HOME/models/tiny``), built on the first call;
        a module may train on it before it asks for the stack."""
        from studio.models.tiny import make_tiny

        if self.model is None:
            self.model = make_tiny(self.home / "models" / "tiny")
        return self.model

    def prepare(self) -> TinyStack:
        """The fake provider, the tiny model, the Serve config (``config``) and the environment
        (``env``) the stack runs with, without starting it: ``tests/demo_run.py`` starts it by
        running the demo on this config and environment, then hands it over (``adopt``)."""
        if self.config is None:
            self._prepare()
        return self

    def adopt(self) -> None:
        """The stack was started by someone else on ``prepare``'s home and config (the demo's step
        0): from here on it is this one's, closed by ``close``. A no-op when nothing was started."""
        if self._up or not (self.home / "ray-head.json").exists():
            return
        self._up = True
        self.base = f"http://127.0.0.1:{self.env['STUDIO_HTTP_PORT']}"
        self.admin = (self.home / "admin.key").read_text().strip()

    def _start(self) -> None:
        from tests.e2e.test_stack import run

        self.prepare()
        started = time.perf_counter()
        self._up = True  # from here on, close() runs `studio down` (a half-started head too)
        r = run(["up", "--config", str(self.config)], self.env, timeout=600)
        assert r.returncode == 0, r.stdout + r.stderr
        self.base = f"http://127.0.0.1:{self.env['STUDIO_HTTP_PORT']}"
        self.admin = (self.home / "admin.key").read_text().strip()
        print(f"shared tiny-model studio up in {time.perf_counter() - started:.1f} s")

    def _prepare(self) -> None:
        from tests.e2e.test_stack import REPO, free_port
        from tests.gateway.fake_provider import FakeProvider

        self.provider = FakeProvider().start()
        self.tiny_model()
        self.namespace = f"studio-test-tiny-stack-{uuid.uuid4().hex[:8]}"
        cfg = yaml.safe_load((REPO / "configs/serve/studio.yaml").read_text())
        args = cfg["applications"][0]["args"]
        engine = args["models"][0]["engine"]
        engine["model"] = str(self.model)
        # Guided JSON without free whitespace: the tiny model's synthetic-data replies fit
        # max_tokens (the gateway module's synth test).
        engine["structured_outputs_compact"] = True
        args["gateway"] = {"spec": {
            "groups": [
                {"name": "judge", "provider": "studio", "model": "tiny"},
                {"name": "flaky", "provider": "hosted_vllm", "model": "broken-e2e",
                 "api_base": self.provider.base},
                {"name": "ext", "provider": "openai", "model": "gpt-4o-mini",
                 "api_base": self.provider.base, "api_key_env": FAKE_KEY_ENV},
                {"name": "nokey", "provider": "openai", "model": "gpt-4o",
                 "api_key_env": "STUDIO_TEST_UNSET_KEY"},
            ],
            "fallbacks": {"flaky": ["judge"]},
            "router": {"num_retries": 0, "cooldown_time_s": 1},
            "cache": {"namespace": self.namespace},
        }}
        config = self.home / "serve.yaml"
        config.write_text(yaml.safe_dump(cfg, sort_keys=False))
        env = {**os.environ, "STUDIO_HOME": str(self.home), "STUDIO_HTTP_PORT": str(free_port()),
               "STUDIO_RAY_PORT": str(free_port()), "STUDIO_DASHBOARD_PORT": str(free_port()),
               "STUDIO_REDIS_URL": REDIS_URL, FAKE_KEY_ENV: "sk-fake-e2e-123"}
        for var in UNSET:
            env.pop(var, None)
        self.env = env
        self.config = config

    def close(self) -> None:
        from tests.e2e.test_stack import run

        try:
            if self._up:
                ours = {p.pid for p in self.processes()}
                try:
                    run(["down"], self.env)
                finally:
                    self._up = False
                    self._unhide_survivors(ours | self._hidden)
                    namespace, self.namespace = self.namespace, None
                    if namespace:  # the gateway's cache keys
                        _drop_redis_namespace(namespace)
        finally:
            if self.provider is not None:
                self.provider.stop()
                self.provider = None
            self.config = None  # prepared again (a new provider) if a later module asks

    # ---- the leak watch -------------------------------------------------------------------
    def processes(self) -> list[psutil.Process]:
        """The stack's live processes: the Ray head `studio up` started (its pid is in
        ray-head.json) and all it started (GCS, raylet, dashboard and its modules, agents,
        workers, Serve replicas, engines, job drivers), and whatever else carries this stack's
        STUDIO_HOME in its environment (HAProxy runs in a process group of its own)."""
        found: dict[int, psutil.Process] = {}
        try:
            head = psutil.Process(json.loads((self.home / "ray-head.json").read_text())["pid"])
            for p in (head, *head.children(recursive=True)):
                found[p.pid] = p
        except (OSError, ValueError, KeyError, psutil.Error):
            pass
        mine = str(self.home)
        for p in psutil.process_iter(["pid"]):
            if p.pid in found or p.pid == os.getpid():
                continue
            try:
                if p.environ().get("STUDIO_HOME") == mine:
                    found[p.pid] = p
            except psutil.Error:
                continue
        return list(found.values())

    def hide_from_leak_watch(self) -> None:
        """At the end of a module while the stack stays up: its processes are the stack's."""
        if self.leak_watch is None or not self._up:
            return
        pids = {p.pid for p in self.processes()}
        self._hidden |= pids
        self.leak_watch.own(pids)

    def _unhide_survivors(self, pids: set[int]) -> None:
        # Still running after `studio down`: a leak, which the watch reports at the next module end.
        if self.leak_watch is not None:
            self.leak_watch.release(pids)
        self._hidden = set()




def _drop_redis_namespace(namespace: str) -> None:
    import redis

    r = redis.Redis.from_url(REDIS_URL)
    for k in r.scan_iter(f"{namespace}:*"):
        r.delete(k)
