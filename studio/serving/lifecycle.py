"""Deploy, list and evict base models at runtime, on the Ray cluster this process is connected to
(the CLI after ``stack.connect``; the API from inside its Serve replica).

Each runtime model is a Serve application of its own (``model-<name>``, no HTTP route) holding one
``ModelDeployment``; the studio application's Router finds it through its ``serving_deployments``
row. Deploying or deleting an application leaves every other application as it is, so the models
already served keep answering while one comes or goes (docs/decisions.md, "Runtime models").

* ``deploy``: checks the model path and the name, checks the cluster's free resources (evicting
  idle runtime models first when the recipe allows it), submits the application without waiting
  on Serve, then polls its status until every replica is healthy, Serve gives up, or
  ``deploy_timeout_s`` passes — a failure removes the half-started application and names why.
* ``evict``: the Router stops routing the name first (404 "not deployed"), then the application is
  deleted; Serve's graceful shutdown lets requests in flight finish.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from studio.errors import Conflict, NotFound, StudioError, Unavailable
from studio.experiments.ab import arms_served_on, same_model
from studio.serving.recipe import (
    DeploymentStatus,
    ServingRecipe,
    claim,
    get_row,
    list_rows,
    require_row,
    row_dict,
    set_status,
)
from studio.settings import StudioSettings
from studio.ray_connection import APP_NAME
from studio.store.db import session_scope
from studio.store.models import ServingDeployment

POLL_S = 1.0
# A replica whose engine cannot start is retried this often before Serve marks the app failed.
CONSTRUCTOR_RETRIES = 2
# Requests in flight when a model is evicted get this long to finish (Serve's blocking delete
# itself gives up after 60 s).
GRACEFUL_SHUTDOWN_S = 30.0
# An application still being deleted (Serve's blocking delete gave up) is waited for this long
# more before a new one of the same name is submitted; then the start fails, saying so.
OLD_APP_GONE_S = 60.0
# An application that is not there (NOT_STARTED) this long while a start waits for it was deleted
# by another caller (an evict): the start fails instead of waiting out deploy_timeout_s.
APP_GONE_S = 10.0
Progress = Callable[[str], None]


def router_handle():
    import ray
    from ray import serve

    if not ray.is_initialized():  # Serve would start a new local Ray here
        raise Unavailable("this process is not connected to the studio's Ray cluster",
                          "run `studio up` (or set RAY_ADDRESS) first")
    try:
        return serve.get_deployment_handle("Router", app_name=APP_NAME)
    except Exception as e:  # noqa: BLE001 — Serve says "not found" in several ways
        raise Unavailable(f"the studio application is not running on this Ray cluster ({e})",
                          "run `studio up` first") from None


def _router_call(method: str, *args, timeout_s: float = 30.0):
    return getattr(router_handle(), method).remote(*args).result(timeout_s=timeout_s)


def _served_names() -> list[str]:
    return _router_call("bases")


def missing_resources(need: dict[str, float]) -> dict[str, tuple[float, float]]:
    """Resource → (needed, available) for what the cluster cannot give now."""
    import ray

    free = ray.available_resources()
    return {k: (v, free.get(k, 0.0)) for k, v in need.items() if v > free.get(k, 0.0) + 1e-6}


def _fmt(key: str, value: float) -> str:
    return f"{value / 2**30:.1f} GiB" if key == "memory" else f"{value:g}"


def describe_missing(missing: dict[str, tuple[float, float]]) -> str:
    return ", ".join(f"{k}: needs {_fmt(k, need)}, {_fmt(k, free)} free"
                     for k, (need, free) in missing.items())


def beyond_every_node(replica: dict[str, float],
                      nodes: list[dict[str, float]]) -> dict[str, tuple[float, float]]:
    """Resource → (one replica's need, the most any node has in all) where no node (``nodes``:
    each live node's total resources) could hold one replica even with nothing else on it."""
    return {k: (v, max((n.get(k, 0.0) for n in nodes), default=0.0))
            for k, v in replica.items() if all(v > n.get(k, 0.0) + 1e-6 for n in nodes)}


def _memory_parts(recipe: ServingRecipe) -> str:
    """What a CPU replica's memory need is made of, when its KV cache and weights set it (rather
    than a larger explicit memory_gib)."""
    kv, need = recipe.kv_cache_gib(), recipe.memory_per_replica_gib()
    if not kv or (recipe.deployment.memory_gib or 0.0) >= need:
        return ""
    return (f" per replica: its KV cache (engine.kv_cache_space_gib: {kv:g} GiB, host memory on "
            f"CPU) + {need - kv:.1f} GiB of weights")


def refuse_what_no_node_holds(recipe: ServingRecipe, nodes: list[dict[str, float]],
                              free: dict[str, float]) -> None:
    """A replica bigger than any node (``nodes``: their total resources; ``free``: the cluster's
    available ones) is bad input for this cluster, not a wait: refused before anything is
    started or evicted."""
    too_big = beyond_every_node(recipe.replica_resources(), nodes)
    if not too_big:
        return
    parts = []
    for key, (need, most) in too_big.items():
        extra = _memory_parts(recipe) if key == "memory" else ""
        parts.append(f"{key}: needs {_fmt(key, need)}{extra}; the largest node has "
                     f"{_fmt(key, most)} in all, {_fmt(key, free.get(key, 0.0))} free now")
    fixes = []
    if "memory" in too_big and _memory_parts(recipe):
        fixes.append("lower engine.kv_cache_space_gib (1-4 GiB serves a small model on CPU)")
    fixes.append("lower the recipe's per-replica num_cpus/num_gpus/memory_gib/resources, or add "
                 "a node that large")
    raise StudioError(f"no node of this cluster can hold one replica of {recipe.name!r}, even "
                      f"with nothing else on it — {'; '.join(parts)}; nothing was started or "
                      "evicted", "; ".join(fixes))


def deploy(settings: StudioSettings, recipe: ServingRecipe, created_by: str | None = None,
           progress: Progress | None = None, owner_key_id: int | None = None) -> dict[str, Any]:
    """Deploy ``recipe`` as a new Serve application and wait until it serves; the row as a dict.
    The model path is expected resolved already (``resolve_model_path``)."""
    say = progress or (lambda _: None)
    served = _served_names()
    with session_scope(settings.db_url) as session:
        row = get_row(session, recipe.name)
        live = row is not None and DeploymentStatus(row.status).is_live()
        if recipe.name in served and not live:
            raise Conflict(f"model {recipe.name!r} is served from the serve config's models: "
                           "section", "choose another name, or remove it from the serve config "
                           "and run `studio up` again")
        claim(session, recipe, created_by, owner_key_id)
    return start(settings, recipe, DeploymentStatus.DEPLOYING, say)


def sync_router() -> None:
    _router_call("sync_deployments")


def start(settings: StudioSettings, recipe: ServingRecipe, status: DeploymentStatus,
          say: Progress, sync: Callable[[], None] = sync_router) -> dict[str, Any]:
    """Start the application of a row in ``status`` (DEPLOYING, or RESTORING after a restart) and
    wait until it serves: the row READY, as a dict. A failure removes the half-started
    application, marks the row FAILED with why, and raises. ``sync`` tells the Router (the Router
    itself hands in its own when it restores)."""
    from ray import serve
    from ray.serve.schema import ApplicationStatus

    try:
        app = serve.status().applications.get(recipe.app_name)
        if app is not None and app.status == ApplicationStatus.DELETING:
            # Its old application (a restart's, an evict's) is still shutting down: waiting for
            # it would wait for an application nobody submits. Submit after it is gone.
            wait_gone(recipe.app_name, OLD_APP_GONE_S, say)
            app = None
        if status is DeploymentStatus.DEPLOYING or app is None:
            _make_room(settings, recipe, say)
            _submit(recipe, say)
        # else: a restore that an earlier Router replica submitted already: wait for it
        _wait_running(settings, recipe, say, status)
    except BaseException as e:
        abandon(settings, recipe, e, status, sync)
        raise
    with session_scope(settings.db_url) as session:
        row = require_row(session, recipe.name)
        if row.status != DeploymentStatus.READY.value:  # READY: another caller got there first
            set_status(row, DeploymentStatus.READY)
        session.flush()
        result = row_dict(row)
    sync()
    return result


def wait_gone(app_name: str, timeout_s: float, say: Progress) -> None:
    """Wait until Serve application ``app_name`` no longer exists; Unavailable after
    ``timeout_s``."""
    from ray import serve

    say(f"waiting for the old Serve application {app_name} to shut down")
    deadline = time.monotonic() + timeout_s
    while (app := serve.status().applications.get(app_name)) is not None:
        if time.monotonic() > deadline:
            raise Unavailable(f"the old Serve application {app_name} was still "
                              f"{app.status.value.lower()} {timeout_s:g} s after it was deleted",
                              "see its replicas' logs in the Ray dashboard "
                              "(/tmp/ray/session_latest/logs/serve/), then deploy it again")
        time.sleep(0.5)


def wait_for_resources(need: dict[str, float], timeout_s: float) -> None:
    """Up to ``timeout_s`` for the cluster to have ``need`` free (Ray frees a deleted replica's
    resources shortly after it exits); returns either way (``_make_room`` says what is short)."""
    deadline = time.monotonic() + timeout_s
    while missing_resources(need) and time.monotonic() < deadline:
        time.sleep(0.5)


def _submit(recipe: ServingRecipe, say: Progress) -> None:
    from ray import serve

    from studio.serving.config import deployment_name, serve_builder

    app = serve_builder("model_deployment")(
        recipe.deployment, name=deployment_name(recipe.name), report_to=APP_NAME,
        max_constructor_retry_count=CONSTRUCTOR_RETRIES,
        graceful_shutdown_timeout_s=GRACEFUL_SHUTDOWN_S)
    say(f"submitting Serve application {recipe.app_name}")
    serve.run_many([serve.RunTarget(target=app, name=recipe.app_name, route_prefix=None)],
                   wait_for_ingress_deployment_creation=False,
                   wait_for_applications_running=False)


def _make_room(settings: StudioSettings, recipe: ServingRecipe, say: Progress) -> None:
    import ray

    refuse_what_no_node_holds(recipe, [n["Resources"] for n in ray.nodes() if n.get("Alive")],
                              ray.available_resources())
    need = recipe.resources_needed()
    missing = missing_resources(need)
    evicted: list[str] = []
    while missing and recipe.evict_idle:
        victim = _idle_victim(settings, recipe)
        if victim is None:
            break
        say(f"evicting idle model {victim} to make room")
        evict(settings, victim, reason=f"evicted while idle to make room for {recipe.name!r}")
        evicted.append(victim)
        deadline = time.monotonic() + 15  # Ray frees an actor's resources shortly after it exits
        while (missing := missing_resources(need)) and time.monotonic() < deadline:
            time.sleep(0.5)
    if missing:
        tried = f" (evicted idle {', '.join(evicted)} first)" if evicted else ""
        hint = "" if recipe.evict_idle else ", set evict_idle: true to evict an idle model"
        memory = _memory_parts(recipe) if "memory" in missing else ""
        kv = ", engine.kv_cache_space_gib" if memory else ""
        raise Unavailable(f"the cluster lacks the resources to deploy {recipe.name!r} "
                          f"({recipe.replicas()} replica(s)): {describe_missing(missing)}"
                          f"{memory and f' (memory{memory})'}{tried}",
                          f"evict a model (`studio serve evict NAME`), lower the recipe's "
                          f"num_replicas/num_cpus/num_gpus/memory_gib{kv}{hint}, or add nodes")


def _idle_victim(settings: StudioSettings, recipe: ServingRecipe) -> str | None:
    """The runtime model idle the longest (no request in flight, none for ``idle_s``)."""
    load = _router_call("load")
    with session_scope(settings.db_url) as session:
        ready = [r.name for r in list_rows(session)
                 if r.status == DeploymentStatus.READY.value and r.name != recipe.name
                 and not _arms_of(session, r)]  # an A/B arm is never idle to evict
    idle = []
    for name in ready:
        info = load.get(name) or {}
        idle_s = info.get("idle_s")
        if info.get("in_flight", 0) == 0 and (idle_s is None or idle_s >= recipe.idle_s):
            idle.append((float("inf") if idle_s is None else idle_s, name))
    return max(idle)[1] if idle else None


def _wait_running(settings: StudioSettings, recipe: ServingRecipe, say: Progress,
                  row_status: DeploymentStatus = DeploymentStatus.DEPLOYING) -> None:
    from ray import serve
    from ray.serve.schema import ApplicationStatus

    deadline = time.monotonic() + recipe.deploy_timeout_s
    said = None
    absent_since = None
    while True:
        app = serve.status().applications.get(recipe.app_name)
        status = app.status if app else ApplicationStatus.NOT_STARTED
        if status == ApplicationStatus.RUNNING:
            return
        detail = _status_detail(app)
        if status in (ApplicationStatus.DEPLOY_FAILED, ApplicationStatus.UNHEALTHY):
            raise Unavailable(f"model {recipe.name!r} failed to start: {detail or status.value}",
                              "fix the recipe (see the replica logs in the Ray dashboard) and "
                              "deploy again")
        # Submitted (by this caller, or an earlier Router replica) yet not there: deleted since.
        # Nobody will submit it again: waiting out deploy_timeout_s would only hang.
        absent_since = (absent_since or time.monotonic()) if app is None else None
        if absent_since is not None and time.monotonic() - absent_since > APP_GONE_S:
            raise Unavailable(f"model {recipe.name!r}: its Serve application {recipe.app_name} "
                              "was deleted while it started", "deploy it again")
        with session_scope(settings.db_url) as session:
            row = get_row(session, recipe.name)
            if row is not None and row.status == DeploymentStatus.READY.value:
                return  # another caller saw it serve and marked it READY
            if row is None or row.status != row_status.value:
                raise Conflict(f"model {recipe.name!r} was evicted while it was {row_status.value}")
        if time.monotonic() > deadline:
            raise Unavailable(f"model {recipe.name!r} did not become ready within "
                              f"{recipe.deploy_timeout_s:g} s: {detail or status.value}",
                              "free resources, or raise deploy_timeout_s if the model loads "
                              "slowly")
        if status.value != said:
            say(f"{recipe.app_name}: {status.value.lower()}")
            said = status.value
        time.sleep(POLL_S)


def _status_detail(app) -> str:
    if app is None:
        return ""
    parts = [app.message] if app.message else []
    parts += [d.message for d in app.deployments.values() if d.message]
    return "; ".join(parts)[:2000]


def abandon(settings: StudioSettings, recipe: ServingRecipe, error: BaseException,
             status: DeploymentStatus, sync: Callable[[], None]) -> None:
    """After a failed deploy: remove the half-started application, record why."""
    from ray import serve

    try:
        serve.delete(recipe.app_name, _blocking=True)
    except Exception:  # noqa: BLE001 — nothing was started
        pass
    problem = getattr(error, "problem", None) or str(error) or type(error).__name__
    with session_scope(settings.db_url) as session:
        row = get_row(session, recipe.name)
        if row is not None and row.status == status.value:
            set_status(row, DeploymentStatus.FAILED, problem[:4000])
    try:
        sync()  # the name now answers 404 "not deployed (why)"
    except Exception:  # noqa: BLE001 — the Router reads it within a second anyway
        pass


def _arms_of(session, row: ServingDeployment) -> list[tuple[str, str]]:
    """The A/B arms that would fail if ``row`` went: those naming it, and the registry versions on
    its model unless another served base loads the same model (the Router sends them there)."""
    model = row.recipe["deployment"]["engine"]["model"]
    arms = arms_served_on(session, row.name, model)
    if arms and _model_served_by_another(session, row.name, model):
        arms = [(alias, ref) for alias, ref in arms if ref == row.name]
    return arms


def _model_served_by_another(session, name: str, model: str) -> bool:
    """Another runtime deployment that holds its name, or (asked of the Router when this process is
    on the cluster) a serve-config model, loads ``model`` too."""
    import ray

    want = same_model(model)
    for other in list_rows(session):
        holds_name = DeploymentStatus(other.status) in (DeploymentStatus.READY, DeploymentStatus.DEPLOYING)
        if other.name != name and holds_name and same_model(other.recipe["deployment"]["engine"]["model"]) == want:
            return True
    if not ray.is_initialized():
        return False  # the serve config's models are the Router's to tell: evict() asks again on the cluster
    try:
        models = _router_call("base_models", timeout_s=10)
    except Exception:  # noqa: BLE001 — refusing is the safe answer when the Router cannot say
        return False
    return any(base != name and same_model(m) == want for base, m in models.items())


def _refuse_while_serving_arms(session, row: ServingDeployment) -> None:
    arms = _arms_of(session, row)
    if not arms:
        return
    aliases = list(dict.fromkeys(a for a, _ in arms))
    which = ", ".join(f"{a!r} (arm {m!r})" for a, m in arms)
    stops = " and ".join(f"`studio experiments stop {a}`" for a in aliases)
    raise Conflict(f"model {row.name!r} serves an arm of active experiment {which}: evicting it "
                   "would make those requests fail; nothing was evicted",
                   f"end the experiment first ({stops}, or POST /api/experiments/ALIAS/stop) or "
                   "give it other arms, then evict again")


def check_evictable(settings: StudioSettings, name: str) -> None:
    """Refuse (409) at once when ``name`` is a runtime deployment serving an A/B arm; the CLI asks
    before it joins the cluster (``evict`` checks again)."""
    with session_scope(settings.db_url) as session:
        row = get_row(session, name)
        if row is not None and DeploymentStatus(row.status).is_live():
            _refuse_while_serving_arms(session, row)


def evict(settings: StudioSettings, name: str, reason: str | None = None) -> dict[str, Any]:
    """Stop serving ``name`` and delete its application; requests in flight finish first."""
    from ray import serve

    with session_scope(settings.db_url) as session:
        row = get_row(session, name)
        if row is None:
            if name in _served_names():
                raise Conflict(f"model {name!r} is served from the serve config's models: section",
                               "remove it there and run `studio up` again")
            raise NotFound(f"model {name!r} is not deployed",
                           "see `studio serve ls` (GET /api/deployments) for the deployments")
        status = DeploymentStatus(row.status)
        if status in (DeploymentStatus.EVICTED, DeploymentStatus.EVICTING):
            raise NotFound(f"model {name!r} is not deployed (status {status.value})",
                           "see `studio serve ls` for the deployments")
        app = row.app_name
        if status == DeploymentStatus.FAILED:
            set_status(row, DeploymentStatus.EVICTED, row.message)
            session.flush()
            return row_dict(row)
        _refuse_while_serving_arms(session, row)
        set_status(row, DeploymentStatus.EVICTING, reason)
    _router_call("sync_deployments")  # new requests for the name now answer 404 "not deployed"
    try:
        serve.delete(app, _blocking=True)
    except TimeoutError:  # still shutting down: Serve finishes it, the name is already gone
        pass
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    with session_scope(settings.db_url) as session:
        row = require_row(session, name)
        set_status(row, DeploymentStatus.EVICTED, reason or f"evicted at {when}")
        session.flush()
        result = row_dict(row)
    _router_call("sync_deployments")
    return result


def router_load() -> dict[str, dict[str, Any]]:
    """The Router's live figures per served base (``Router.load``); none when the studio is down
    or unreachable."""
    try:
        return _router_call("load", timeout_s=10)
    except Exception:  # noqa: BLE001 — the rows alone are still worth listing
        return {}
