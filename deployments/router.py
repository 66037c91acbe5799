"""Router: the OpenAI endpoint's brain. It turns the request's ``model`` into a concrete answer —
which base model's ModelDeployment, which adapter — and keeps the books (in-flight requests, metrics,
the completion log). It is off the data path: ``RouterClient`` (in the ingress and the gateway)
asks it where a request goes (``route``), streams the answer straight from that ModelDeployment,
and reports the outcome afterwards (``books``: batched, not awaited). Relaying every token through one
more Serve hop cost half the throughput on a small machine (scripts/bench_serve.py).

Names (docs: ARCHITECTURE.md "Endpoint model names"):

* a served base model id → that base, no adapter;
* a registry name → its champion version (else its newest);
* ``name@N`` → that version;
* an active experiment alias → one of its arms (any of the names above) by weighted draw, sticky
  per the request's ``user`` (``studio.experiments.ab.pick_arm``);
* anything else → a 404 in OpenAI's shape pointing at ``GET /v1/models``.

Base models come from the serve config's ``models:`` (bound in, fixed) and from runtime
deployments (``studio.serving``: each its own Serve application, a ``serving_deployments`` row).
The Router reads READY rows into handles every ``REGISTRY_TTL_S`` and at once when the lifecycle
calls ``sync_deployments``; an evicted (or evicting) name answers 404 "not deployed", one that is
being deployed or restored after a restart answers 503 with ``Retry-After``, and a request whose
replica went away during an eviction gets a clean 503. The Router also runs the ``Restorer``
(``deployments.restorer``): after a restart it deploys the runtime models that were live again.

A registry version is served as the adapter id ``name@N-<model_versions.id>`` (unique per version,
never reused even if a name is deleted and registered again), loaded on the base's ModelDeployment
by whichever ModelDeployment replica answers (the request carries the adapter's id and URI, and a
replica that lacks it loads it first), so any number of replicas serve every version. Registry and
experiment lookups hit the database with a TTL cache of ``REGISTRY_TTL_S`` so a newly registered
or promoted version (or a new experiment) answers within about a second, without a redeploy.

Every answered request is recorded in the completion log (``CompletionRecorder``: batched writes
from a background task, never on the request path) and counted in ``ServingMetrics``; a routed
request that failed is recorded too (``request_failures``: its version, arm, status and latency), so
a canary's error guardrail sees a candidate that fails. A registry name whose loop generation is in
``SHADOW`` (``studio.loops``) gets ``Target.shadow`` on a share of its requests: the client mirrors
those to the candidate after answering (``RouterClient``) and the pair comes back here to be stored.

Names and targets live in ``deployments.routing``; the data path in ``deployments.router_client``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import replace
from typing import Any

from ray import serve
from ray.serve.handle import DeploymentHandle

from deployments.engines.base import engine_dead_body, error_body
from deployments.liveness import EngineLiveness
from deployments.restorer import Restorer
from deployments.routing import (
    MODELS_HINT,
    REGISTRY_TTL_S,
    NameCache,
    ShadowMarks,
    Target,
    adapter_id,
    normalize_base,
)
from deployments.serving_metrics import UNRESOLVED, ServingMetrics
from studio.errors import StudioError
from studio.experiments.ab import list_experiments, pick_arm
from studio.experiments.completions import CompletionRecorder

logger = logging.getLogger("ray.serve")


# /v1 requests make small calls here (route, and batched books): never queue them behind Serve's
# default of 5 ongoing requests per replica.
@serve.deployment(name="Router", ray_actor_options={"num_cpus": 0.05}, max_ongoing_requests=1024)
class Router:
    async def __init__(self, bases: dict[str, dict[str, Any]]):
        """``bases``: served base id → ``{"handle": ModelDeployment handle, "model": path or hub
        id}``. Registry versions whose ``base_model`` is either the id or the path go to it."""
        from studio.settings import StudioSettings

        self._static = dict(bases)
        self._runtime: dict[str, dict[str, Any]] = {}  # READY runtime deployments, same shape
        self._gone: dict[str, str] = {}  # evicted/evicting/failed runtime name → why
        self._coming: dict[str, str] = {}  # deploying/restoring runtime name → its status
        self._coming_aliases: dict[str, str] = {}  # its model path (normalized) → name
        self._synced_at = 0.0
        self._sync_started = self._sync_applied = 0
        self._inflight: dict[str, int] = {}
        self._last_request: dict[str, float] = {}
        self._rebuild_names()
        settings = StudioSettings()
        self._db_url = settings.db_url
        self._cache = NameCache()  # registry name / name@N → Target or its 404
        self._experiments: tuple[float, dict[str, dict[str, Any]]] = (0.0, {})
        self._shadows = ShadowMarks(lambda query: asyncio.to_thread(self._read, query))
        self.metrics = ServingMetrics()
        self.engines = EngineLiveness()  # replicas whose engine died, from their reports
        self.recorder = CompletionRecorder(self._db_url)
        self.restorer = Restorer(settings, self.sync_deployments)
        self._restoring = asyncio.get_running_loop().create_task(self.restorer.run())

    # ---- runtime deployments -----------------------------------------------------------------
    def _rebuild_names(self) -> None:
        # Built aside and swapped in whole: _lookup reads _aliases from worker threads, and a
        # half-built dict made registry versions of a served base answer 404 for a moment.
        bases = {**self._runtime, **self._static}
        aliases: dict[str, str] = {}
        for base, info in bases.items():
            aliases[base] = base
            aliases[normalize_base(info.get("model") or base)] = base
        self._aliases = aliases
        self._handles: dict[str, DeploymentHandle] = {k: v["handle"] for k, v in bases.items()}

    def _deployment_rows(self) -> list[tuple[str, str, str, str, str | None]]:
        from studio.serving.recipe import list_rows

        return self._read(lambda session: [
            (r.name, r.app_name, r.status, r.recipe["deployment"]["engine"]["model"], r.message)
            for r in list_rows(session)])

    async def sync_deployments(self) -> list[str]:
        """Re-read the runtime deployments now; the served base names."""
        from studio.serving.config import deployment_name

        self._sync_started += 1
        seq = self._sync_started
        rows = await asyncio.to_thread(self._deployment_rows)
        if seq < self._sync_applied:  # a later read already landed: this one is older
            return list(self._handles)
        self._sync_applied = seq
        runtime, gone, coming = {}, {}, {}
        for name, app, status, model, message in rows:
            if status == "ready":
                info = self._runtime.get(name)
                if info is None or info["app"] != app:
                    try:
                        handle = serve.get_deployment_handle(deployment_name(name), app)
                    except Exception:  # noqa: BLE001 — a row that outlived its cluster
                        gone[name] = (f"its Serve application {app} is not running (did the "
                                      "cluster restart?)")
                        continue
                    info = {"handle": handle, "model": model, "app": app}
                runtime[name] = info
            elif name in self._static:
                continue
            elif status in ("deploying", "restoring"):
                coming[name] = (status, model)
            else:
                gone[name] = message or status
        for name in set(self._runtime) - set(runtime):
            self.metrics.drop_model(name)
            self.engines.forget(name)
        self._runtime, self._gone, self._synced_at = runtime, gone, time.monotonic()
        self._coming = {name: status for name, (status, _) in coming.items()}
        self._coming_aliases = {normalize_base(model): name for name, (_, model) in coming.items()}
        self._rebuild_names()
        return list(self._handles)

    async def _maybe_sync(self) -> None:
        if time.monotonic() - self._synced_at >= REGISTRY_TTL_S:
            try:
                await self.sync_deployments()
            except Exception as e:  # noqa: BLE001 — keep serving what we know
                logger.warning("reading runtime deployments failed: %s", e)
                self._synced_at = time.monotonic()

    def _not_deployed(self, model: str) -> dict:
        return error_body(f"The model `{model}` is not deployed ({self._gone[model]}); deploy it "
                          f"again with `studio serve deploy` or POST /api/deployments; "
                          f"{MODELS_HINT}", 404, "NotFoundError", "model")

    def _coming_back(self, model: str) -> dict:
        what = ("coming back after a restart (restoring)" if self._coming[model] == "restoring"
                else "being deployed")
        return error_body(f"The model `{model}` is {what} and does not answer yet; retry after "
                          "the Retry-After seconds (`studio serve ls` shows its state)", 503,
                          "ServiceUnavailableError", "model")

    def load(self) -> dict[str, dict[str, Any]]:
        """Per served base: requests in flight here, seconds since its last request (None: none
        since the Router started), its replicas' latest figures (``ServingMetrics``), and the
        replicas still running whose engine died (``dead_replicas``: replica → why) with why the
        model cannot answer at all (``engine_down``, None while a replica can)."""
        now, replicas = time.monotonic(), self.metrics.replica_stats()
        return {b: {"in_flight": self._inflight.get(b, 0),
                    "idle_s": (round(now - self._last_request[b], 3)
                               if b in self._last_request else None),
                    "replicas": replicas.get(b, []),
                    "dead_replicas": self.engines.dead_replicas(b, now),
                    "engine_down": self.engines.down(b, now)} for b in self._handles}

    def report_stats(self, model: str, replica: str, stats: dict[str, Any]) -> None:
        """A ModelDeployment replica's load (memory, KV cache, requests, tokens) for /metrics,
        and whether its engine died (``engine_dead``: why)."""
        self.metrics.report_stats(model, replica, stats)
        self.engines.report(model, replica, stats.get("engine_dead"))

    # ---- names -------------------------------------------------------------------------------
    def _base_of(self, base_model: str) -> str | None:
        return self._aliases.get(base_model) or self._aliases.get(normalize_base(base_model))

    def _lookup(self, ref: str) -> Target | dict:
        """Blocking DB read: a Target, or an OpenAI error dict."""
        from studio.registry.versions import get_version
        from studio.store.db import session_scope

        try:
            with session_scope(self._db_url) as session:
                mv = get_version(session, ref)
                name, version, row_id, base_model, uri = (mv.name, mv.version, mv.id,
                                                          mv.base_model, mv.uri)
        except StudioError:
            return error_body(f"The model `{ref}` does not exist: it is neither a served base "
                              f"model nor a registered name or name@version; {MODELS_HINT}",
                              404, "NotFoundError", "model")
        base = self._base_of(base_model)
        coming = self._coming_aliases.get(normalize_base(base_model))
        if base is None and coming in self._coming:
            return self._coming_back(coming)
        if base is None:
            return error_body(f"The model `{ref}` ({name}@{version}) is an adapter of base model "
                              f"`{base_model}`, which this studio does not serve; add it to the "
                              f"serve config's models: section, or {MODELS_HINT}",
                              404, "NotFoundError", "model")
        return Target(base, f"{name}@{version}", adapter_id(name, version, row_id), uri)

    async def resolve(self, model: Any, user: Any = None) -> Target | dict:
        if not isinstance(model, str) or not model:
            return error_body(f"`model` must name a model; {MODELS_HINT}", 400,
                              "BadRequestError", "model")
        await self._maybe_sync()
        if model in self._handles:
            return Target(model, model)
        if model in self._coming:
            return self._coming_back(model)
        if model in self._gone:
            return self._not_deployed(model)
        experiment = (await self._active_experiments()).get(model)
        if experiment is None:
            return await self._resolve_name(model)
        if experiment["status"] != "active":
            return error_body(f"The model `{model}` is an experiment that is stopped; reactivate "
                              f"it (PATCH /api/experiments/{model}) or request one of its arms; "
                              f"{MODELS_HINT}", 404, "NotFoundError", "model")
        arm = pick_arm(model, experiment["arms"], user if isinstance(user, str) else None)
        target = Target(arm, arm) if arm in self._handles else await self._resolve_name(arm)
        if isinstance(target, dict):  # a copy: the cached error stays as it is
            error = target["error"]
            return {"error": {**error, "message": f"experiment `{model}` arm `{arm}`: "
                                                  f"{error['message']}"}}
        return replace(target, experiment=model, arm=arm)

    async def _resolve_name(self, model: str) -> Target | dict:
        hit = self._cache.get(model)
        if hit is not None:
            return hit
        target = await asyncio.to_thread(self._lookup, model)
        self._cache.put(model, target, REGISTRY_TTL_S)
        return target

    async def _active_experiments(self) -> dict[str, dict[str, Any]]:
        """alias → {"status", "arms"} for every experiment (stopped ones too, for their 404)."""
        expires, experiments = self._experiments
        if expires <= time.monotonic():
            experiments = await asyncio.to_thread(self._read, lambda session: {
                e.alias: {"status": e.status, "arms": list(e.arms)} for e in list_experiments(session)})
            self._experiments = (time.monotonic() + REGISTRY_TTL_S, experiments)
        return experiments

    # ---- endpoints ---------------------------------------------------------------------------
    async def models(self) -> dict[str, Any]:
        """The OpenAI model list: served bases, then registry names and name@N on those bases."""
        rows = await asyncio.to_thread(self._registry_rows)
        now = int(time.time())
        data = [{"id": b, "object": "model", "created": now, "owned_by": "studio", "root": b,
                 "parent": None} for b in self._handles]
        for ref, base, created in rows:
            data.append({"id": ref, "object": "model", "created": created, "owned_by": "studio",
                         "root": base, "parent": base})
        for alias, exp in (await self._active_experiments()).items():
            if exp["status"] == "active":
                data.append({"id": alias, "object": "model", "created": now, "owned_by": "studio",
                             "root": None, "parent": None, "studio_experiment": {
                                 "arms": exp["arms"]}})
        return {"object": "list", "data": data}

    def bases(self) -> list[str]:
        return list(self._handles)

    def base_models(self) -> dict[str, str]:
        """Served base → the model it loads (a path or hub id): an evict asks whether another base
        would serve the registry versions of the one going."""
        return {base: info.get("model") or base for base, info in {**self._runtime, **self._static}.items()}

    def report_adapters(self, model: str, replica: str, adapter_ids: list[str]) -> None:
        """A ModelDeployment replica telling which adapters it holds (for /metrics)."""
        self.metrics.report_adapters(model, replica, adapter_ids)

    def report_engine_metrics(self, model: str, replica: str, blocks: dict[str, str]) -> None:
        """A ModelDeployment replica's engine series (``vllm:*``) for /metrics."""
        self.metrics.engine.report(model, replica, blocks)

    def metrics_text(self) -> str:
        self.metrics.completion_log.labels("written").set(self.recorder.written)
        self.metrics.completion_log.labels("dropped").set(self.recorder.dropped)
        return self.metrics.render()

    async def flush_completions(self) -> int:
        """Write the buffered completion log now (feedback on a just-answered completion)."""
        return await self.recorder.flush()

    def _registry_rows(self) -> list[tuple[str, str, int]]:
        from studio.registry.versions import list_versions
        from studio.store.db import session_scope

        with session_scope(self._db_url) as session:
            versions = list_versions(session)
            rows, names = [], {}
            for mv in versions:
                base = self._base_of(mv.base_model)
                if base is None:
                    continue
                created = int(mv.created_at.timestamp())
                rows.append((f"{mv.name}@{mv.version}", base, created))
                names.setdefault(mv.name, (base, created))
        return [(n, b, c) for n, (b, c) in names.items()] + rows

    # ---- the data path's books (RouterClient calls these) --------------------------------------
    async def route(self, model: Any, user: Any = None) -> Target | dict:
        """Where a request for ``model`` goes (a Target naming the ModelDeployment), or an OpenAI
        error dict. Counts the request as in flight until its report comes in ``books``."""
        target = await self.resolve(model, user)
        if isinstance(target, dict):
            self.metrics.errors.labels(UNRESOLVED, UNRESOLVED, str(target["error"]["code"])).inc()
            return target
        if target.experiment is None and target.label != model:  # a registry name: mirrored?
            target = await self._shadows.mark(model, target)
        handle = self._handles.get(target.base)
        if handle is None:  # evicted since the name was cached
            return self.gone(target.base)
        if (why := self.engines.down(target.base)) is not None:
            # Its replicas' engines died: Serve's queue would hold the request until a new
            # replica is up (a minute or more); answer now, retryable.
            self.metrics.errors.labels(target.base, target.label, "503").inc()
            return engine_dead_body(target.base, why)
        self._inflight[target.base] = self._inflight.get(target.base, 0) + 1
        self._last_request[target.base] = time.monotonic()
        return replace(target, deployment=handle.deployment_name, app=handle.app_name)

    def _read(self, query):
        from studio.store.db import session_scope

        with session_scope(self._db_url) as session:
            return query(session)

    def gone(self, base: str) -> dict | None:
        """The error for a base that does not serve now — 404 evicted or unknown, 503 coming back
        or its engines dead — (None while it serves)."""
        if base in self._handles:
            why = self.engines.down(base)
            return None if why is None else engine_dead_body(base, why)
        if base in self._coming:
            return self._coming_back(base)
        if base in self._gone:
            return self._not_deployed(base)
        return error_body(f"The model `{base}` is not served; {MODELS_HINT}", 404,
                          "NotFoundError", "model")

    async def books(self, started: list[str], reports: list[dict[str, Any]]) -> None:
        """What ``RouterClient`` batches: requests it started on a base without asking ``route``
        (in flight from now), and routed requests that ended (metrics, and the completion log when
        answered whole). Async: it runs on the replica's event loop, where the recorder's
        background writer lives (Serve runs sync methods in a thread pool)."""
        now = time.monotonic()
        for base in started:
            self._inflight[base] = self._inflight.get(base, 0) + 1
            self._last_request[base] = now
        for report in reports:
            self._finished(report, now)

    def _finished(self, report: dict[str, Any], now: float) -> None:
        if "shadow" in report:  # a mirrored answer beside its champion's: the pair, for the judge
            self.recorder.record(report["shadow"], "shadow")
            return
        target: Target = report["target"]
        if target.base in self._inflight:
            self._inflight[target.base] = max(0, self._inflight[target.base] - 1)
        self._last_request[target.base] = now
        labels = (target.base, target.label)
        self.metrics.requests.labels(*labels, report["endpoint"]).inc()
        if report.get("ttft_s") is not None:
            self.metrics.ttft.labels(*labels).observe(report["ttft_s"])
        if report.get("error_code") is not None:
            self.metrics.errors.labels(*labels, str(report["error_code"])).inc()
            if report.get("failure"):  # routed, then failed: logged per arm like an answer
                self.recorder.record(report["failure"], "failure")
            return
        if not report.get("done"):
            return  # the client left mid-answer: nothing whole to log
        self.metrics.latency.labels(*labels).observe(report["latency_s"])
        self.metrics.output_tokens.labels(*labels).inc(report["tokens"])
        if report.get("record"):
            self.recorder.record(report["record"])
