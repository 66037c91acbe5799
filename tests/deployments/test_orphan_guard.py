"""deployments/engines/vllm_orphan_guard.py: a process ``multiprocessing`` started (as vLLM starts
its engine core) ends once its parent is killed; a process that is not such a child is never armed.
Plain processes here, no engine: the guard only needs the parent/child relation vLLM creates."""

from __future__ import annotations

import importlib.metadata
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[2]

# The "replica": starts a multiprocessing child (the "engine core") that arms the guard the way
# vLLM's plugin loader would, prints the child's pid, then waits to be killed.
PARENT = """
import multiprocessing, sys, time

def core():
    from deployments.engines import vllm_orphan_guard
    vllm_orphan_guard.arm()  # STUDIO_VLLM_ORPHAN_GUARD=0: not armed
    while True:
        time.sleep(1)

if __name__ == "__main__":
    ctx = multiprocessing.get_context(sys.argv[1])
    child = ctx.Process(target=core, daemon=False)
    child.start()
    print(child.pid, flush=True)
    while True:
        time.sleep(1)
"""


def _run_parent(method: str, env: dict[str, str]) -> tuple[subprocess.Popen, int]:
    proc = subprocess.Popen([sys.executable, "-c", PARENT, method], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, text=True, start_new_session=True)
    child = int(proc.stdout.readline())
    return proc, child


def _gone_within(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.2)
    return False


def test_the_engine_child_ends_when_its_parent_is_killed():
    for method in ("fork", "spawn"):  # vLLM uses either, depending on the platform
        proc, child = _run_parent(method, {**os.environ, "PYTHONPATH": str(REPO)})
        try:
            time.sleep(1.5)  # the child is armed (spawn re-imports)
            assert psutil.pid_exists(child)
            proc.send_signal(signal.SIGKILL)  # the replica dies without shutting its engine down
            proc.wait()
            assert _gone_within(child, 10), f"{method}: the child outlived its killed parent"
        finally:
            if proc.poll() is None:
                proc.kill()
            if psutil.pid_exists(child):
                os.kill(child, signal.SIGKILL)


def test_switched_off_the_child_stays_so_the_test_above_can_fail():
    proc, child = _run_parent("fork", {**os.environ, "PYTHONPATH": str(REPO),
                                       "STUDIO_VLLM_ORPHAN_GUARD": "0"})
    try:
        time.sleep(1.0)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert not _gone_within(child, 3), "without the guard the orphan should have stayed"
    finally:
        if psutil.pid_exists(child):
            os.kill(child, signal.SIGKILL)


def test_a_process_that_is_not_a_multiprocessing_child_is_not_armed():
    from deployments.engines import vllm_orphan_guard

    assert vllm_orphan_guard.arm() is False  # pytest itself: its parent is a shell, not vLLM


def test_vllm_loads_it_as_a_general_plugin():
    plugins = {ep.name: ep.value for ep in importlib.metadata.entry_points(group="vllm.general_plugins")}
    assert plugins.get("studio_orphan_guard") == "deployments.engines.vllm_orphan_guard:register"
