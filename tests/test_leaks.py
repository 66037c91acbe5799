"""The leak watch's ownership API: processes a shared fixture owns are not reported while it owns
them; once it releases them, those still running are."""

from __future__ import annotations

import subprocess
import sys

from tests.leaks import LeakWatch


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
