"""Request dependencies: settings, a database session per request, the calling API key.
Each is overridable in tests through ``app.dependency_overrides``."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from studio.keys import Role, last_use_is_stale, touch_key, verify_key
from studio.settings import StudioSettings
from studio.store.db import session_scope
from studio.store.models import ApiKey

_bearer = HTTPBearer(auto_error=False)


# The dependencies that do no I/O are async: FastAPI runs a sync one in a worker thread, a hop
# per dependency per request.
async def get_settings(request: Request) -> StudioSettings:
    return request.app.state.settings


def get_session(settings: Annotated[StudioSettings, Depends(get_settings)]) -> Iterator[Session]:
    with session_scope(settings.db_url) as session:
        yield session


def _verified(db_url: str, secret: str) -> ApiKey | None:
    with session_scope(db_url) as session:  # expire_on_commit=False: the columns stay readable
        return verify_key(session, secret)


def _touch(db_url: str, key_id: int, touching: set[int]) -> None:
    try:
        with session_scope(db_url) as session:
            touch_key(session, key_id)
    except Exception as e:  # noqa: BLE001 — a missed timestamp must not surface anywhere
        logging.getLogger(__name__).warning("could not record the use of key %s: %s", key_id, e)
    finally:
        touching.discard(key_id)


# The last_used_at write happens after the check, off the request: on SQLite it waits for the write
# lock (a burst of completion-log writes holds it), and a request must not wait for a timestamp.
# One write per key at a time, tracked per app (``app.state.touching_keys``): a module-wide set
# outlived the app that added an entry, and an app stopped before its write ran (its event loop
# closed) left the key marked "being written" for every later app on the same database — a test
# process serving many apps on one PostgreSQL database then never recorded that key's use again.
_background: set[asyncio.Task] = set()


def _touching(request: Request) -> set[int]:
    state = request.app.state
    touching = getattr(state, "touching_keys", None)
    if touching is None:
        touching = state.touching_keys = set()
    return touching


async def current_key(
    request: Request,
    creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    settings: Annotated[StudioSettings, Depends(get_settings)],
) -> ApiKey:
    """The calling key, checked against the database on every request (a revoked key stops at
    once) in one worker-thread hop with a session of its own: the /v1 data path needs no other."""
    if creds is None or not creds.credentials:
        raise HTTPException(401, "missing API key: send `Authorization: Bearer <key>` "
                            "(create one with `studio keys create`)", headers={"WWW-Authenticate": "Bearer"})
    key = await run_in_threadpool(_verified, settings.db_url, creds.credentials)
    if key is None:
        raise HTTPException(401, "invalid or revoked API key", headers={"WWW-Authenticate": "Bearer"})
    touching = _touching(request)
    if last_use_is_stale(key) and key.id not in touching:
        touching.add(key.id)
        task = asyncio.create_task(run_in_threadpool(_touch, settings.db_url, key.id, touching))
        _background.add(task)
        task.add_done_callback(_background.discard)
    return key


async def require_admin(key: Annotated[ApiKey, Depends(current_key)]) -> ApiKey:
    if key.role != Role.admin.value:
        raise HTTPException(403, f"this needs an admin key; key {key.name!r} has role {key.role!r}")
    return key


def require_roles(*roles: Role):
    """A dependency that lets only keys of ``roles`` through (403 naming the key's role otherwise)."""

    async def check(key: Annotated[ApiKey, Depends(current_key)]) -> ApiKey:
        if key.role not in roles:
            raise HTTPException(403, f"this needs a key with role {' or '.join(roles)}; "
                                f"key {key.name!r} has role {key.role!r}")
        return key

    return check


SettingsDep = Annotated[StudioSettings, Depends(get_settings)]
# scope="function": commit before the response is sent, so a client that sees 201 can read the row.
SessionDep = Annotated[Session, Depends(get_session, scope="function")]
KeyDep = Annotated[ApiKey, Depends(current_key)]
AdminDep = Annotated[ApiKey, Depends(require_admin)]
# The team's catalog and everything people do by hand: not for service keys, which only call
# models (/v1, /gateway/v1). Also the role floor of every /api router (studio.api.app).
require_team = require_roles(Role.admin, Role.user)
UserOrAdminDep = Annotated[ApiKey, Depends(require_team)]
TeamDep = UserOrAdminDep
