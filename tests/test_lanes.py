"""tests/lanes.py, the watcher that keeps `make test`'s background lanes below the heavy lane: every
session a background lane's process runs in gets the lane's nice value; the others are left alone."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import psutil
import pytest

from tests.lanes import Watcher, autogroups_on, main, session_nice
from tests.leaks import LANE, kill_trees

pytestmark = pytest.mark.skipif(not autogroups_on(), reason="the kernel schedules no autogroups here")

# A process that starts a child in a session of its own a moment later (as Ray heads and the
# tests' CLI runs do), then waits.
CODE = ("import os, subprocess, sys, time; time.sleep(0.5); "
        "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(30)'], start_new_session=True); "
        "time.sleep(30)")


def _start(lane: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", CODE], env={**os.environ, LANE: lane},
                            start_new_session=True)


def test_every_session_of_a_watched_lane_gets_its_nice_value_and_no_other():
    mine = session_nice(os.getpid())  # 19 in make test's light lane, 0 alone
    watched, other = _start("bg"), _start("fg")
    try:
        deadline = time.monotonic() + 20
        while not all(psutil.Process(p.pid).children() for p in (watched, other)):
            assert time.monotonic() < deadline, "the children did not start"
            time.sleep(0.1)
        child = psutil.Process(watched.pid).children()[0]
        other_child = psutil.Process(other.pid).children()[0]
        assert child.pid == os.getsid(child.pid)  # a session of its own, nice 0 so far
        assert session_nice(child.pid) == 0 and session_nice(watched.pid) == 0
        watcher = Watcher(17, {"bg"})
        assert watcher.scan() == 2  # the lane's session and its child's
        assert session_nice(watched.pid) == 17 and session_nice(child.pid) == 17
        assert session_nice(other.pid) == 0 and session_nice(other_child.pid) == 0
        assert session_nice(os.getpid()) == mine  # this test's own session is not the lane's
        assert watcher.scan() == 0  # set once
    finally:
        kill_trees(watched, other)


def test_the_watcher_refuses_a_bad_command_line(capsys):
    assert main([]) == 2 and main(["bg", "light"]) == 2
    assert "usage: python -m tests.lanes NICE LANE" in capsys.readouterr().err
