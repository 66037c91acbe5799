"""configs/monitoring/: the Prometheus scrape config and the Grafana dashboard load, and every metric
the dashboard's PromQL names is one the studio exports: the studio's own series from their real
registries, vLLM's from a real ``PrometheusStatLogger`` built on the tiny model's engine config (no
engine started). tests/deployments/test_experiments_serving.py checks the same names on a live
/metrics."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest
import yaml

from tests.monitoring import (
    PROMETHEUS,
    dashboard,
    dashboard_exprs,
    dashboard_metric_names,
    exposed_names,
    promql_metric_names,
)


def test_promql_names_are_read_from_expressions():
    expr = ('histogram_quantile(0.99, sum by (le, route) (rate(studio_http_request_duration_'
            'seconds_bucket{status=~"5..", route!="a_b"}[$__rate_interval]))) / ignoring(x) '
            'time() - topk by (deployment, replica) (1, vllm:lora_requests_info) > bool 0.5')
    assert promql_metric_names(expr) == {"studio_http_request_duration_seconds_bucket",
                                         "vllm:lora_requests_info"}


def test_prometheus_config_scrapes_the_studio_with_a_key_file():
    config = yaml.safe_load(PROMETHEUS.read_text())
    assert set(config) <= {"global", "scrape_configs", "rule_files", "alerting"}, set(config)
    assert re.fullmatch(r"\d+[smh]", config["global"]["scrape_interval"])
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert len(jobs) == len(config["scrape_configs"]), "job names must be unique"
    studio = jobs["studio"]
    assert studio["metrics_path"] == "/metrics"
    assert studio["authorization"] == {"type": "Bearer", "credentials_file": "studio.key"}
    targets = [t for sc in studio["static_configs"] for t in sc["targets"]]
    assert targets == ["127.0.0.1:8000"]
    for job in jobs.values():
        assert {"static_configs", "file_sd_configs"} & set(job), job["job_name"]


def test_grafana_dashboard_loads():
    dash = dashboard()
    for field in ("title", "uid", "schemaVersion", "panels", "templating", "time"):
        assert field in dash, field
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    variables = {v["name"] for v in dash["templating"]["list"]}
    assert {"datasource", "model", "deployment"} <= variables
    for panel in dash["panels"]:
        assert {"type", "title", "gridPos"} <= set(panel), panel.get("title")
        assert set(panel["gridPos"]) == {"h", "w", "x", "y"}
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["refId"] and target["expr"].strip()
            used = set(re.findall(r"\$(\w+)", target["expr"])) - {"__rate_interval"}
            assert used <= variables, (panel["title"], used - variables)
    titles = " ".join(p["title"] for p in dash["panels"]).lower()
    for wanted in ("requests/s by route", "latency", "errors", "tokens/s", "first token",
                   "per output token", "queue", "kv-cache", "lora"):
        assert wanted in titles, wanted


@pytest.fixture(scope="module")
def vllm_names(tmp_path_factory) -> set[str]:
    from prometheus_client import REGISTRY
    from vllm.usage.usage_lib import UsageContext
    from vllm.v1.metrics.loggers import PrometheusStatLogger
    from vllm.v1.metrics.prometheus import unregister_vllm_metrics

    from deployments.engines.vllm_engine import VLLMEngine
    from studio.models.tiny import make_tiny
    from studio.serving.config import EngineConfig

    model = make_tiny(tmp_path_factory.mktemp("tiny") / "model")
    engine = VLLMEngine(EngineConfig(model=str(model), served_model_name="tiny", dtype="float32",
                                     max_model_len=256))
    # The engine's config as the replica builds it (LoRA on), and vLLM's default logger on it:
    # what AsyncLLM registers in a replica, here without an engine.
    PrometheusStatLogger(engine.engine_args().create_engine_config(UsageContext.ENGINE_CONTEXT))
    try:
        return exposed_names(f for f in REGISTRY.collect() if f.name.startswith("vllm:"))
    finally:
        unregister_vllm_metrics()


def test_every_dashboard_metric_is_exported(vllm_names):
    from deployments.serving_metrics import ServingMetrics
    from studio.api.http_metrics import LATENCY, REQUESTS

    studio = exposed_names([*ServingMetrics().registry.collect(), *REQUESTS.collect(),
                            *LATENCY.collect()])
    names = dashboard_metric_names()
    assert {n for n in names if n.startswith("vllm:")}, "the dashboard shows no engine series"
    missing = names - studio - vllm_names
    assert not missing, f"the dashboard names metrics nothing exports: {sorted(missing)}"


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool (Prometheus) not installed")
def test_promtool_accepts_the_config_and_every_dashboard_query(tmp_path):
    """Prometheus's own checker, where it is installed: the scrape config (with a key file beside
    it, as the config expects) and every dashboard expression as a recording rule (Grafana's
    variables replaced by what they expand to)."""
    (tmp_path / "prometheus.yml").write_text(PROMETHEUS.read_text())
    (tmp_path / "studio.key").write_text("sk-studio-example\n")
    run = subprocess.run(["promtool", "check", "config", str(tmp_path / "prometheus.yml")],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    exprs = [e.replace("$__rate_interval", "1m").replace("$model", ".*")
             .replace("$deployment", ".*") for e in dashboard_exprs()]
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:expr_{i}", "expr": e} for i, e in enumerate(exprs)]}]}
    (tmp_path / "rules.yml").write_text(yaml.safe_dump(rules))
    run = subprocess.run(["promtool", "check", "rules", str(tmp_path / "rules.yml")],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
