"""Fixtures for training tests: a real STUDIO_HOME (SQLite, artifact store, MLflow) holding the tiny
model and the toy datasets, a private Ray head for the package, and a runner for the real
entrypoint ``python -m studio.train.run``.

The entrypoint runs as a subprocess in its own process group, from a cwd that is not the repo, and
joins the package's Ray head through RAY_ADDRESS (join mode, as under ``ray job submit``) instead of
starting a local Ray per run (several seconds each). The head is this package's own (``ray start
--head`` on free ports with its own temp dir, never a developer's stack); it starts when the first
test needs it and its whole session is killed after the package's last test. Each test still gets
a clean cluster: the driver's group is killed when the test ends, its Ray Train actors and placement
groups die with it, and the test waits until the head holds none before the next one starts.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil
import pytest
from peft import PeftModel
from safetensors.torch import load_file

from studio.models.tiny import make_tiny
from studio.ray_auth import ray_auth_token
from studio.settings import StudioSettings
from studio.store import db as store_db
from studio.train.toy_data import ingest_toy_datasets
from tests.loopback import free_port

REPO = Path(__file__).resolve().parents[2]
RECIPES = REPO / "configs" / "train"
LEAK_WATCH = "studio-leak-watch"  # tests/leaks.py's plugin, as tests/conftest.py registers it


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model, built once per session; tests only read it."""
    return make_tiny(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture
def home(tmp_path: Path, tiny_model_dir: Path) -> Iterator[StudioSettings]:
    """A fresh STUDIO_HOME at ``tmp/project/.studio`` (SQLite DB, artifacts, MLflow) with the tiny
    model at ``.studio/models/tiny`` (what the recipes name, relative) and the toy datasets."""
    settings = StudioSettings(home=tmp_path / "project" / ".studio", database_url=None, artifacts_uri=None,
                              mlflow_uri=None, redis_url=None, admin_key=None)
    store_db.init_db(settings.db_url)
    settings.models_dir.mkdir(parents=True)
    (settings.models_dir / "tiny").symlink_to(tiny_model_dir)
    ingest_toy_datasets(settings, tmp_path / "data")
    yield settings
    store_db.get_engine(settings.db_url).dispose()
    store_db.get_engine.cache_clear()


# ---------------------------------------------------------------- the package's Ray head

def ray_env() -> dict[str, str]:
    """This process's environment without the studio's settings and without a cluster to join."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("STUDIO_") and k != "RAY_ADDRESS"}
    env["PYTHONUNBUFFERED"] = "1"  # Ray workers inherit the head's environment: prints reach the log now
    return env


@dataclass
class RayHead:
    """A ``ray start --head --block`` in a session of its own: every process it starts (GCS, raylet,
    dashboard, Ray workers and what they spawn, e.g. a vLLM engine core) is in that session."""

    proc: subprocess.Popen
    address: str  # GCS host:port, what a driver's RAY_ADDRESS names
    dashboard_url: str
    temp_dir: Path
    exempted: set[int] = field(default_factory=set)  # pids shown to the leak watch as this head's

    def session_pids(self) -> set[int]:
        pids = set()
        for p in psutil.process_iter():
            try:
                if os.getsid(p.pid) == self.proc.pid:
                    pids.add(p.pid)
            except OSError:
                pass
        return pids

    def state(self, kind: str, *filters: tuple[str, str, str]) -> list[dict]:
        """Ray's state API (what ``ray list KIND`` shows) over HTTP; filters are (key, "=" or "!=", value)."""
        params = [("limit", "10000"), ("detail", "true")]
        for key, predicate, value in filters:
            params += [("filter_keys", key), ("filter_predicates", predicate), ("filter_values", value)]
        token = ray_auth_token()
        r = httpx.get(f"{self.dashboard_url}/api/v0/{kind}", params=params, timeout=30,
                      headers={"Authorization": f"Bearer {token}"} if token else {})
        r.raise_for_status()
        return r.json()["data"]["result"]["result"]

    def held(self) -> list[str]:
        """What a finished run must not leave: placement groups and live actors, but for Ray's own
        detached services that reserve nothing (Train's autoscaling coordinator, created by the
        first run, is a cluster singleton)."""
        actors = [a for a in self.state("actors", ("state", "!=", "DEAD"))
                  if not (a["is_detached"] and not any((a.get("required_resources") or {}).values()))]
        groups = self.state("placement_groups", ("state", "!=", "REMOVED"))
        return ([f"actor {a['class_name']} {a['state']} (job {a['job_id']}, pid {a['pid']}, "
                 f"detached {a['is_detached']}, reserves {a.get('required_resources')})" for a in actors]
                + [f"placement group {g['placement_group_id']} {g['state']} (job {g['creator_job_id']})"
                   for g in groups])

    def wait_idle(self, timeout_s: float = 60) -> None:
        """Until the cluster holds no actor and no placement group: the runs of a test are over."""
        deadline = time.monotonic() + timeout_s
        while held := self.held():
            if time.monotonic() > deadline:
                raise AssertionError(f"{timeout_s:.0f} s after its drivers ended, the Ray head still holds:\n  "
                                     + "\n  ".join(held))
            time.sleep(0.5)

    def stop(self) -> None:
        """SIGKILL the whole session (a drain on SIGTERM takes 15 s+ and there is nothing to keep)."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=30)
        deadline = time.monotonic() + 15
        while (left := self.session_pids()) and time.monotonic() < deadline:
            for pid in left:  # a process of the session that moved to a group of its own
                try:
                    if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                        os.kill(pid, signal.SIGKILL)
                except (psutil.Error, ProcessLookupError):
                    pass
            if all(not alive(pid) for pid in left):
                break
            time.sleep(0.2)
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def start_ray_head(wait_s: float = 120) -> RayHead:
    """``ray start --head`` on free ports (the ray client server and the dashboard agent default to
    fixed ones a developer's stack may hold), advertising the logical CPUs a local Ray of the
    entrypoint would (``ray_num_cpus``), with a temp dir of its own (short: Ray's unix sockets live
    under it) so no other process finds it in /tmp/ray."""
    temp_dir = Path(tempfile.mkdtemp(prefix="ray-train-tests-"))
    port, dashboard_port = free_port(), free_port()
    cmd = [str(Path(sys.executable).with_name("ray")), "start", "--head", "--block",
           "--node-ip-address=127.0.0.1", f"--port={port}",
           f"--num-cpus={StudioSettings.model_fields['ray_num_cpus'].default}",
           "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard_port}",
           f"--dashboard-agent-listen-port={free_port()}", f"--ray-client-server-port={free_port()}",
           f"--temp-dir={temp_dir}", "--disable-usage-stats"]
    log = temp_dir / "head.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, env=ray_env(), cwd=temp_dir, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    head = RayHead(proc, f"127.0.0.1:{port}", f"http://127.0.0.1:{dashboard_port}", temp_dir)
    deadline = time.monotonic() + wait_s
    while True:
        try:
            if head.state("nodes", ("state", "=", "ALIVE")):
                return head
        except (httpx.HTTPError, KeyError, ValueError):
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            text = log.read_text(errors="replace")
            head.stop()
            pytest.fail(f"the test Ray head did not come up in {wait_s:.0f} s:\n{tail(text)}")
        time.sleep(0.5)


_head: RayHead | None = None  # the package's head while it runs, for the leak watch below


@pytest.fixture(scope="package")
def ray_head(request: pytest.FixtureRequest) -> Iterator[RayHead]:
    """One Ray head for every entrypoint run of the package, started by the first test that needs it."""
    global _head
    _head = start_ray_head()
    try:
        yield _head
    finally:
        head, _head = _head, None
        head.stop()
        # From here the leak watch judges the head's processes again: any still alive is reported.
        watch = request.config.pluginmanager.get_plugin(LEAK_WATCH)
        if watch is not None:
            watch.release(head.exempted)


@pytest.hookimpl(hookwrapper=True, trylast=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None):
    """tests/leaks.py reports processes a module leaves running. The package's head outlives its
    modules on purpose: after each test (innermost wrapper, so before the leak watch looks) its
    session's processes are marked as already seen, until the head's teardown takes that back."""
    yield
    watch = item.config.pluginmanager.get_plugin(LEAK_WATCH)
    if _head is not None and watch is not None:
        pids = _head.session_pids()
        _head.exempted |= pids
        watch.own(pids)


# ---------------------------------------------------------------- the entrypoint

def entrypoint_env(settings: StudioSettings, ray_address: str) -> dict[str, str]:
    env = ray_env()
    env["STUDIO_HOME"] = str(settings.home_abs)
    env["RAY_ADDRESS"] = ray_address
    return env


@dataclass
class EntrypointRun:
    returncode: int
    output: str
    seconds: float


class Entrypoint:
    """Start ``python -m studio.train.run ARGS`` (or another entrypoint ``module``) from a cwd outside the repo, joined to the package's
    Ray head; wait or watch it."""

    def __init__(self, settings: StudioSettings, log_dir: Path, ray_head: RayHead):
        self.settings = settings
        self.log_dir = log_dir
        self.ray_head = ray_head
        self.procs: list[subprocess.Popen] = []

    def start(self, *args: str, module: str = "studio.train.run") -> tuple[subprocess.Popen, Path]:
        log = self.log_dir / f"entrypoint-{len(self.procs)}.log"
        cwd = self.log_dir / "elsewhere"  # not the repo, not STUDIO_HOME's parent
        cwd.mkdir(exist_ok=True)
        with log.open("wb") as out:
            proc = subprocess.Popen([sys.executable, "-m", module, *args], cwd=cwd,
                                    env=entrypoint_env(self.settings, self.ray_head.address), stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append(proc)
        return proc, log

    def run(self, *args: str, timeout_s: float = 600, module: str = "studio.train.run") -> EntrypointRun:
        t0 = time.monotonic()
        proc, log = self.start(*args, module=module)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.stop(proc)
            pytest.fail(f"the entrypoint ran over {timeout_s} s:\n{tail(log)}")
        return EntrypointRun(proc.returncode, log.read_text(errors="replace"), time.monotonic() - t0)

    @staticmethod
    def stop(proc: subprocess.Popen) -> None:
        """Kill the process group this test started (the driver); its Ray job ends with it."""
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        proc.wait(timeout=30)


@pytest.fixture
def entrypoint(home: StudioSettings, tmp_path: Path, ray_head: RayHead) -> Iterator[Entrypoint]:
    runner = Entrypoint(home, tmp_path, ray_head)
    yield runner
    for proc in runner.procs:
        runner.stop(proc)
    # The next test starts on an empty cluster: whatever this one's runs held died with their drivers.
    ray_head.wait_idle()


def tail(log: Path | str, lines: int = 60) -> str:
    text = log.read_text(errors="replace") if isinstance(log, Path) else log
    return "\n".join(text.splitlines()[-lines:])


def lora_b_norms(adapter_dir: str | Path) -> dict[str, float]:
    """Norm of every LoRA B matrix: PEFT initializes B to zero, so any non-zero B was trained."""
    weights = load_file(str(Path(adapter_dir) / "adapter_model.safetensors"))
    return {k: float(v.float().norm()) for k, v in weights.items() if "lora_B" in k}


def load_adapter(base_model: str | Path, adapter_dir: str | Path):
    from transformers import AutoModelForCausalLM

    return PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(base_model)), str(adapter_dir))
