"""Runtime deployments come back after a restart.

``studio down`` + ``studio up`` (or a Ray head killed and started again) keeps every
``serving_deployments`` row — the whole validated recipe, who deployed it, its state — but none of
their Serve applications. Two steps bring them back:

1. ``mark_restoring``: a row that was live (DEPLOYING or READY) whose application is not running
   becomes RESTORING; an EVICTING one becomes EVICTED (its application is gone, which is what
   evicting was for); EVICTED and FAILED rows stay as they are. The launcher does this when it
   starts a new Ray head (nothing runs there yet: ``fresh``); the Router does it when it starts
   (``serve run`` of a config, a cluster restarted by hand) for READY rows, and for DEPLOYING rows
   whose deployer has been gone longer than their ``deploy_timeout_s``.
2. ``restore_pending`` (the Router, in the background): each RESTORING row in turn is deployed
   again from its stored recipe and waited for, as ``studio serve deploy`` would (never evicting
   another model to make room). One that cannot come back — its model folder was deleted, the
   cluster lacks the resources, the engine fails — becomes FAILED with the reason, and the next
   one still comes back. Meanwhile ``/v1`` answers 503 with ``Retry-After`` for the name.

``restart`` (``POST /api/deployments/{name}/restart``, ``studio serve restart``) brings one READY
model back the same way, on demand: RESTORING, its application deleted, submitted again from the
stored recipe, waited for. The caller does it all itself; its row (message "restarted by …") is
not the Router's to restore while the caller can still be at work (``RESTART_BOUND_S`` past the
recipe's ``deploy_timeout_s``). Issue 26: the Router's restorer also took the row up and waited
for the same application; whichever saw it serve second failed — the restart's 409 "cannot go
from ready to ready", or the restorer deleting the application it took for abandoned.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from datetime import datetime, timezone
from typing import Any

from pydantic import ValidationError

from studio.errors import Conflict, NotFound, StudioError
from studio.serving import lifecycle
from studio.serving.recipe import (
    DeploymentStatus,
    ServingRecipe,
    get_row,
    list_rows,
    resolve_model_path,
    row_dict,
    set_status,
)
from studio.settings import StudioSettings
from studio.store.db import session_scope

S = DeploymentStatus
# A DEPLOYING row without an application is another caller's deploy in progress (it submits after
# its resource check) unless it is this much older than its recipe's deploy timeout.
STALE_MARGIN_S = 60.0
# A RESTORING row whose message starts so is a restart in progress: its caller's, not the Router's.
RESTART_NOTE = "restarted by "
# What a restart may take beyond its recipe's deploy_timeout_s: Serve's blocking delete (60 s),
# the old application's shutdown after it (lifecycle.OLD_APP_GONE_S), its resources freed (15 s).
RESOURCES_FREED_S = 15.0
RESTART_BOUND_S = 60.0 + lifecycle.OLD_APP_GONE_S + RESOURCES_FREED_S


def mark_restoring(settings: StudioSettings, running_apps: Collection[str], fresh: bool,
                   now: datetime | None = None) -> list[str]:
    """Rows to bring back → RESTORING (their names, oldest first); EVICTING rows → EVICTED.
    ``running_apps``: the Serve applications running now; ``fresh``: the cluster was just
    started, so no deploy can be in progress (DEPLOYING rows are restored too)."""
    now = now or datetime.now(timezone.utc)
    names = []
    with session_scope(settings.db_url) as session:
        for row in list_rows(session):
            status = S(row.status)
            if status is S.RESTORING and fresh and _restart_note(row.message):
                # A restart cut short by the cluster's restart: nobody works on it any more.
                row.message = "was being restarted before a restart; deploying it again from its stored recipe"
                names.append(row.name)
                continue
            if row.app_name in running_apps or not status.is_live() or status is S.RESTORING:
                continue
            if status is S.EVICTING:
                set_status(row, S.EVICTED, row.message or "evicted (its application was gone "
                           "after a restart)")
            elif status is S.READY or fresh or _stale(row.recipe, row.updated_at, now):
                set_status(row, S.RESTORING, f"was {status.value} before a restart; deploying it "
                           "again from its stored recipe")
                names.append(row.name)
    return names


def _stale(recipe: dict[str, Any], updated_at: datetime, now: datetime,
           extra_s: float = 0.0) -> bool:
    if updated_at.tzinfo is None:
        updated_at = updated_at.replace(tzinfo=timezone.utc)
    timeout_s = float((recipe or {}).get("deploy_timeout_s") or 600.0)
    return (now - updated_at).total_seconds() > timeout_s + extra_s + STALE_MARGIN_S


def _restart_note(message: str | None) -> bool:
    return (message or "").startswith(RESTART_NOTE)


def restarting(row, now: datetime | None = None) -> bool:
    """A RESTORING row that a restart's caller is bringing back (and may still be: not stale)."""
    now = now or datetime.now(timezone.utc)
    return (row.status == S.RESTORING.value and _restart_note(row.message)
            and not _stale(row.recipe, row.updated_at, now, RESTART_BOUND_S))


def pending(settings: StudioSettings) -> list[str]:
    """Names of the rows in RESTORING that are the Router's to bring back (not a restart a caller
    is at), oldest first."""
    now = datetime.now(timezone.utc)
    with session_scope(settings.db_url) as session:
        return [r.name for r in list_rows(session)
                if r.status == S.RESTORING.value and not restarting(r, now)]


def restore(settings: StudioSettings, name: str, say: Callable[[str], None],
            sync: Callable[[], None]) -> dict[str, Any] | None:
    """Deploy one RESTORING row again from its stored recipe and wait until it serves; the row
    as a dict (READY, or FAILED with why). None: the row is not RESTORING (any more)."""
    with session_scope(settings.db_url) as session:
        row = get_row(session, name)
        if row is None or row.status != S.RESTORING.value or restarting(row):
            return None
        try:
            recipe = resolve_model_path(ServingRecipe.model_validate(row.recipe))
        except (ValidationError, StudioError) as e:
            set_status(row, S.FAILED, f"cannot come back after the restart: {_why(e)}")
            session.flush()
            failed = row_dict(row)
        else:
            failed = None
    if failed is not None:
        sync()  # the name now answers 404 "not deployed (why)"
        return failed
    # Coming back must not push out another model that is coming back (or was kept running).
    recipe = recipe.model_copy(update={"evict_idle": False})
    try:
        return lifecycle.start(settings, recipe, S.RESTORING, say, sync)
    except Exception:  # noqa: BLE001 — start() stored why (FAILED), or it was evicted meanwhile
        with session_scope(settings.db_url) as session:
            row = get_row(session, name)
            return row_dict(row) if row is not None else None


def _why(error: Exception) -> str:
    if isinstance(error, StudioError):
        fix = f" (fix: {error.fix}; then deploy it again, or evict it)" if error.fix else ""
        return error.problem + fix
    first = error.errors()[0]  # a ValidationError: the stored recipe no longer validates
    where = ".".join(str(p) for p in first["loc"]) or "(recipe)"
    return f"its stored recipe is no longer valid: {where}: {first['msg']}"


def restore_pending(settings: StudioSettings, say: Callable[[str], None],
                    sync: Callable[[], None]) -> dict[str, str]:
    """Every RESTORING row in turn (oldest first); name → the state it ended in."""
    done = {}
    for name in pending(settings):
        say(f"restoring {name}")
        row = restore(settings, name, say, sync)
        if row is not None:
            done[name] = row["status"]
            say(f"{name}: {row['status']}" + (f" ({row['message']})" if row["message"] else ""))
    return done


def restart(settings: StudioSettings, name: str, by: str, owner_key_id: int | None = None,
            say: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Restart a runtime model from its stored recipe and wait until it serves again; the row as a
    dict. A READY one goes RESTORING (``/v1`` answers 503 with ``Retry-After`` meanwhile, requests
    in flight finish first), its application is deleted and submitted again; a FAILED or EVICTED
    one is deployed again as by ``studio serve deploy``. One still deploying, restoring or
    evicting is a 409: its state is about to change anyway. ``by``: who asked (a key's name).

    It ends READY, or FAILED with why (raised: the old application did not shut down, the engine
    did not start), within the recipe's ``deploy_timeout_s`` + ``RESTART_BOUND_S``."""
    from ray import serve

    say = say or (lambda _: None)
    with session_scope(settings.db_url) as session:
        row = get_row(session, name)
        if row is None:
            raise NotFound(f"no model named {name!r} was deployed at runtime",
                           "only runtime deployments restart (a serve config model restarts with "
                           "`studio up`); see GET /api/deployments")
        status = S(row.status)
        if status in (S.DEPLOYING, S.RESTORING, S.EVICTING):
            raise Conflict(f"model {name!r} is {status.value}: it cannot restart now",
                           "wait until it is ready, failed or evicted (GET /api/deployments), "
                           "then restart it")
        recipe = resolve_model_path(ServingRecipe.model_validate(row.recipe))
        app = row.app_name
        if status is S.READY:
            # RESTART_NOTE: this caller's to bring back; the Router's Restorer leaves it alone.
            set_status(row, S.RESTORING, f"{RESTART_NOTE}{by}")
    if status is not S.READY:  # FAILED or EVICTED: nothing runs, deploy it again
        return lifecycle.deploy(settings, recipe, by, say, owner_key_id)
    try:
        lifecycle.sync_router()  # the name answers 503 "coming back", no longer reaching the replica
        say(f"deleting Serve application {app} (requests in flight finish first)")
        try:
            serve.delete(app, _blocking=True)
        except TimeoutError:  # still shutting down: start() waits for it, then submits
            pass
        lifecycle.wait_for_resources(recipe.resources_needed(), RESOURCES_FREED_S)
    except BaseException as e:  # the row must not stay RESTORING with nobody at it
        lifecycle.abandon(settings, recipe, e, S.RESTORING, lifecycle.sync_router)
        raise
    return lifecycle.start(settings, recipe, S.RESTORING, say)
