"""Engine isolation on CPU (deployments/engines/cpu_isolation.py, STUDIO_SERVE_ISOLATE_ENGINE): real
processes stand in for a stack — one titled like vLLM's engine core and bound to core 0, two others
(one with a second thread), all with the stack's STUDIO_HOME, and one of another home. After the
call every thread of the stack's other processes is off core 0, the engine and the other home's
process are as they were."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from deployments.engines.cpu_isolation import keep_off_engine_cores

CPUS = set(range(psutil.cpu_count(logical=True) or 1))
pytestmark = pytest.mark.skipif(len(CPUS) < 2 or not hasattr(os, "sched_setaffinity"),
                                reason="needs two cores and sched_setaffinity")
SLEEPER = "import threading, time; threading.Thread(target=time.sleep, args=(120,)).start(); time.sleep(120)"


def _start(home: Path, *argv: str) -> psutil.Process:
    proc = subprocess.Popen([sys.executable, "-c", SLEEPER, *argv], env={**os.environ, "STUDIO_HOME": str(home)})
    p = psutil.Process(proc.pid)
    deadline = time.monotonic() + 30
    while p.num_threads() < 2:  # its second thread is up
        assert time.monotonic() < deadline, "the stand-in process did not start its thread"
        time.sleep(0.05)
    return p


def _cores(p: psutil.Process) -> list[set[int]]:
    return [os.sched_getaffinity(t.id) for t in p.threads()]


@pytest.fixture
def stack(tmp_path):
    home, elsewhere = tmp_path / "home", tmp_path / "other-home"
    procs = {"engine": _start(home, "VLLM::EngineCore"), "ingress": _start(home, "ApiIngress"),
             "raylet": _start(home, "raylet"), "outsider": _start(elsewhere, "ApiIngress")}
    try:
        yield home, procs
    finally:
        for p in procs.values():
            p.kill()
            p.wait(10)


def test_the_stack_leaves_the_engines_core_and_nothing_else_moves(stack):
    home, procs = stack
    for t in procs["engine"].threads():
        os.sched_setaffinity(t.id, {0})  # as vLLM's auto binding leaves it
    result = keep_off_engine_cores(str(home))
    assert result is not None and result.engine_cores == (0,) and result.other_cores == tuple(sorted(CPUS - {0}))
    assert (result.processes, result.threads) == (2, 4)
    for name in ("ingress", "raylet"):
        assert _cores(procs[name]) == [CPUS - {0}] * 2, name
    assert _cores(procs["engine"]) == [{0}] * 2
    assert _cores(procs["outsider"]) == [CPUS] * 2  # another studio's process is not touched


def test_nothing_moves_without_an_engine_or_when_the_engine_holds_every_core(stack, tmp_path):
    home, procs = stack
    assert keep_off_engine_cores(str(tmp_path / "no-such-home")) is None
    for t in procs["engine"].threads():
        os.sched_setaffinity(t.id, CPUS)
    assert keep_off_engine_cores(str(home)) is None
    assert _cores(procs["ingress"]) == [CPUS] * 2
