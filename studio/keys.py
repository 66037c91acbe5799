"""Studio API keys: created once (the secret is shown once), stored as SHA-256, checked per request.

Keys are 256-bit random tokens, so a plain SHA-256 is the right hash: there is nothing to brute-force
that a slow password hash would protect.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from sqlalchemy import Select, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from studio.errors import Conflict, NotFound, StudioError
from studio.store.models import ApiKey, utcnow

KEY_PREFIX = "sk-studio-"
# An admin key is the whole studio: one chosen by a person (STUDIO_ADMIN_KEY) must be long enough
# that guessing it is hopeless; generated keys have 43 random characters after the prefix.
ADMIN_KEY_MIN_CHARS = 32


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
    job_id: int | None = None  # a job key: the job it was made for
    expires_at: str | None = None


def hash_key(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _info(k: ApiKey) -> KeyInfo:
    return KeyInfo(
        k.id, k.name, k.role, k.prefix, k.created_at.isoformat(),
        k.last_used_at.isoformat() if k.last_used_at else None, k.revoked_at is not None,
        k.job_id, k.expires_at.isoformat() if k.expires_at else None,
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
    check_admin_secret(secret, role)
    key = ApiKey(name=name, role=role.value, prefix=secret[: len(KEY_PREFIX) + 4], key_hash=hash_key(secret))
    session.add(key)
    try:
        session.flush()
    except IntegrityError:
        session.rollback()
        raise Conflict(f"a key named {name!r} (or with that secret) already exists", "choose another name") from None
    return secret, _info(key)


def check_admin_secret(secret: str, role: Role | str = Role.admin) -> None:
    """Refuse an admin secret shorter than ``ADMIN_KEY_MIN_CHARS`` (``studio up`` checks
    STUDIO_ADMIN_KEY with this before it starts anything)."""
    if role == Role.admin and len(secret) < ADMIN_KEY_MIN_CHARS:
        raise StudioError(f"an admin key must be at least {ADMIN_KEY_MIN_CHARS} characters; this one has "
                          f"{len(secret)}",
                          "unset STUDIO_ADMIN_KEY to have one generated, or set it to "
                          "`python -c 'import secrets; print(secrets.token_urlsafe(32))'`")


TOUCH_EVERY = timedelta(minutes=1)


def _live(key: ApiKey | None, now: datetime) -> bool:
    return key is not None and key.revoked_at is None and (key.expires_at is None or key.expires_at > now)


def verify_key(session: Session, secret: str) -> ApiKey | None:
    """The live key for this secret, or None: revoked and expired keys are refused, and so is a
    job key whose submitter's key is no longer live (revoking a key stops its running jobs' calls).
    Read-only: the API records the use afterwards, off the request (``last_use_is_stale``,
    ``touch_key``)."""
    key = session.scalars(select(ApiKey).where(ApiKey.key_hash == hash_key(secret))).first()
    now = utcnow()
    if not _live(key, now):
        return None
    if key.parent_id is not None and not _live(session.get(ApiKey, key.parent_id), now):
        return None
    return key


def last_use_is_stale(key: ApiKey) -> bool:
    last = key.last_used_at  # aware UTC on every backend (store.models.UTCDateTime)
    return last is None or utcnow() - last > TOUCH_EVERY


def touch_key(session: Session, key_id: int) -> None:
    """Record a use of the key now (one UPDATE, no read)."""
    session.execute(update(ApiKey).where(ApiKey.id == key_id).values(last_used_at=utcnow()))


def list_keys(session: Session, job_keys: bool = False) -> list[KeyInfo]:
    """Keys people made; with ``job_keys`` also the scheduler's per-job keys."""
    stmt = select(ApiKey).order_by(ApiKey.id)
    if not job_keys:
        stmt = stmt.where(ApiKey.job_id.is_(None))
    return [_info(k) for k in session.scalars(stmt)]


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


# -- job keys: a job spends on its submitter, never on the admin key ------------------------------

def create_job_key(session: Session, submitter: ApiKey, job_id: int, ttl: timedelta) -> tuple[str, KeyInfo]:
    """A key for one run of job ``job_id``, derived from ``submitter``'s: its role and gateway
    limits, ``parent_id`` = the submitter's key (a job key's own submitter: its parent), expiring
    after ``ttl``. The gateway counts its spend against the submitter's budget
    (``studio.gateway.usage.key_spent_usd``); the scheduler revokes it when the run ends."""
    parent = session.get(ApiKey, submitter.parent_id) if submitter.parent_id is not None else submitter
    secret = KEY_PREFIX + secrets.token_urlsafe(32)
    key = ApiKey(name=f"job-{job_id}-{secrets.token_hex(4)}", role=parent.role,
                 prefix=secret[: len(KEY_PREFIX) + 4], key_hash=hash_key(secret),
                 rpm_limit=parent.rpm_limit, tpm_limit=parent.tpm_limit, budget_usd=parent.budget_usd,
                 parent_id=parent.id, job_id=job_id, expires_at=utcnow() + ttl)
    session.add(key)
    session.flush()
    return secret, _info(key)


def revoke_job_keys(session: Session, unless_job_in: Select) -> int:
    """Revoke every live job key whose job is not in ``unless_job_in`` (a select of job ids: the
    jobs on Ray). Returns how many. Reads first: the scheduler calls this every pass, and on
    SQLite even an UPDATE that matches nothing takes the write lock."""
    ids = list(session.scalars(select(ApiKey.id).where(ApiKey.job_id.is_not(None), ApiKey.revoked_at.is_(None),
                                                       ApiKey.job_id.not_in(unless_job_in))))
    if ids:
        session.execute(update(ApiKey).where(ApiKey.id.in_(ids)).values(revoked_at=utcnow()))
    return len(ids)


def revoke_key_id(session: Session, key_id: int) -> None:
    session.execute(update(ApiKey).where(ApiKey.id == key_id, ApiKey.revoked_at.is_(None))
                    .values(revoked_at=utcnow()))
