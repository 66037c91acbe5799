"""Prometheus metrics of /v1 serving, labelled by base model and concrete version.

They live in the Router (one replica: every /v1 request passes through it) in their own
``CollectorRegistry``; the ingress's ``/metrics`` appends ``render()`` to its own process metrics,
so one scrape of ``/metrics`` shows them whichever ingress replica answers. Adapters loaded are
engine-side: each ModelDeployment replica reports its loaded adapters to the Router
(``report_adapters``), labelled by replica; a replica not heard from for ``REPLICA_STALE_S``
(scaled down, dead) drops out.

Each replica also reports its load every few seconds (``report_stats``): memory (GPU where there
is one, else RSS of the replica and its engine processes), KV-cache use, running and waiting
requests, adapters loaded and tokens/s (from the engine's generated-token count between two
reports) — the ``studio_replica_*`` gauges, and ``replica_stats()`` for ``GET /api/deployments``;
and every few seconds the engine's own ``vllm:*`` series (``report_engine_metrics``,
deployments/engine_metrics.py), printed after the studio's.

``model`` is the served base model id; ``version`` is what answered (the base id or ``name@N``).
Requests whose name does not resolve count under ``model="(unresolved)"`` so client-chosen strings
never become label values.
"""

from __future__ import annotations

import re
import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from deployments.engine_metrics import EngineMetricsStore

UNRESOLVED = "(unresolved)"
REPLICA_STALE_S = 60.0
_ADAPTER_ID = re.compile(r"^(?P<label>.+@\d+)-\d+$")  # name@N-<row id> → name@N
_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class ServingMetrics:
    def __init__(self):
        self.registry = r = CollectorRegistry()
        labels = ["model", "version"]
        self.requests = Counter("studio_requests", "/v1 generation requests by what answered.",
                                labels + ["endpoint"], registry=r)
        self.errors = Counter("studio_request_errors", "/v1 requests answered with an error.",
                              labels + ["code"], registry=r)
        self.ttft = Histogram("studio_ttft_seconds", "Router to the engine's first item (streams: "
                              "the first chunk; whole bodies: the body).", labels,
                              buckets=_SECONDS, registry=r)
        self.latency = Histogram("studio_request_latency_seconds", "Whole request in the router.",
                                 labels, buckets=_SECONDS, registry=r)
        self.output_tokens = Counter("studio_output_tokens", "Generated tokens; rate() is "
                                     "tokens/s.", labels, registry=r)
        self.adapters = Gauge("studio_adapters_loaded", "1 per adapter version loaded in an "
                              "engine replica.", labels + ["replica"], registry=r)
        self.completion_log = Gauge("studio_completion_log_rows", "Completion log rows since the "
                                    "router started, by outcome (written, dropped).",
                                    ["outcome"], registry=r)
        self._replicas: dict[tuple[str, str], tuple[float, list[str]]] = {}
        replica = ["model", "replica"]
        self.memory = Gauge("studio_replica_memory_bytes", "Memory of a model replica: GPU memory "
                            "in use (kind=gpu) or RSS of the replica and its engine (kind=rss).",
                            replica + ["kind"], registry=r)
        self.kv_cache = Gauge("studio_replica_kv_cache_usage", "Fraction of the replica's KV "
                              "cache in use (0-1).", replica, registry=r)
        self.running = Gauge("studio_replica_running_requests", "Requests the engine is "
                             "decoding.", replica, registry=r)
        self.waiting = Gauge("studio_replica_waiting_requests", "Requests queued in the engine.",
                             replica, registry=r)
        self.tokens_per_s = Gauge("studio_replica_tokens_per_second", "Generated tokens per "
                                  "second between the replica's last two reports.", replica,
                                  registry=r)
        self._stats: dict[tuple[str, str], dict] = {}
        self.engine = EngineMetricsStore(REPLICA_STALE_S)  # the replicas' vllm:* series

    def report_stats(self, model: str, replica: str, stats: dict) -> None:
        now = time.monotonic()
        prev = self._stats.get((model, replica))
        tokens = stats.get("generated_tokens_total")
        rate = None
        if prev and tokens is not None and prev.get("generated_tokens_total") is not None:
            elapsed = now - prev["_at"]
            rate = max(0, tokens - prev["generated_tokens_total"]) / elapsed if elapsed > 0 else 0.0
        adapters = (stats.get("adapters") or {}).get("loaded") or []
        row = {"replica": replica, "memory_bytes": stats.get("memory_bytes"),
               "memory_kind": stats.get("memory_kind"),
               "kv_cache_usage": stats.get("kv_cache_usage"),
               "running_requests": stats.get("running_requests"),
               "waiting_requests": stats.get("waiting_requests"),
               "adapters_loaded": [version_label(a) for a in adapters],
               "tokens_per_s": rate, "generated_tokens_total": tokens, "_at": now}
        self._drop_stats(model, replica)
        self._stats[(model, replica)] = row
        if row["memory_bytes"] is not None:
            self.memory.labels(model, replica, row["memory_kind"] or "rss").set(row["memory_bytes"])
        for gauge, key in ((self.kv_cache, "kv_cache_usage"), (self.running, "running_requests"),
                           (self.waiting, "waiting_requests"), (self.tokens_per_s, "tokens_per_s")):
            if row[key] is not None:
                gauge.labels(model, replica).set(row[key])
        for key, seen in list(self._stats.items()):
            if now - seen["_at"] > REPLICA_STALE_S:
                self._drop_stats(*key)

    def drop_model(self, model: str) -> None:
        """Forget an evicted model's replicas at once (not after REPLICA_STALE_S)."""
        self.engine.drop_model(model)
        for key in [k for k in self._stats if k[0] == model]:
            self._drop_stats(*key)
        for key in [k for k in self._replicas if k[0] == model]:
            self._drop(*key)
            del self._replicas[key]

    def _drop_stats(self, model: str, replica: str) -> None:
        row = self._stats.pop((model, replica), None)
        if row is None:
            return
        for gauge, labels in ((self.memory, (model, replica, row["memory_kind"] or "rss")),
                              (self.kv_cache, (model, replica)), (self.running, (model, replica)),
                              (self.waiting, (model, replica)),
                              (self.tokens_per_s, (model, replica))):
            try:
                gauge.remove(*labels)
            except KeyError:
                pass

    def replica_stats(self) -> dict[str, list[dict]]:
        """model → its replicas' latest figures, with ``age_s`` since each report."""
        now, out = time.monotonic(), {}
        for (model, _), row in sorted(self._stats.items()):
            if now - row["_at"] <= REPLICA_STALE_S:
                out.setdefault(model, []).append(
                    {**{k: v for k, v in row.items() if k != "_at"},
                     "age_s": round(now - row["_at"], 3)})
        return out

    def report_adapters(self, model: str, replica: str, adapter_ids: list[str]) -> None:
        now = time.monotonic()
        self._drop(model, replica)
        self._replicas[(model, replica)] = (now, [version_label(a) for a in adapter_ids])
        for version in self._replicas[(model, replica)][1]:
            self.adapters.labels(model, version, replica).set(1)
        for key, (seen, _) in list(self._replicas.items()):
            if now - seen > REPLICA_STALE_S:
                self._drop(*key)
                del self._replicas[key]

    def _drop(self, model: str, replica: str) -> None:
        for version in self._replicas.get((model, replica), (0, []))[1]:
            try:
                self.adapters.remove(model, version, replica)
            except KeyError:
                pass

    def render(self) -> str:
        return generate_latest(self.registry).decode() + self.engine.render()


def version_label(adapter_id: str) -> str:
    match = _ADAPTER_ID.match(adapter_id)
    return match["label"] if match else adapter_id
