"""Studio API keys: created once (the secret is shown once), stored as SHA-256, checked per request.

Keys are 256-bit random tokens, so a plain SHA-256 is the right hash: there is nothing to brute-force
that a slow password hash would protect.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import timedelta
from enum import StrEnum

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from studio.errors import Conflict, NotFound, StudioError
from studio.store.models import ApiKey, utcnow

KEY_PREFIX = "sk-studio-"


class Role(StrEnum):
    admin = "admin"  # everything, including keys
    user = "user"  # use models, data, jobs
    service = "service"  # internal callers (jobs, gateway clients)


@dataclass
class KeyInfo:
    id: int
    name: str
    role: str
    prefix: str
    created_at: str
    last_used_at: str | None
    revoked: bool


def hash_key(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _info(k: ApiKey) -> KeyInfo:
    return KeyInfo(
        k.id, k.name, k.role, k.prefix, k.created_at.isoformat(),
        k.last_used_at.isoformat() if k.last_used_at else None, k.revoked_at is not None,
    )


def create_key(session: Session, name: str, role: Role | str, secret: str | None = None) -> tuple[str, KeyInfo]:
    """Return (secret, info). Pass ``secret`` to register a key chosen elsewhere (STUDIO_ADMIN_KEY)."""
    try:
        role = Role(role)
    except ValueError:
        raise StudioError(f"unknown role {role!r}", f"use one of {', '.join(r.value for r in Role)}") from None
    if not name or len(name) > 128:
        raise StudioError("a key needs a name of 1-128 characters", "pass --name")
    secret = secret or KEY_PREFIX + secrets.token_urlsafe(32)
    if len(secret) < 16:
        raise StudioError("that key is too short to be safe", "use at least 16 random characters")
    key = ApiKey(name=name, role=role.value, prefix=secret[: len(KEY_PREFIX) + 4], key_hash=hash_key(secret))
    session.add(key)
    try:
        session.flush()
    except IntegrityError:
        session.rollback()
        raise Conflict(f"a key named {name!r} (or with that secret) already exists", "choose another name") from None
    return secret, _info(key)


TOUCH_EVERY = timedelta(minutes=1)


def verify_key(session: Session, secret: str) -> ApiKey | None:
    """The live key for this secret, or None. Read-only: the API records the use afterwards,
    off the request (``last_use_is_stale``, ``touch_key``)."""
    key = session.scalars(select(ApiKey).where(ApiKey.key_hash == hash_key(secret))).first()
    if key is None or key.revoked_at is not None:
        return None
    return key


def last_use_is_stale(key: ApiKey) -> bool:
    last = key.last_used_at  # aware UTC on every backend (store.models.UTCDateTime)
    return last is None or utcnow() - last > TOUCH_EVERY


def touch_key(session: Session, key_id: int) -> None:
    """Record a use of the key now (one UPDATE, no read)."""
    session.execute(update(ApiKey).where(ApiKey.id == key_id).values(last_used_at=utcnow()))


def list_keys(session: Session) -> list[KeyInfo]:
    return [_info(k) for k in session.scalars(select(ApiKey).order_by(ApiKey.id))]


def revoke_key(session: Session, name: str) -> KeyInfo:
    key = session.scalars(select(ApiKey).where(ApiKey.name == name)).first()
    if key is None:
        raise NotFound(f"no key named {name!r}", "see `studio keys ls`")
    if key.revoked_at is None:
        key.revoked_at = utcnow()
    return _info(key)


def has_admin(session: Session) -> bool:
    return session.scalars(
        select(ApiKey.id).where(ApiKey.role == Role.admin.value, ApiKey.revoked_at.is_(None)).limit(1)
    ).first() is not None
