"""Prometheus metrics of /v1 serving, labelled by base model and concrete version.

They live in the Router (one replica: every /v1 request passes through it) in their own
``CollectorRegistry``; the ingress's ``/metrics`` appends ``render()`` to its own process metrics,
so one scrape of ``/metrics`` shows them whichever ingress replica answers. Adapters loaded are
engine-side: each ModelDeployment replica reports its loaded adapters to the Router
(``report_adapters``), labelled by replica; a replica not heard from for ``REPLICA_STALE_S``
(scaled down, dead) drops out.

``model`` is the served base model id; ``version`` is what answered (the base id or ``name@N``).
Requests whose name does not resolve count under ``model="(unresolved)"`` so client-chosen strings
never become label values.
"""

from __future__ import annotations

import re
import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

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
        return generate_latest(self.registry).decode()


def version_label(adapter_id: str) -> str:
    match = _ADAPTER_ID.match(adapter_id)
    return match["label"] if match else adapter_id
