"""The leak watch's ownership API: processes a shared fixture owns are not reported while it owns
them; once it releases them, those still running are."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import psutil

from tests.leaks import LANE, LeakWatch, kill_trees


def test_owned_processes_are_reported_only_if_they_outlive_their_release():
    watch = LeakWatch()
    stays = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    goes = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        watch.own({stays.pid, goes.pid})
        assert {stays.pid, goes.pid} <= watch.seen
        goes.kill()
        goes.wait()
        watch.release({stays.pid, goes.pid}, wait_s=0.5)
        assert stays.pid not in watch.seen  # still running after its release: reported next
        assert stays.pid in {p.pid for p in watch.survivors()}
    finally:
        stays.kill()
        stays.wait()


def test_a_blocked_or_ignored_sigint_is_put_back_and_named():
    """A module that leaves SIGINT blocked (or ignored) in the test process would hand that to every
    subprocess started later (a `serve run` then ignores Ctrl-C): the watch restores and names it."""
    import signal

    from tests.leaks import restore_signals, signal_state

    def child_state() -> str:
        out = subprocess.run(["grep", "-E", "SigBlk|SigIgn", "/proc/self/status"],
                             capture_output=True, text=True).stdout
        return out

    # A known start: SIGINT handled and unblocked (a pytest-xdist worker, or anything started in
    # the background by a non-interactive shell, begins with SIGINT ignored).
    before = signal.getsignal(signal.SIGINT)
    before_term = signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    saved = signal_state()
    assert signal.SIGINT not in saved[0] | saved[1]
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        blk = int(child_state().split()[1], 16)
        assert blk >> (signal.SIGINT - 1) & 1, "a subprocess inherits the blocked SIGINT"
        assert restore_signals(saved) == ["SIGINT blocked", "SIGTERM ignored"]
        assert signal_state() == saved
        blk = int(child_state().split()[1], 16)
        assert not blk >> (signal.SIGINT - 1) & 1
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
        signal.signal(signal.SIGTERM, before_term)
        signal.signal(signal.SIGINT, before)


def test_the_other_lanes_processes_are_left_to_it(monkeypatch):
    """scripts/test.sh runs two pytest lanes at once: a process started under the other lane (its
    environment, or its parent's when its own names no lane) is not this lane's leak; one started
    under this lane is."""
    monkeypatch.setenv(LANE, "heavy")
    watch = LeakWatch()
    code = ("import subprocess, sys, time; "
            "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(30)'], env={'PATH': ''}); "
            "time.sleep(30)")
    others = subprocess.Popen([sys.executable, "-c", code], env={**os.environ, LANE: "light"})
    ours = subprocess.Popen([sys.executable, "-c", code], env={**os.environ, LANE: "heavy"})
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not all(psutil.Process(p.pid).children() for p in (others, ours)):
            time.sleep(0.1)
        found = {p.pid for p in watch.survivors()}
        their_child = psutil.Process(others.pid).children()[0].pid
        our_child = psutil.Process(ours.pid).children()[0].pid
        assert others.pid not in found and their_child not in found  # the child's own environment is empty
        assert ours.pid in found and our_child in found
    finally:
        kill_trees(others, ours)
