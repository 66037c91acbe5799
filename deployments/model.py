"""ModelDeployment: one base model — an inference engine plus its LoRA adapters — as a Ray Serve
deployment. The router calls it through a handle; nothing here speaks HTTP.

Handle methods:

* ``chat(request, adapter=None)`` / ``completions(request, adapter=None)``: OpenAI request bodies
  (``model`` = the base model's served name or an adapter id). ``adapter`` = ``{"id", "uri"}``
  makes the replica that answers load that adapter first if it does not have it: with several
  replicas (or after a restart) whichever replica Serve picks can serve any registry version, with
  no broadcast and no retry. Generators, so call them with
  ``handle.options(stream=True)``: they yield either one ``dict`` — the whole JSON body, a response
  or an OpenAI-shaped error whose ``error.code`` is the HTTP status — or, for an accepted
  ``"stream": true`` request, the server-sent-event strings to relay as they are (a string may
  hold several events: what the engine produced back to back is sent as one item).
* ``load_adapter(adapter_id, uri)``: fetch the adapter directory from the artifact store (any fsspec
  URI) into a local cache, check it (files whole, same base model, rank within max_lora_rank), then
  load it. A bad adapter raises a StudioError and leaves the engine and other adapters as they were.
* ``unload_adapter(adapter_id)``, ``adapters()``, ``stats()``; ``check_health`` is Serve's probe.

A replica whose engine died (its process killed or crashed) answers every request with an OpenAI
503 at once, tells the Router (its stats carry ``engine_dead``) and fails its health checks, so
Serve replaces it within seconds (docs/operations.md "An engine that dies").

Each replica reports the adapters it holds to the application's Router (when there is one) after
they change and every ``REPORT_EVERY_S``, for the ``studio_adapters_loaded`` gauge on ``/metrics``,
and the engine's own ``vllm:*`` series every few seconds (deployments/engine_metrics.py).

On a CPU machine the replica asks only for (fractional) logical CPUs: Ray here advertises more
logical CPUs than cores, and the engine runs in processes vLLM starts next to the replica.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any


from ray import serve
from ray.serve import Application

from deployments.engine_metrics import EVERY_S as ENGINE_METRICS_EVERY_S, engine_metric_blocks
from deployments.engines.base import (Engine, cuda_available, engine_dead_body,
                                       error_body)
from deployments.engines.registry import make_engine
from studio.errors import StudioError
from studio.models.adapters import fetch_adapter
from studio.serving.config import ModelDeploymentConfig, deployment_name
from studio.settings import StudioSettings, settings_env

logger = logging.getLogger("ray.serve")
REPORT_EVERY_S = 5.0
STATS_EVERY_S = 2.0


CHILDREN_EVERY_S = 30.0
_children: tuple[float, list] | None = None  # (when listed, this replica's descendant processes)


def replica_memory() -> dict[str, Any]:
    import psutil

    try:
        import torch

        if torch.cuda.is_available():
            free, total = torch.cuda.mem_get_info()
            return {"memory_kind": "gpu", "memory_bytes": total - free}
    except ImportError:
        pass
    global _children
    me = psutil.Process()
    rss = me.memory_info().rss
    now = time.monotonic()
    if _children is None or now - _children[0] > CHILDREN_EVERY_S:
        # Listing descendants reads every process's parent from /proc: the engine's processes,
        # started with the replica, are listed again only every CHILDREN_EVERY_S.
        _children = (now, me.children(recursive=True))
    for child in _children[1]:
        try:
            rss += child.memory_info().rss
        except psutil.Error:
            _children = None
    return {"memory_kind": "rss", "memory_bytes": rss}


# Serve replaces a replica after 3 failed health checks in a row: every 2 s, a replica whose
# engine died is gone in ~6 s (``check_health`` only reads vLLM's flag: the probe is cheap).
@serve.deployment(name="ModelDeployment", max_ongoing_requests=32, health_check_period_s=2,
                  health_check_timeout_s=30, ray_actor_options={"num_cpus": 1})
class ModelDeployment:
    async def __init__(self, config: ModelDeploymentConfig, report_to: str | None = None):
        """``report_to``: the Serve application whose Router gets this replica's reports (default:
        this replica's own application; a runtime-deployed model names the studio's)."""
        self.config = config  # validated once, by the builder, and bound as the object itself
        self._report_to = report_to
        self._cache_dir = Path(self.config.adapter_cache_dir
                               or StudioSettings().home_abs / "cache" / "adapters")
        self.engine: Engine = make_engine(self.config.engine)
        await self.engine.start()
        self._loading: dict[str, asyncio.Lock] = {}
        self._reported: tuple[str, ...] | None = None
        self._report_task = asyncio.get_running_loop().create_task(self._report_loop())
        logger.info("ModelDeployment serving %s on %s", self.config.engine.name,
                    self.config.engine.engine)

    async def chat(self, request: dict[str, Any], adapter: dict[str, str] | None = None):
        async for item in self._generate("chat", request, adapter):
            yield item

    async def completions(self, request: dict[str, Any], adapter: dict[str, str] | None = None):
        async for item in self._generate("completions", request, adapter):
            yield item

    async def _generate(self, endpoint, request, adapter=None):
        if (dead := self.engine.dead()) is not None:  # no adapter load into a dead engine either
            yield engine_dead_body(self.config.engine.name, dead)
            return
        if adapter and not self.engine.has_adapter(adapter["id"]):
            try:
                await self._load_once(adapter["id"], adapter["uri"])
            except StudioError as e:  # a bad version: this request fails, nothing else does
                label = adapter.get("label") or adapter["id"]
                yield error_body(f"model version {label!r} cannot be served: {e}", e.status_code,
                                 type(e).__name__, "model")
                return
        result = await self.engine.generate(endpoint, request)
        if isinstance(result, dict):
            yield result
            return
        async for chunks in coalesced(result):
            yield chunks

    async def _load_once(self, adapter_id: str, uri: str) -> None:
        # Concurrent first requests for one version fetch and load it once.
        lock = self._loading.setdefault(adapter_id, asyncio.Lock())
        async with lock:
            if not self.engine.has_adapter(adapter_id):
                await self.load_adapter(adapter_id, uri)

    async def load_adapter(self, adapter_id: str, uri: str) -> dict[str, Any]:
        # Fetching blocks on I/O: keep it off the loop that streams tokens. The engine checks the
        # files (whole, same base model, rank) before loading them.
        path = await asyncio.to_thread(fetch_adapter, uri, self._cache_dir)
        await self.engine.add_adapter(adapter_id, str(path))
        logger.info("adapter %s loaded from %s", adapter_id, uri)
        self._wake_report()
        return {"id": adapter_id, "uri": uri, "path": str(path)}

    async def unload_adapter(self, adapter_id: str) -> None:
        await self.engine.remove_adapter(adapter_id)
        self._wake_report()

    # ---- adapter reports to the Router (metrics) ------------------------------------------------
    def _wake_report(self) -> None:
        self._reported = None  # the next loop turn reports

    async def _report_loop(self) -> None:
        """Tell the Router this replica's load, engine series and adapters. Best effort: metrics
        must never disturb serving, and a ModelDeployment deployed without a Router reports
        nothing."""
        try:
            ctx = serve.get_replica_context()
            router = serve.get_deployment_handle("Router", app_name=self._report_to or ctx.app_name)
            replica = ctx.replica_id.unique_id
            labels = {"deployment": ctx.deployment, "version": self.config.engine.name,
                      "replica": replica}
        except Exception:  # noqa: BLE001 — no Router in this application
            return
        last_sent = last_stats = last_engine = 0.0
        dead = None
        while True:
            await asyncio.sleep(0.5)
            loaded = tuple(sorted(a["id"] for a in self.engine.list_adapters() if a["loaded"]))
            now = time.monotonic()
            if dead is None and (dead := self.engine.dead()) is not None:
                # Tell the Router at once: it answers 503 for this model while no replica can.
                logger.error("the engine of %s died (%s): answering 503 and failing the health "
                             "check, so Serve replaces this replica", self.config.engine.name, dead)
                last_stats = 0.0
            if now - last_stats >= STATS_EVERY_S:
                last_stats = now
                try:
                    await router.report_stats.remote(self.config.engine.name, replica,
                                                     await self.stats())
                except Exception as e:  # noqa: BLE001
                    logger.debug("stats report to the Router failed: %s", e)
            if now - last_engine >= ENGINE_METRICS_EVERY_S:
                last_engine = now
                try:  # rendered off the loop that streams tokens
                    blocks = await asyncio.to_thread(engine_metric_blocks, labels)
                    if blocks:
                        await router.report_engine_metrics.remote(self.config.engine.name,
                                                                  replica, blocks)
                except Exception as e:  # noqa: BLE001
                    logger.debug("engine metrics report to the Router failed: %s", e)
            if loaded == self._reported and now - last_sent < REPORT_EVERY_S:
                continue
            try:
                await router.report_adapters.remote(self.config.engine.name, replica, list(loaded))
                self._reported, last_sent = loaded, now
            except Exception as e:  # noqa: BLE001
                logger.debug("adapter report to the Router failed: %s", e)
                await asyncio.sleep(REPORT_EVERY_S)

    def adapters(self) -> list[dict[str, Any]]:
        return self.engine.list_adapters()

    async def stats(self) -> dict[str, Any]:
        """The engine's load (running/waiting requests, KV-cache use, generated tokens, adapters)
        plus this replica's memory: GPU memory in use where there is a GPU, else the resident
        memory of the replica and the engine processes it started."""
        return {**await self.engine.stats(), **replica_memory()}

    async def check_health(self) -> None:
        await self.engine.health()  # EngineDead once the engine's processes died

    def __del__(self):
        # Serve calls this on scale-down and redeploys: stop vLLM's engine processes with us.
        engine = getattr(self, "engine", None)
        if engine is not None:
            engine.shutdown()


async def coalesced(chunks: AsyncIterator[str]) -> AsyncIterator[str]:
    """The engine's SSE strings, joined with any that came right behind them. vLLM yields several
    at once at a request's start (role, first tokens) and end (finish, usage, ``[DONE]``), and each
    item costs a trip through Serve's streaming on the replica, the caller and the proxy; this
    halves the items with no added latency: the first string waiting is never held back for later
    ones. Closing this generator cancels the reader, which aborts the engine request."""
    queue: asyncio.Queue = asyncio.Queue()
    end = object()

    async def read() -> None:
        try:
            async for chunk in chunks:
                queue.put_nowait(chunk)
        except Exception as e:  # noqa: BLE001 — raised again on the reading side
            queue.put_nowait(e)
        queue.put_nowait(end)

    reader = asyncio.get_running_loop().create_task(read())
    try:
        while True:
            batch = [await queue.get()]
            while not queue.empty():
                batch.append(queue.get_nowait())
            done = batch[-1] is end
            if done:
                batch.pop()
            if batch and isinstance(batch[-1], Exception):
                text = "".join(batch[:-1])
                if text:
                    yield text
                raise batch[-1]
            if batch:
                yield "".join(batch)
            if done:
                return
    finally:
        if not reader.done():
            reader.cancel()
            # Cancelled (the normal way out), or the engine's own error on its way down.
            with contextlib.suppress(BaseException):
                await reader


def check_device(cfg: ModelDeploymentConfig) -> None:
    """Fail when the deployment is built, not minutes later inside a replica that never gets ready."""
    if cfg.engine.engine == "sglang" and not cuda_available():
        raise StudioError(
            "SGLang needs a CUDA GPU, and there is none on this machine or in the connected "
            "Ray cluster",
            "use `engine: vllm` on CPU; on a GPU machine make SGLang's environment with "
            "`make setup GPU=1 SGLANG=1` and set STUDIO_SGLANG_PYTHON=.venv-sglang/bin/python",
        )


def engine_python(cfg: ModelDeploymentConfig) -> str | None:
    """The interpreter of this deployment's replicas when it is not the studio's own: SGLang pins
    torch, xgrammar and openai against vLLM's, so it has its own venv (``make setup GPU=1 SGLANG=1``
    makes ``.venv-sglang``), named by ``STUDIO_SGLANG_PYTHON`` (Ray's ``py_executable``)."""
    python = os.environ.get("STUDIO_SGLANG_PYTHON") if cfg.engine.engine == "sglang" else None
    if not python:
        return None
    path = Path(python).expanduser().absolute()  # replicas run in another cwd
    if not path.is_file():
        raise StudioError(f"STUDIO_SGLANG_PYTHON={python} is not a file",
                          "run `make setup GPU=1 SGLANG=1` (it makes .venv-sglang/bin/python) "
                          "or unset STUDIO_SGLANG_PYTHON")
    return str(path)


def build_model_deployment(config: ModelDeploymentConfig | dict[str, Any],
                           name: str | None = None, report_to: str | None = None,
                           **serve_options: Any) -> Application:
    """The bound deployment for one base model (the router binds one per base model; a runtime
    deployment is an application of its own). ``serve_options`` go to ``Deployment.options``."""
    cfg = ModelDeploymentConfig.model_validate(config)
    check_device(cfg)
    model = Path(cfg.engine.model).expanduser()
    if model.exists():  # replicas run in another cwd
        cfg = cfg.model_copy(update={"engine": cfg.engine.model_copy(
            update={"model": str(model.resolve())})})
    options: dict[str, Any] = {
        "name": name or deployment_name(cfg.engine.name),
        "max_ongoing_requests": cfg.max_ongoing_requests,
        "ray_actor_options": {"num_cpus": cfg.num_cpus, "num_gpus": cfg.num_gpus,
                              **({"resources": cfg.resources} if cfg.resources else {}),
                              **({"memory": int(cfg.memory_gib * 2**30)} if cfg.memory_gib else {}),
                              "runtime_env": {"env_vars": settings_env(StudioSettings())}},
    }
    if python := engine_python(cfg):
        options["ray_actor_options"]["runtime_env"]["py_executable"] = python
    options.update(serve_options)
    if cfg.autoscaling:
        options["autoscaling_config"] = cfg.autoscaling.model_dump()
    else:
        options["num_replicas"] = cfg.num_replicas
    return ModelDeployment.options(**options).bind(cfg, report_to)
