"""/api/experiments: A/B experiments over served models, their per-arm numbers, and the export of
their feedback as a preference dataset. Clients request the alias on /v1 like any model name."""

from __future__ import annotations

import asyncio
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from studio.access import principal_id, require_owner
from studio.api.deps import KeyDep, SessionDep, SettingsDep, UserOrAdminDep
from studio.experiments.ab import (
    ExperimentSpec,
    ExperimentUpdate,
    create_experiment,
    experiment_dict,
    experiment_stats,
    get_experiment as get_experiment_row,
    list_experiments,
    stop_experiment,
    update_experiment,
)
from studio.experiments.completions import completion_dict, recent_completions
from studio.store.db import session_scope

router = APIRouter(prefix="/api/experiments", tags=["experiments"])


def _require_owner(session, key, alias: str, action: str) -> None:
    exp = get_experiment_row(session, alias)  # 404 for an unknown alias
    require_owner(key, exp.owner_key_id, f"experiment {alias!r}", action)


def _owner_check(db_url: str, key, alias: str, action: str) -> None:
    with session_scope(db_url) as session:
        _require_owner(session, key, alias, action)


class ExportRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=128, description="Dataset name to store it under.")


async def _bases(request: Request) -> set[str] | None:
    """Served base ids, from the Router when the studio serves models (None: not known here)."""
    handle = getattr(request.app.state, "router", None)
    return set(await handle.bases.remote()) if handle is not None else None


@router.post("", status_code=201)
async def post_experiment(spec: ExperimentSpec, key: UserOrAdminDep, session: SessionDep,
                          request: Request) -> dict:
    """Create an experiment; every arm must be a name the studio serves."""
    bases = await _bases(request)
    return experiment_dict(create_experiment(session, spec, key.name, bases, principal_id(key)))


@router.get("")
def get_experiments(_: KeyDep, session: SessionDep,
                    status: Literal["active", "stopped"] | None = None) -> list[dict]:
    return [experiment_dict(e) for e in list_experiments(session, status)]


@router.get("/{alias}")
async def get_experiment(alias: str, _: KeyDep, settings: SettingsDep, request: Request) -> dict:
    """The experiment with per-arm requests, p50 latency/TTFT, versions, ratings, preferences."""
    await _flush_log(request)
    return await asyncio.to_thread(_stats, settings.db_url, alias)


def _stats(db_url: str, alias: str) -> dict:
    with session_scope(db_url) as session:
        return experiment_stats(session, alias)


async def _flush_log(request: Request) -> None:
    """Write out completions the Router still buffers, so counts include answers just given."""
    handle = getattr(request.app.state, "router", None)
    if handle is not None:
        await handle.flush_completions.remote()


@router.patch("/{alias}")
async def patch_experiment(alias: str, update: ExperimentUpdate, key: UserOrAdminDep,
                           session: SessionDep, request: Request) -> dict:
    """New arms/weights and/or status (active | stopped). Its owner or an admin."""
    _require_owner(session, key, alias, "change it")
    bases = await _bases(request) if update.arms is not None else None
    return experiment_dict(update_experiment(session, alias, update, bases))


@router.post("/{alias}/stop")
def post_stop(alias: str, key: UserOrAdminDep, session: SessionDep) -> dict:
    """Stop serving the alias (its log and feedback stay; PATCH status=active resumes it). Its
    owner or an admin."""
    _require_owner(session, key, alias, "stop it")
    return experiment_dict(stop_experiment(session, alias))


@router.get("/{alias}/completions")
def get_completions(alias: str, key: KeyDep, session: SessionDep,
                    limit: Annotated[int, Query(ge=1, le=1000)] = 50) -> list[dict]:
    """The newest logged completions served under the alias: the prompts and answers of every
    caller, so the experiment's owner and admins only."""
    _require_owner(session, key, alias, "read its logged prompts and answers")
    return [completion_dict(c) for c in recent_completions(session, alias, limit)]


@router.post("/{alias}/export", status_code=201)
async def post_export(alias: str, body: ExportRequest, key: UserOrAdminDep,
                      settings: SettingsDep, request: Request) -> dict:
    """Store the experiment's feedback as preference rows (prompt, chosen, rejected): dataset
    ``name``'s next version, trainable with the DPO recipe (``data.dataset=NAME``). The
    experiment's owner or an admin (the rows hold every caller's prompts)."""
    from studio.experiments.export import export_preferences

    await asyncio.to_thread(_owner_check, settings.db_url, key, alias, "export its feedback")
    await _flush_log(request)
    return await asyncio.to_thread(export_preferences, settings, alias, body.name, key)
