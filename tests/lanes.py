"""Keeps `make test`'s background lanes below the foreground one in priority (scripts/test.sh).

``python -m tests.lanes NICE LANE [LANE...]`` runs until its parent (the script) goes: every process
that belongs to one of the LANEs (``PYTEST_STUDIO_LANE`` in its environment or its nearest
ancestor's, as the leak watch finds it: tests/leaks.py ``lane_of``) gets its *session* set to nice
NICE, through ``/proc/PID/autogroup``.

Why the session and not the process: with the kernel's autogroup scheduling on
(``/proc/sys/kernel/sched_autogroup_enabled`` = 1, the default of most distributions), the CPU is
shared between sessions first and a process's nice value only counts inside its session. The tests
start Ray heads, drivers, `studio` CLI runs and stacks in sessions of their own, so a lane run with
``nice`` gave each of them a full share anyway: two lanes that start Ray clusters at once starved
each other's control plane ("Failed to connect to GCS within 60 seconds", docs/decisions.md,
2026-12-07). A session's nice value is the same weight for the whole session, whatever its
processes' own values: at nice 19 a background session gets about 1.5 % of a core that a
foreground session wants, and all of an idle one.

The script starts each background lane in a session of its own (``setsid``), so the foreground
lane's session (the terminal's, `make`'s) is never touched. Without autogroups (the setting off, or
no ``/proc/PID/autogroup``) the processes' own nice value is what counts and the script's ``nice``
already applies: this watcher then has nothing to do and says so once.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import psutil

from tests.leaks import lane_of

POLL_S = 0.25


def autogroups_on() -> bool:
    try:
        return Path("/proc/sys/kernel/sched_autogroup_enabled").read_text().strip() == "1"
    except OSError:
        return False


def session_nice(pid: int) -> int | None:
    """The nice value of the session (autogroup) of ``pid``: /proc/PID/autogroup reads
    "/autogroup-104 nice 0"; None once the process is gone."""
    try:
        return int(Path(f"/proc/{pid}/autogroup").read_text().split()[-1])
    except (OSError, ValueError, IndexError):
        return None


def set_session_nice(pid: int, nice: int) -> bool:
    """Gives the session (autogroup) of ``pid`` the nice value ``nice``; False where the kernel said
    no (the process is gone, or a rate limit: the caller tries again on its next round)."""
    try:
        Path(f"/proc/{pid}/autogroup").write_text(str(nice))
    except OSError:
        return False
    return True


class Watcher:
    """One round (``scan``) every POLL_S: the lane of each new process is looked up once; each
    process of a watched lane has its session's nice value read on every round and set where it
    differs, because a process may call setsid() after the round that first saw it (Ray, Chromium
    and the tests' own subprocesses do)."""

    def __init__(self, nice: int, lanes: set[str]):
        self.nice, self.lanes = nice, lanes
        self.lane: dict[tuple[int, float], str | None] = {}  # (pid, create time) -> lane

    def scan(self) -> int:
        """Sets the sessions found at another nice value; returns how many it set."""
        changed, alive = 0, set()
        for p in psutil.process_iter(["create_time"]):
            key = (p.pid, p.info["create_time"])
            alive.add(key)
            if key not in self.lane:
                self.lane[key] = lane_of(p)
            if self.lane[key] not in self.lanes:
                continue
            now = session_nice(p.pid)
            if now is not None and now != self.nice and set_session_nice(p.pid, self.nice):
                changed += 1
        for key in [k for k in self.lane if k not in alive]:
            del self.lane[key]
        return changed


def main(argv: list[str]) -> int:
    if len(argv) < 2 or not argv[0].lstrip("-").isdigit():
        print("usage: python -m tests.lanes NICE LANE [LANE...]", file=sys.stderr)
        return 2
    nice, lanes = int(argv[0]), set(argv[1:])
    if not autogroups_on():
        print("tests.lanes: no autogroup scheduling here; the lanes' nice value applies as it is")
        return 0
    parent = os.getppid()
    watcher = Watcher(nice, lanes)
    while os.getppid() == parent:
        watcher.scan()
        time.sleep(POLL_S)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
