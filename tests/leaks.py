"""A pytest plugin: every test module ends with the environment it started with, and the run ends
with a report per module — wall time, load, pytest's memory, the environment variables it changed
(and that were put back) and the processes it left running.

Starting a vLLM engine in the test process sets LD_PRELOAD (libgomp/tcmalloc), LOCAL_WORLD_SIZE,
thread settings and more in ``os.environ`` (vllm/platforms/cpu.py); subprocesses of later modules
inherited them, and an SFT job trained 3.5x slower (334 s instead of 95 s). So ``os.environ`` is
saved before a module's first test (before its fixtures) and restored after its last teardown.
The same holds for the test process's blocked and ignored signals: they are inherited by every
subprocess it starts, and a `serve run` started with SIGINT blocked ignores Ctrl-C (its test then
waited out a 60 s timeout and killed it, in every suite run).

Heavy modules also start Ray clusters, Serve apps and vLLM engines; one left running keeps using
the CPU of a 2-core machine. After a module, live processes of the kinds tests start (Ray, vLLM,
Python, browsers) that did not exist when the session started are listed under the first module
after which they were seen (a session-scoped fixture's under the module that first used it).
``STUDIO_TEST_LEAKS=fail`` makes any such process fail the run (exit status 1); the default only
reports. Processes of another test run on the same machine are counted too (use it alone), but for
those of `make test`'s other lanes: scripts/test.sh runs three lanes at once, each with
``PYTEST_STUDIO_LANE`` set (heavy, training, light), and a process whose environment (or nearest
ancestor's) names another lane is not this one's.
``STUDIO_TEST_REPORT=FILE`` also appends each module's wall time to FILE as a JSON line when the
module ends (xdist workers included), so a run that is stopped midway still tells where time went.
"""

from __future__ import annotations

import json
import os
import signal
import time
from dataclasses import dataclass, field

import psutil
import pytest

LANE = "PYTEST_STUDIO_LANE"  # set by scripts/test.sh: heavy, training or light
MARKS = ("ray", "VLLM", "vllm", "python", "chrom", "studio", "redis-server", "minio", "moto")
# pytest's own multiprocessing helper lives until pytest exits; pip is a developer's, not a test's.
NOT_LEAKS = ("multiprocessing.resource_tracker", "pip install")


def alive(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def signal_state() -> tuple[set[int], set[int]]:
    """The main thread's blocked and ignored signals (what a subprocess started now inherits:
    ``subprocess`` resets only SIGPIPE/SIGXFSZ), from /proc: a C library's changes included."""
    fields = {}
    try:
        with open("/proc/self/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in ("SigBlk", "SigIgn"):
                    fields[key] = int(value.strip(), 16)
    except OSError:
        return set(), set()

    def signals(mask: int) -> set[int]:
        return {n for n in range(1, 65) if mask >> (n - 1) & 1}

    return signals(fields.get("SigBlk", 0)), signals(fields.get("SigIgn", 0))


def restore_signals(saved: tuple[set[int], set[int]]) -> list[str]:
    """Unblocks and un-ignores what was not blocked/ignored in ``saved``; names what changed."""
    blocked, ignored = signal_state()
    changed = []
    newly_blocked = blocked - saved[0]
    if newly_blocked:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, newly_blocked)
        changed += [f"{_name(n)} blocked" for n in sorted(newly_blocked)]
    for n in sorted(ignored - saved[1]):
        try:
            signal.signal(n, signal.default_int_handler if n == signal.SIGINT else signal.SIG_DFL)
            changed.append(f"{_name(n)} ignored")
        except (OSError, ValueError):
            pass
    return changed


def _name(n: int) -> str:
    try:
        return signal.Signals(n).name
    except ValueError:
        return f"signal {n}"


@dataclass
class ModuleReport:
    module: str
    seconds: float
    load: float
    rss_gib: float
    new: list[str] = field(default_factory=list)


class LeakWatch:
    def __init__(self) -> None:
        self.me = os.getpid()
        self.baseline = {p.pid for p in psutil.process_iter()}
        self.seen: set[int] = set()
        self.reports: list[ModuleReport] = []
        self.module_t0: dict[str, float] = {}
        self.module_env: dict[str, str] = {}
        self.module_signals: tuple[set[int], set[int]] = (set(), set())
        self.env_changes: list[str] = []

    def own(self, pids: set[int]) -> None:
        """Processes a shared fixture (a stack several modules use) keeps running past a module's
        end: not reported while it owns them."""
        self.seen |= pids

    def release(self, pids: set[int], wait_s: float = 10.0) -> None:
        """The fixture that owned ``pids`` stopped them: those still running after ``wait_s`` are
        reported as left running at the next module end."""
        deadline = time.monotonic() + wait_s
        left = set(pids)
        while left and time.monotonic() < deadline:
            left = {pid for pid in left if _pid_alive(pid)}
            if left:
                time.sleep(0.2)
        self.seen -= left

    def survivors(self) -> list[psutil.Process]:
        """New live processes of the kinds tests start (Ray, vLLM, Python, browsers); kernel
        threads, unrelated system processes and the other lane's processes are not counted."""
        out = []
        for p in psutil.process_iter(["pid", "name", "status", "cmdline"]):
            if p.pid in self.baseline or p.pid == self.me or p.info["status"] == psutil.STATUS_ZOMBIE:
                continue
            cmd = " ".join(p.info["cmdline"] or [])
            if any(mark in cmd for mark in MARKS) and not any(ok in cmd for ok in NOT_LEAKS) \
                    and not other_lane(p):
                out.append(p)
        return out

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_setup(self, item: pytest.Item) -> None:
        if str(item.path) not in self.module_t0:  # a module's first test, before its fixtures
            self.module_t0[str(item.path)] = time.monotonic()
            self.module_env = dict(os.environ)
            self.module_signals = signal_state()

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_teardown(self, item: pytest.Item, nextitem: pytest.Item | None):
        yield
        if nextitem is not None and nextitem.path == item.path:
            return
        module = os.path.relpath(str(item.path))
        seconds = time.monotonic() - self.module_t0.get(str(item.path), time.monotonic())
        survivors = [p for p in self.survivors() if p.pid not in self.seen]
        if survivors:  # what a teardown just signalled to stop gets a moment to go
            time.sleep(0.5)
            survivors = [p for p in survivors if alive(p)]
        new = []
        for p in survivors:
            self.seen.add(p.pid)
            try:
                cpu = sum(p.cpu_times()[:2])
                cmd = " ".join(p.info["cmdline"] or [p.info["name"] or "?"])[:140]
            except psutil.Error:
                continue
            new.append(f"{p.pid} cpu {cpu:.0f}s {cmd}")
        rss = psutil.Process(self.me).memory_info().rss / 2**30
        self.reports.append(ModuleReport(module, seconds, os.getloadavg()[0], rss, new))
        if os.environ.get("STUDIO_TEST_REPORT"):  # a JSON line per module, as it ends (a killed run keeps them)
            with open(os.environ["STUDIO_TEST_REPORT"], "a") as f:
                f.write(json.dumps({"module": module, "seconds": round(seconds, 1), "load": round(os.getloadavg()[0], 2),
                                    "worker": os.environ.get("PYTEST_XDIST_WORKER", ""), "left": len(new),
                                    "lane": os.environ.get("PYTEST_STUDIO_LANE", ""), "end": round(time.time(), 1)}) + "\n")
        saved = self.module_env
        changed = sorted(k for k in set(os.environ) | set(saved) if os.environ.get(k) != saved.get(k))
        if changed:
            self.env_changes.append(f"{module}: {', '.join(changed)}")
            os.environ.clear()
            os.environ.update(saved)
        signals = restore_signals(self.module_signals)
        if signals:
            self.env_changes.append(f"{module} (signals): {', '.join(signals)}")

    def pytest_terminal_summary(self, terminalreporter) -> None:
        tr = terminalreporter
        tr.section("modules: wall time, load and pytest's memory at their end, processes they left")
        for r in sorted(self.reports, key=lambda r: -r.seconds)[:30]:
            tr.write_line(f"{r.seconds:7.1f} s  load {r.load:5.2f}  pytest rss {r.rss_gib:4.1f} GiB  {r.module}"
                          + (f"  LEFT {len(r.new)} process(es)" if r.new else ""))
        for line in self.env_changes:
            tr.write_line(f"environment changed (and put back) by {line}")
        leaked = [r for r in self.reports if r.new]
        for r in leaked:
            tr.write_line(f"left running after {r.module}:")
            for line in r.new[:12]:
                tr.write_line(f"    {line}")
        still = self.survivors()
        if still:
            tr.write_line(f"still running at the end of the session: {len(still)} process(es)")
            for p in still[:12]:
                try:
                    tr.write_line(f"    {p.pid} {' '.join(p.cmdline())[:140]}")
                except psutil.Error:
                    pass

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if os.environ.get("STUDIO_TEST_LEAKS") == "fail" and any(r.new for r in self.reports):
            session.exitstatus = pytest.ExitCode.TESTS_FAILED


def lane_of(p: psutil.Process) -> str | None:
    """The `make test` lane that started the process: the first environment that names one, its own
    or its nearest ancestor's (a browser's renderers get a cleared environment); None for none."""
    try:
        chain = [p, *p.parents()]
    except psutil.Error:
        return None
    for proc in chain:
        try:
            lane = proc.environ().get(LANE)
        except psutil.Error:
            continue
        if lane:
            return lane
    return None


def other_lane(p: psutil.Process) -> bool:
    """The process was started by another of `make test`'s lanes than this one."""
    mine = os.environ.get(LANE)
    theirs = lane_of(p) if mine else None
    return theirs is not None and theirs != mine


def kill_trees(*procs) -> None:
    """SIGKILL each ``subprocess.Popen`` and everything under it, and reap it (the tests' cleanup)."""
    for proc in procs:
        for child in psutil.Process(proc.pid).children(recursive=True):
            child.kill()
        proc.kill()
        proc.wait()


def _pid_alive(pid: int) -> bool:
    try:
        return alive(psutil.Process(pid))
    except psutil.Error:
        return False
