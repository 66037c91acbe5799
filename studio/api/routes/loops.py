"""/api/loops: self-driving improvement loops (docs/loops.md). Create, read, replace the recipe,
delete, pause, resume, cancel, trigger a generation by hand, and a generation's timeline and ``explain``.
The scheduler's runner (``studio.loops.runner``) moves the generations; these routes manage the
loop objects and read what is stored."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from studio.access import is_admin, name_owner, principal_id, require_owner
from studio.api.deps import AdminDep, SessionDep, SettingsDep, UserOrAdminDep
from studio.loops import control
from studio.loops.repository import explain, get_loop, list_loops
from studio.loops.spec import LoopSpec
from studio.loops.views import (GenerationDetail, GenerationExplained, LoopDeleted, LoopDetail, LoopSummary,
                                explained_view, generation_detail, loop_detail, loop_summary)
from studio.recipes import with_home_paths
from studio.train.preflight import check_caller_paths
from studio.train.spec import TrainSpec

router = APIRouter(prefix="/api/loops", tags=["loops"])


class LoopCreate(BaseModel):
    """A loop recipe and the training recipe it runs, both validated (``studio loop create FILE``
    reads them from ``configs/loops/`` and ``configs/train/`` and sends this)."""

    model_config = ConfigDict(extra="forbid")
    loop: LoopSpec
    train: TrainSpec


class LoopAction(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: str = Field(default="", max_length=2000, description="Why, recorded with the transition.")


class GenerationAction(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: str = Field(min_length=1, max_length=2000, description="Why: required, recorded with the transition.")


def _train_spec(body: LoopCreate, key, settings) -> TrainSpec:
    """The training recipe with ``${STUDIO_HOME}`` expanded and its paths checked as /api/jobs does."""
    return check_caller_paths(with_home_paths(body.train, settings.home_abs, "request"), settings, is_admin(key))


def _owned_loop(session, key, name: str, action: str):
    loop = get_loop(session, name)  # 404 first
    require_owner(key, loop.owner_key_id, f"loop {name!r}", action)
    return loop


@router.post("", status_code=201)
def post_loop(body: LoopCreate, key: UserOrAdminDep, session: SessionDep, settings: SettingsDep) -> LoopDetail:
    """Create a loop on a registry name with a champion. The name's owner or an admin."""
    spec = body.loop
    require_owner(key, name_owner(session, "model", spec.served_name), f"registry name {spec.served_name!r}",
                  "run a loop on it")
    loop = control.create_checked(session, spec, _train_spec(body, key, settings), created_by=key.name, owner_key_id=principal_id(key))
    return loop_detail(session, loop)


@router.get("")
def get_loops(_: UserOrAdminDep, session: SessionDep) -> list[LoopSummary]:
    return [loop_summary(session, lp) for lp in list_loops(session)]


@router.get("/{name}")
def get_loop_detail(name: str, _: UserOrAdminDep, session: SessionDep) -> LoopDetail:
    return loop_detail(session, get_loop(session, name))


@router.put("/{name}")
def put_loop(name: str, body: LoopCreate, key: UserOrAdminDep, session: SessionDep, settings: SettingsDep
             ) -> LoopDetail:
    """Replace the recipe (same name and served name); started generations keep theirs. Its
    owner or an admin."""
    _owned_loop(session, key, name, "change it")
    return loop_detail(session, control.replace_spec(session, name, body.loop, _train_spec(body, key, settings)))


def _problem(description: str) -> dict:
    return {"description": description, "content": {"application/problem+json": {}}}


@router.delete("/{name}", responses={
    403: _problem("The key is not the loop's owner's or an admin's (or its role is below user)."),
    404: _problem("No loop of that name (`studio loop ls`)."),
    409: _problem("A generation is active (cancel it first, or wait), or a split a generation left is still live."),
})
def delete_loop(name: str, key: UserOrAdminDep, session: SessionDep) -> LoopDeleted:
    """Remove the loop and its history (generations, transitions, looks, shadow pairs); its name and
    served name are free for a new loop. Registered versions, jobs, dataset snapshots and feedback
    stay. 409 while a generation is active: cancel the loop first. Its owner or an admin."""
    _owned_loop(session, key, name, "delete it")
    return control.delete_loop(session, name, actor=key.name)


@router.post("/{name}/pause")
def post_pause(name: str, key: UserOrAdminDep, session: SessionDep, body: LoopAction | None = None) -> LoopDetail:
    """No new generation starts; the active one is held. Its owner or an admin."""
    _owned_loop(session, key, name, "pause it")
    return loop_detail(session, control.pause_loop(session, name, actor=key.name, reason=(body or LoopAction()).reason))


@router.post("/{name}/resume")
def post_resume(name: str, key: UserOrAdminDep, session: SessionDep, body: LoopAction | None = None) -> LoopDetail:
    """Active again; a held generation goes back to where it paused. Its owner or an admin."""
    _owned_loop(session, key, name, "resume it")
    return loop_detail(session, control.resume_loop(session, name, actor=key.name, reason=(body or LoopAction()).reason))


@router.post("/{name}/cancel")
def post_cancel(name: str, key: UserOrAdminDep, session: SessionDep, body: LoopAction | None = None) -> LoopDetail:
    """No new generation; the active one is cancelled (through ROLLING_BACK if the candidate holds
    traffic). Its owner or an admin."""
    _owned_loop(session, key, name, "cancel it")
    return loop_detail(session, control.cancel_loop(session, name, actor=key.name, reason=(body or LoopAction()).reason))


@router.post("/{name}/trigger", status_code=201)
def post_trigger(name: str, key: UserOrAdminDep, session: SessionDep, body: LoopAction | None = None
                 ) -> GenerationDetail:
    """Start a generation by hand (``studio loop run``): TRIGGERED now, moved on by the scheduler's
    runner. 409 while the loop is paused or cancelled, runs only on its own triggers
    (``trigger.manual: false``), or has an active generation. Its owner or an admin."""
    loop = _owned_loop(session, key, name, "run it")
    gen = control.run_loop(session, name, actor=key.name, reason=(body or LoopAction()).reason)
    return generation_detail(session, loop, gen)


@router.get("/{name}/generations/{number}")
def get_generation(name: str, number: int, _: UserOrAdminDep, session: SessionDep) -> GenerationDetail:
    """A generation's timeline: every transition and every look."""
    loop = get_loop(session, name)
    return generation_detail(session, loop, control.generation_by_number(session, loop, number))


@router.get("/{name}/generations/{number}/explain")
def get_explain(name: str, number: int, _: UserOrAdminDep, session: SessionDep) -> GenerationExplained:
    """Each stored look's verdict recomputed from its counts under the generation's frozen rule."""
    loop = get_loop(session, name)
    gen = control.generation_by_number(session, loop, number)
    return explained_view(loop, gen, explain(session, gen.id))


def _act_on_generation(session, key, name: str, number: int, body: GenerationAction, act) -> GenerationDetail:
    loop = get_loop(session, name)
    gen = control.generation_by_number(session, loop, number)
    act(session, gen, actor=key.name, reason=body.reason)
    return generation_detail(session, loop, gen)


@router.post("/{name}/generations/{number}/promote")
def post_promote(name: str, number: int, body: GenerationAction, key: AdminDep, session: SessionDep
                 ) -> GenerationDetail:
    """Promote the candidate now (from SHADOW or CANARY), whatever the statistics say. Admin, with a reason."""
    return _act_on_generation(session, key, name, number, body, control.promote_generation)


@router.post("/{name}/generations/{number}/rollback")
def post_rollback(name: str, number: int, body: GenerationAction, key: AdminDep, session: SessionDep
                  ) -> GenerationDetail:
    """Roll the candidate back (from SHADOW, CANARY, or paused there). Admin, with a reason."""
    return _act_on_generation(session, key, name, number, body, control.rollback_generation)


@router.post("/{name}/generations/{number}/abort")
def post_abort(name: str, number: int, body: GenerationAction, key: AdminDep, session: SessionDep
               ) -> GenerationDetail:
    """Cancel the generation (through ROLLING_BACK if it holds traffic); the loop stays active. Admin, with a reason."""
    return _act_on_generation(session, key, name, number, body, control.abort_generation)
