"""What ``studio serve ls``, ``GET /api/deployments`` and the UI report for each served base model:
its stored lifecycle state (``DeploymentStatus``, the row) joined with the live facts — Serve's
replica states and the Router's figures per replica.

Reported states (``Reported``)::

    deploying   submitted, replicas starting                      (stored DEPLOYING)
    restoring   was live before a restart; coming back from its   (stored RESTORING)
                stored recipe
    ready       at least one healthy (RUNNING) replica            (stored READY, or a serve
                                                                   config model)
    unhealthy   should serve, but 0 healthy replicas (a replica   (stored READY, or a serve
                whose engine died is not healthy, even while      config model)
                Serve still counts it), Serve says the
                deployment is unhealthy, its application is
                gone, or the studio is not running
    evicting    stopping; requests in flight finish               (stored EVICTING)
    evicted     not deployed; its name answers 404                (stored EVICTED)
    failed      did not start; the message says why               (stored FAILED)

Never "ready" with 0 healthy replicas. The stored state stays as it was (``stored_status``): an
unhealthy model is still the one the operator deployed, and becomes ready again by itself when
Serve restarts its replicas.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from studio.errors import NotFound
from studio.ray_connection import APP_NAME
from studio.serving.config import deployment_name
from studio.serving.recipe import DeploymentStatus, list_rows, row_dict
from studio.settings import StudioSettings
from studio.store.db import session_scope


class Reported(str, enum.Enum):
    DEPLOYING = "deploying"
    RESTORING = "restoring"
    READY = "ready"
    UNHEALTHY = "unhealthy"
    EVICTING = "evicting"
    EVICTED = "evicted"
    FAILED = "failed"


_STORED = {DeploymentStatus.DEPLOYING: Reported.DEPLOYING,
           DeploymentStatus.RESTORING: Reported.RESTORING,
           DeploymentStatus.EVICTING: Reported.EVICTING,
           DeploymentStatus.EVICTED: Reported.EVICTED,
           DeploymentStatus.FAILED: Reported.FAILED}
_GONE_REPLICA_STATES = ("STOPPING", "STOPPED")


@dataclass(frozen=True)
class ServeFacts:
    """One Serve deployment as Serve's controller sees it."""

    healthy: int  # replicas RUNNING
    replicas: int  # replicas starting, running, updating or recovering
    status: str  # the deployment's status: HEALTHY, UPDATING, UNHEALTHY, DEPLOY_FAILED, ...
    message: str


def serve_facts(applications: Mapping[str, Any], app: str, deployment: str) -> ServeFacts | None:
    """The facts of ``deployment`` in ``app`` from ``serve.status().applications``; None when
    Serve runs no such deployment."""
    overview = applications.get(app)
    dep = overview.deployments.get(deployment) if overview is not None else None
    if dep is None:
        return None
    states = {getattr(k, "value", str(k)): int(v) for k, v in dep.replica_states.items()}
    return ServeFacts(
        healthy=states.get("RUNNING", 0),
        replicas=sum(v for k, v in states.items() if k not in _GONE_REPLICA_STATES),
        status=str(getattr(dep.status, "value", dep.status)),
        message=dep.message or overview.message or "")


def report(stored: DeploymentStatus | None, facts: ServeFacts | None, serve_known: bool,
           reported_replicas: int = 0, message: str | None = None,
           dead: dict[str, str] | None = None,
           down: str | None = None) -> tuple[Reported, str | None]:
    """The reported state and why. ``stored`` None: a serve config model (no row).
    ``serve_known``: Serve was asked (then ``facts`` None means the deployment is not running);
    otherwise ``reported_replicas`` (replicas whose figures reached the Router) stands in.
    ``dead``: running replicas whose engine died (replica → why), which Serve counts healthy
    until their health checks fail; ``down``: why no replica can answer (every engine heard from
    died, none came back yet), from the Router (``Router.load``)."""
    if stored is not None and stored is not DeploymentStatus.READY:
        return _STORED[stored], message
    dead = dead or {}
    if down is not None or (facts is not None and dead and facts.healthy <= len(dead)):
        why = down or next(iter(dead.values()))
        total = facts.replicas if facts is not None else len(dead)
        return Reported.UNHEALTHY, (f"0 of {total} replicas healthy: the engine died ({why}); "
                                    "Serve replaces the replica and the model answers again by "
                                    "itself (503 + Retry-After meanwhile)")
    if serve_known:
        if facts is None:
            return Reported.UNHEALTHY, ("its Serve application is not running; `studio up` "
                                        "restores it")
        detail = f" ({facts.message})" if facts.message else ""
        if facts.healthy == 0:
            return Reported.UNHEALTHY, (f"0 of {facts.replicas} replicas healthy, Serve says "
                                        f"{facts.status.lower()}{detail}")
        if facts.status in ("UNHEALTHY", "DEPLOY_FAILED"):
            return Reported.UNHEALTHY, (f"{facts.healthy} of {facts.replicas} replicas healthy, "
                                        f"Serve says {facts.status.lower()}{detail}")
        return Reported.READY, message
    if reported_replicas > 0:
        return Reported.READY, message
    return Reported.UNHEALTHY, ("no healthy replica seen: the studio is not running or cannot be "
                                "reached (`studio up` restores its deployments)")


def describe(rows: list[dict[str, Any]], load: dict[str, dict[str, Any]],
             applications: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
    """Runtime rows and the serve config's models, each with its reported ``status`` (the row's
    own in ``stored_status``), ``healthy_replicas``, and its live figures from the Router
    (``Router.load``): requests in flight, idle time, per-replica memory, KV cache, running and
    waiting requests, adapters loaded, tokens/s, and their totals. ``applications``:
    ``serve.status().applications`` (None: Serve could not be asked)."""
    out = []
    runtime = {r["name"] for r in rows}
    static = [{"name": n, "source": "config", "status": None, "app_name": APP_NAME}
              for n in load if n not in runtime]
    for entry in static + rows:
        stored = DeploymentStatus(entry["status"]) if entry["status"] else None
        info = load.get(entry["name"]) if stored in (None, DeploymentStatus.READY) else None
        replicas = (info or {}).get("replicas", [])
        facts = None
        if applications is not None:
            facts = serve_facts(applications, entry["app_name"], deployment_name(entry["name"]))
        dead = (info or {}).get("dead_replicas") or {}
        state, why = report(stored, facts, applications is not None, len(replicas),
                            entry.get("message"), dead, (info or {}).get("engine_down"))
        if facts is not None:
            healthy = max(0, facts.healthy - len(dead))
        else:  # no Serve facts: the replicas whose figures reached the Router, if any
            healthy = len(replicas) - len(dead) if applications is None else 0
        out.append({**entry, "status": state.value, "stored_status": entry["status"],
                    "message": why, "healthy_replicas": healthy,
                    "in_flight": (info or {}).get("in_flight", 0),
                    "idle_s": (info or {}).get("idle_s"), "replicas": replicas,
                    "totals": _totals(replicas)})
    return out


def _totals(replicas: list[dict[str, Any]]) -> dict[str, Any]:
    def total(key: str):
        values = [r[key] for r in replicas if r.get(key) is not None]
        return sum(values) if values else None

    return {"replicas": len(replicas), "memory_bytes": total("memory_bytes"),
            "running_requests": total("running_requests"),
            "waiting_requests": total("waiting_requests"),
            "tokens_per_s": total("tokens_per_s"),
            "adapters_loaded": sorted({a for r in replicas for a in r.get("adapters_loaded", [])})}


def serve_applications() -> Mapping[str, Any] | None:
    """``serve.status().applications`` of the cluster this process is connected to; None when it
    is connected to none or Serve does not answer."""
    import ray

    if not ray.is_initialized():
        return None
    try:
        from ray import serve

        return serve.status().applications
    except Exception:  # noqa: BLE001 — Serve not running on this cluster: no facts
        return None


def list_deployments(settings: StudioSettings, load: dict[str, dict[str, Any]] | None = None,
                     applications: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
    """Every deployment as ``describe`` reports it; ``load`` from the Router and the Serve facts
    are fetched here when not given (without a running studio: the rows alone)."""
    if load is None:
        from studio.serving.lifecycle import router_load

        load = router_load()
    if applications is None:
        applications = serve_applications()
    with session_scope(settings.db_url) as session:
        rows = [row_dict(r) for r in list_rows(session)]
    return describe(rows, load, applications)


def get_deployment(settings: StudioSettings, name: str,
                   load: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    for entry in list_deployments(settings, load):
        if entry["name"] == name:
            return entry
    raise NotFound(f"model {name!r} is not deployed",
                   "see `studio serve ls` (GET /api/deployments) for the deployments")
