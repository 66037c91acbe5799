from __future__ import annotations

from dataclasses import asdict
from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import BaseModel, ConfigDict, Field

from studio.api.deps import AdminDep, SessionDep
from studio.keys import Role, create_key, list_keys, revoke_key

router = APIRouter(prefix="/api/keys", tags=["keys"])


class KeyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=128, description="Unique name of the key.")
    role: Role = Field(default=Role.user, description="admin | user | service")


@router.get("")
def get_keys(_: AdminDep, session: SessionDep,
             job_keys: Annotated[bool, Query(description="Include the per-job keys the scheduler "
                                             "derives from their submitters' keys.")] = False) -> list[dict]:
    return [asdict(k) for k in list_keys(session, job_keys=job_keys)]


@router.post("", status_code=201)
def post_key(body: KeyCreate, _: AdminDep, session: SessionDep) -> dict:
    """Create a key. The secret is in this response only; it is stored hashed."""
    secret, info = create_key(session, body.name, body.role)
    return {"key": secret, **asdict(info)}


@router.delete("/{name}")
def delete_key(name: str, _: AdminDep, session: SessionDep) -> dict:
    return asdict(revoke_key(session, name))
