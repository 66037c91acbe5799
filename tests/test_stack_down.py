"""`studio down`'s stop of the head (studio.stack._kill_group): Ray starts each worker in a process
group of its own, inside the head's session, so SIGKILL to the head's group missed them and they
outlived `studio down` by as long as they took to notice the raylet had gone (a Ray Train actor was
still alive after the demo stack's `studio down` under load). A stand-in head here starts a child
that does the same (its own group, SIGTERM ignored)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import psutil

from studio.ray_connection import pid_alive
from studio.stack import _kill_group

WORKER = ("import os, signal, time; os.setpgid(0, 0); signal.signal(signal.SIGTERM, signal.SIG_IGN); "
          "print(os.getpid(), flush=True); time.sleep(120)")
HEAD = ("import subprocess, sys, time; "
        f"subprocess.Popen([sys.executable, '-c', {WORKER!r}]); time.sleep(120)")


def test_down_leaves_no_process_of_the_heads_session_even_in_a_group_of_its_own():
    head = subprocess.Popen([sys.executable, "-c", HEAD], stdout=subprocess.PIPE, text=True, start_new_session=True)
    worker = None
    try:
        worker = psutil.Process(int(head.stdout.readline()))
        assert os.getsid(worker.pid) == head.pid and os.getpgid(worker.pid) == worker.pid != head.pid
        _kill_group(head.pid, timeout_s=10, gone_s=10)
        head.wait(timeout=10)
        assert not pid_alive(worker.pid), f"{worker.pid} of the head's session outlived it"
    finally:
        for p in (worker, head):
            try:
                if p is not None:
                    os.kill(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
