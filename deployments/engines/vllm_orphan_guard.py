"""vLLM general plugin: an engine process exits once the process that started it is gone.

vLLM's engine core runs in a process of its own, started by the ``AsyncLLM`` client in a model
replica (and the core starts its workers, which already exit with the core through vLLM's death
pipe). When the replica is stopped cleanly, the client shuts the core down. When it is killed
instead — Ray ending a replica past its graceful-shutdown timeout, Ctrl-C on ``serve run`` (which
stops the local Ray under its replicas), an OOM kill — nothing tells the core: it is re-parented and
keeps its ~3 GB and a share of the CPU until someone finds it (CI once had an engine core and its
worker alive for the rest of a 35-minute run).

``register`` (pyproject.toml's ``studio_orphan_guard`` entry point; vLLM loads general plugins in
every process it starts) arms a daemon thread in processes that ``multiprocessing`` started —
the engine core and its workers, never the replica or an API server, whose parent is Ray or a
shell. The thread checks once a second whether the parent pid changed (the kernel re-parents an
orphan); then it logs and sends itself SIGTERM, which vLLM turns into its own orderly shutdown, and
exits hard after ``GRACE_S`` if that did not end the process. ``STUDIO_VLLM_ORPHAN_GUARD=0`` turns it
off. Never raises: a guard that fails must not stop the engine.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import threading
import time

logger = logging.getLogger("vllm.studio.orphan_guard")

POLL_S = 1.0
GRACE_S = 10.0
_armed: list[int] = []  # the parent pid this process watches, once armed


def register() -> None:
    """The entry point vLLM calls."""
    try:
        if arm():
            logger.debug("studio orphan guard: pid %s exits when its parent %s is gone", os.getpid(), _armed[0])
    except Exception:  # noqa: BLE001
        logger.exception("studio orphan guard: not armed; this process may outlive a killed replica")


def arm() -> bool:
    """Start the watcher in a ``multiprocessing`` child (idempotent); whether it watches now."""
    if os.environ.get("STUDIO_VLLM_ORPHAN_GUARD", "1") == "0" or multiprocessing.parent_process() is None:
        return False
    if _armed:
        return True
    parent = os.getppid()
    _armed.append(parent)
    threading.Thread(target=_watch, args=(parent,), name="studio-orphan-guard", daemon=True).start()
    return True


def _watch(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(POLL_S)
    logger.warning("studio orphan guard: parent process %s is gone; vLLM process %s (%s) shuts down",
                   parent, os.getpid(), multiprocessing.current_process().name)
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(GRACE_S)
    os._exit(1)
