"""The metric names configs/monitoring/ uses: read from the Grafana dashboard's PromQL (panels and
template variables), for tests/test_monitoring_configs.py (against the names the code registers)
and the live check in tests/deployments/test_experiments_serving.py (against /metrics)."""

from __future__ import annotations

import json
import re
from pathlib import Path

MONITORING = Path(__file__).resolve().parent.parent / "configs" / "monitoring"
DASHBOARD = MONITORING / "grafana-dashboard.json"
PROMETHEUS = MONITORING / "prometheus.yml"

# Grouping clauses hold label names, not metrics; strings and selectors hold label values.
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_KEYWORDS = {"bool", "offset", "and", "or", "unless", "inf", "nan"}


def promql_metric_names(expr: str) -> set[str]:
    """The metric names an expression selects (functions and aggregations are the identifiers
    followed by '(')."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    expr = re.sub(r"\{[^}]*\}", " ", expr)
    expr = re.sub(r"\[[^\]]*\]", " ", expr)
    expr = _GROUPING.sub(" ", expr)
    names = set()
    for match in re.finditer(r"(?<![\w$.])([a-zA-Z_:][a-zA-Z0-9_:]*)(\s*\()?", expr):
        word, call = match.group(1), match.group(2)
        if not call and word.lower() not in _KEYWORDS:
            names.add(word)
    return names


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def dashboard_exprs(dash: dict | None = None) -> list[str]:
    dash = dash or dashboard()
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    for var in dash["templating"]["list"]:
        query = var.get("query")
        if var["type"] == "query":
            text = query["query"] if isinstance(query, dict) else query
            # label_values(metric, label): only the first argument is a metric.
            match = re.fullmatch(r"\s*label_values\(\s*(.+?)\s*,\s*\w+\s*\)\s*", text)
            exprs.append(match.group(1) if match else text)
    return exprs


def dashboard_metric_names(dash: dict | None = None) -> set[str]:
    return set().union(*(promql_metric_names(e) for e in dashboard_exprs(dash)))


def exposed_names(families) -> set[str]:
    """Sample names a Prometheus scrape shows for ``prometheus_client`` metric families
    (``registry.collect()``), children or not: counters ``_total``, histograms ``_bucket``,
    ``_sum``, ``_count``."""
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count")}
    return {f.name + s for f in families for s in suffixes.get(f.type, ("",))}
