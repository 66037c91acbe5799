"""/api/models: the model registry — names, versions, lineage, promotion.

A ``ref`` is ``name`` (its champion, else its newest version) or ``name@N``.
"""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from studio.api.deps import KeyDep, SessionDep, UserOrAdminDep
from studio.errors import NotFound
from studio.registry.versions import lineage, list_versions, model_summaries, promote, version_dict

router = APIRouter(prefix="/api/models", tags=["models"])


class PromoteRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    stage: Literal["candidate", "champion", "archived"] = Field(
        default="champion", description="champion archives the name's previous champion.")


@router.get("")
def get_models(_: KeyDep, session: SessionDep) -> list[dict]:
    """Registered names with their newest and champion versions."""
    return model_summaries(session)


@router.get("/{name}")
def get_model(name: str, _: KeyDep, session: SessionDep) -> dict:
    """Every version of a name, oldest first."""
    versions = list_versions(session, name)
    if not versions:
        raise NotFound(f"no registered model named {name!r}", "see GET /api/models (or `studio models ls`)")
    return {"name": name, "versions": [version_dict(v) for v in versions]}


@router.get("/{ref}/lineage")
def get_lineage(ref: str, _: KeyDep, session: SessionDep) -> dict:
    """Which dataset snapshot and which job produced this version."""
    return lineage(session, ref)


@router.post("/{ref}/promote")
def post_promote(ref: str, body: PromoteRequest, _: UserOrAdminDep, session: SessionDep) -> dict:
    """Set a pinned version's stage (``name@N``); promoting to champion archives the previous one."""
    return version_dict(promote(session, ref, body.stage))
