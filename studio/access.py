"""Who may change what: roles, owners and the one refusal every layer raises.

Roles (``studio.keys.Role``): ``admin`` does everything; ``user`` reads the team's catalog and
changes what it owns; ``service`` only calls models (``/v1``, ``/gateway/v1``) and rates its own
completions. A job key (``ApiKey.job_id`` set) acts for the key that submitted the job: it owns what
that key owns (``principal_id``). Rows made before owners were recorded (``owner_key_id`` null)
are changed by admins only. The route table is ``docs/security.md``.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from studio.errors import StudioError
from studio.store.models import ApiKey, OwnedName


class Forbidden(StudioError):
    status_code = 403


def is_admin(key: ApiKey) -> bool:
    return key.role == "admin"


def is_job_key(key: ApiKey) -> bool:
    return key.job_id is not None


def principal_id(key: ApiKey) -> int:
    """The key whose objects these are: a job key acts for its submitter."""
    return key.parent_id if key.parent_id is not None else key.id


def owns(key: ApiKey, owner_key_id: int | None) -> bool:
    return is_admin(key) or (owner_key_id is not None and owner_key_id == principal_id(key))


def require_owner(key: ApiKey, owner_key_id: int | None, what: str, action: str = "change it") -> None:
    """Refuse (403) unless ``key`` is an admin or owns ``what`` (a phrase: "job 7")."""
    if not owns(key, owner_key_id):
        owner = "another key" if owner_key_id is not None else "no key (it predates owners: admins only)"
        raise Forbidden(f"{what} belongs to {owner}; key {key.name!r} may not {action}",
                        "ask its owner or an admin")


def require_admin(key: ApiKey, what: str) -> None:
    if not is_admin(key):
        raise Forbidden(f"{what} needs an admin key; key {key.name!r} has role {key.role!r}",
                        "ask an admin")


def name_owner(session: Session, kind: str, name: str) -> int | None:
    row = session.get(OwnedName, (kind, name))
    return row.owner_key_id if row is not None else None


def claim_name(session: Session, kind: str, name: str, key: ApiKey | int) -> None:
    """Make ``key`` the owner of a new name, or refuse if another key owns it (``kind``: "model"
    for registry names, "dataset" for dataset names). Admins may add to any name; a name nobody
    owns yet becomes the caller's."""
    key_id = key if isinstance(key, int) else principal_id(key)
    owner = name_owner(session, kind, name)
    if owner is None:
        session.add(OwnedName(kind=kind, name=name, owner_key_id=key_id))
        session.flush()
        return
    if owner == key_id or (not isinstance(key, int) and is_admin(key)):
        return
    label = "registry name" if kind == "model" else f"{kind} name"
    raise Forbidden(f"{label} {name!r} belongs to another key",
                    "choose another name, or ask its owner or an admin to add to it")


def owned_names(session: Session, kind: str, key_id: int) -> list[str]:
    return list(session.scalars(select(OwnedName.name).where(OwnedName.kind == kind,
                                                             OwnedName.owner_key_id == key_id)))
