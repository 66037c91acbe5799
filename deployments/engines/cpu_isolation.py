"""Keep a CPU node's other processes off the cores its vLLM engine is bound to (opt-in:
``STUDIO_SERVE_ISOLATE_ENGINE=1``, docs/serving.md "Engine processes on CPU").

On CPU the engine's EngineCore runs the model on the cores vLLM's ``auto`` binding gives it (one
of two here), but every other process of the stack — Ray's GCS, raylet and dashboard, Serve's
controller, the ingress, Router and model replicas, HAProxy — may run on those cores too and
preempt it. Measured on 2 cores (docs/bench/serve-alone-studio-pinned.json): moving them off gave
+15–25 % tokens/s at 8 clients. The mask is per process and inherited, so everything Ray starts on
this node afterwards (training workers, another engine) shares the cores left: for a node that
serves, not one that also trains."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import psutil

logger = logging.getLogger("studio.serve")

ENGINE_MARK = "EngineCore"  # vLLM's process title for the engine core (``VLLM::EngineCore``)


@dataclass(frozen=True)
class Isolation:
    engine_cores: tuple[int, ...]
    other_cores: tuple[int, ...]
    processes: int  # moved off the engine's cores
    threads: int


def stack_processes(home: str) -> list[psutil.Process]:
    """Every process whose environment names ``home`` as its STUDIO_HOME: what ``studio up``
    started (the Ray head hands its environment to all it starts; HAProxy gets it too)."""
    found = []
    for p in psutil.process_iter():
        try:
            if p.environ().get("STUDIO_HOME") == home:
                found.append(p)
        except (psutil.Error, OSError):
            continue  # gone, or another user's
    return found


def is_engine(p: psutil.Process) -> bool:
    try:
        return ENGINE_MARK in " ".join(p.cmdline()) or ENGINE_MARK in p.name()
    except (psutil.Error, OSError):
        return False


def keep_off_engine_cores(home: str) -> Isolation | None:
    """Bind every thread of every process of the stack at ``home``, engines excepted, to the cores
    no engine is bound to. None (and nothing changed) when there is no engine, or the engines hold
    every core."""
    procs = stack_processes(home)
    engines = [p for p in procs if is_engine(p)]
    if not engines:
        return None
    taken: set[int] = set()
    for e in engines:
        try:
            taken |= os.sched_getaffinity(e.pid)
        except OSError:
            continue
    others = set(range(psutil.cpu_count(logical=True) or 1)) - taken
    if not taken or not others:
        logger.info("engine isolation: the engines hold cores %s of %s; nothing moved", sorted(taken),
                    psutil.cpu_count(logical=True))
        return None
    moved = threads = 0
    for p in procs:
        if p in engines:
            continue
        try:
            tids = [t.id for t in p.threads()]
        except (psutil.Error, OSError):
            continue
        done = 0
        for tid in tids:
            try:
                os.sched_setaffinity(tid, others)
                done += 1
            except OSError:
                continue  # a thread that ended meanwhile
        moved += bool(done)
        threads += done
    result = Isolation(tuple(sorted(taken)), tuple(sorted(others)), moved, threads)
    logger.info("engine isolation: %d processes (%d threads) moved to cores %s, off the engines' %s",
                moved, threads, list(result.other_cores), list(result.engine_cores))
    return result
