"""The engines' own series on /metrics (deployments/engine_metrics.py): each replica's vLLM-named
series, labelled with its deployment, version and replica, merged by the Router's store into one
valid exposition (each family once), with stale and evicted replicas dropped. vLLM-shaped metrics
in registries of their own stand in for two replica processes' default registries."""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.parser import text_string_to_metric_families

from deployments.engine_metrics import EngineMetricsStore, engine_metric_blocks
from deployments.serving_metrics import ServingMetrics


def _replica_registry(running: int, ttft_s: float) -> CollectorRegistry:
    r = CollectorRegistry()
    labels = ["model_name", "engine"]
    Gauge("vllm:num_requests_running", "running", labels, registry=r).labels("tiny", "0").set(running)
    Counter("vllm:generation_tokens", "tokens", labels, registry=r).labels("tiny", "0").inc(7)
    Histogram("vllm:time_to_first_token_seconds", "ttft", labels, buckets=(0.1, 1.0),
              registry=r).labels("tiny", "0").observe(ttft_s)
    Gauge("studio_not_engine", "left out", registry=r).set(1)
    return r


def _labels(replica: str) -> dict[str, str]:
    return {"deployment": "Model-tiny-0123abcd", "version": "tiny", "replica": replica}


def test_two_replicas_merge_into_one_valid_exposition():
    store = EngineMetricsStore(stale_s=60)
    for replica, running in (("r1", 2), ("r2", 5)):
        blocks = engine_metric_blocks(_labels(replica), _replica_registry(running, 0.5))
        assert {"vllm:num_requests_running", "vllm:generation_tokens_total",
                "vllm:time_to_first_token_seconds"} <= set(blocks)  # and their _created
        store.report("tiny", replica, blocks)
    text = store.render()
    assert "studio_not_engine" not in text
    # The parser refuses a family declared twice; one header per family, both replicas' samples.
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert text.count("# TYPE vllm:num_requests_running gauge") == 1
    running = {s.labels["replica"]: s.value for s in families["vllm:num_requests_running"].samples}
    assert running == {"r1": 2.0, "r2": 5.0}
    for family in families.values():
        for sample in family.samples:
            assert sample.labels["deployment"] == "Model-tiny-0123abcd"
            assert sample.labels["version"] == "tiny" == sample.labels["model_name"]
    counts = [s for s in families["vllm:time_to_first_token_seconds"].samples
              if s.name.endswith("_count")]
    assert [s.value for s in counts] == [1.0, 1.0]
    tokens = [s.value for s in families["vllm:generation_tokens"].samples
              if s.name == "vllm:generation_tokens_total"]
    assert tokens == [7.0, 7.0]


def test_stale_and_evicted_replicas_drop_out():
    store = EngineMetricsStore(stale_s=0.2)
    store.report("tiny", "r1", engine_metric_blocks(_labels("r1"), _replica_registry(1, 0.5)))
    time.sleep(0.3)
    store.report("tiny", "r2", engine_metric_blocks(_labels("r2"), _replica_registry(1, 0.5)))
    assert 'replica="r1"' not in store.render() and 'replica="r2"' in store.render()

    metrics = ServingMetrics()
    metrics.engine.report("tiny", "r3", engine_metric_blocks(_labels("r3"),
                                                             _replica_registry(1, 0.5)))
    assert 'vllm:num_requests_running{' in metrics.render()
    metrics.drop_model("tiny")
    assert "vllm:" not in metrics.render()
