"""/api/models: the model registry — names, versions, lineage, promotion.

A ``ref`` is ``name`` (its champion, else its newest version) or ``name@N``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, BackgroundTasks, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from studio.api.deps import KeyDep, SessionDep, SettingsDep, UserOrAdminDep
from studio.api.errors import error_response
from studio.api.params import Offset
from studio.api.routes.gateway import served_models
from studio.access import Forbidden, claim_name, name_owner, owns, principal_id, require_admin
from studio.errors import NotFound, StudioError
from studio.evals.gate import (GateConfig, PromotionRefused, gate_dict, gated_promote, get_gate,
                               promotion_history, set_gate)
from studio.registry.export import adapter_archive
from studio.registry.merge import merge_into_store, merge_source
from studio.registry.mlflow_mirror import mirror_best_effort
from studio.registry.versions import get_version, lineage, list_versions, model_summaries, version_dict

router = APIRouter(prefix="/api/models", tags=["models"])


class PromoteRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    stage: Literal["candidate", "champion", "archived"] = Field(
        default="champion", description="champion archives the name's previous champion.")
    force: bool = Field(default=False, description="Promote even if the gate refuses (recorded as "
                        "forced, with `reason`). Admin keys only.")
    reason: str | None = Field(default=None, max_length=1024,
                               description="Why the gate is forced or overridden: required with `force` "
                               "or an override, recorded with the promotion.")
    dataset: str | None = Field(default=None, description="Gate dataset for this call (overrides the "
                                "name's gate). Admin keys only.")
    scorer: dict[str, Any] | None = Field(default=None, description="Gate scorer (an EvalSpec scorer) for "
                                          "this call. Admin keys only.")
    margin: float | None = Field(default=None, description="Required lead over the champion for this "
                                 "call. Admin keys only.")

    def overrides_gate(self) -> bool:
        return self.force or any(v is not None for v in (self.dataset, self.scorer, self.margin))


class MergeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    base_name: str | None = Field(
        default=None, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
        description="Also make the merged model a base model: the folder $STUDIO_HOME/models/<base_name>, "
        "which recipes (base_model) and deployments then name. 409 if it exists.")


class GateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    dataset: str = Field(description="The golden dataset: name, name@N or snapshot id.")
    scorer: dict[str, Any] = Field(default_factory=lambda: {"type": "exact_match"},
                                   description="An EvalSpec scorer whose mean decides.")
    margin: float = Field(default=0.0, description="Candidate mean minus champion mean must exceed this; "
                          "from 0 to 1 (scores are in [0, 1]; outside: 400).")
    limit: int | None = Field(default=None, gt=0, description="Evaluate only the first N rows.")
    generation: dict[str, Any] = Field(default_factory=dict, description="EvalSpec generation parameters.")


@router.get("")
def get_models(_: KeyDep, session: SessionDep,
               limit: Annotated[int | None, Query(ge=1, le=500, description="Names per page.")] = None,
               offset: Offset = 0) -> list[dict]:
    """Registered names with their newest and champion versions; a page of names with ``limit``."""
    return model_summaries(session, limit, offset)


@router.get("/{name}")
def get_model(name: str, _: KeyDep, session: SessionDep, settings: SettingsDep,
              limit: Annotated[int | None, Query(ge=1, le=500, description="Versions per page.")] = None,
              offset: Offset = 0, newest_first: bool = False) -> dict:
    """Versions of a name, oldest first (or newest first); a page of them with ``limit``; each
    with ``mlflow_url``, its page in the MLflow UI."""
    versions = list_versions(session, name, limit=limit, offset=offset, newest_first=newest_first)
    # An empty page past the end of an existing name is not "no such model".
    if not versions and not (offset and list_versions(session, name, limit=1)):
        raise NotFound(f"no registered model named {name!r}", "see GET /api/models (or `studio models ls`)")
    owner = name_owner(session, "model", name)
    return {"name": name, "owner_key_id": owner, "versions": [version_dict(v, settings) for v in versions]}


@router.get("/{ref}/lineage")
def get_lineage(ref: str, _: KeyDep, session: SessionDep, settings: SettingsDep) -> dict:
    """Which dataset snapshot and which job produced this version (``model.mlflow_url``: its page
    in the MLflow UI)."""
    out = lineage(session, ref)
    return {**out, "model": version_dict(get_version(session, out["model"]["ref"]), settings)}


@router.get("/{ref}/download", response_class=StreamingResponse, responses={200: {"content": {
    "application/gzip": {}}, "description": "NAME-vN.tar.gz: the version's folder with its model card (README.md)."}})
async def get_download(ref: str, _: KeyDep, session: SessionDep) -> StreamingResponse:
    """The version's PEFT adapter folder (``PeftModel.from_pretrained`` loads it) with a model card
    (base model, data snapshot, recipe, scores), streamed as a ``.tar.gz``. 404 naming the reason
    when the version's files are gone."""
    filename, chunks = await run_in_threadpool(adapter_archive, session, ref)
    return StreamingResponse(chunks, media_type="application/gzip",
                             headers={"Content-Disposition": f'attachment; filename="{filename}"'})


@router.post("/{ref}/merge")
def post_merge(ref: str, body: MergeRequest, key: UserOrAdminDep, session: SessionDep,
               settings: SettingsDep) -> dict:
    """Merge the adapter into its base (PEFT ``merge_and_unload``; a QLoRA adapter onto the
    dequantized 4-bit base): a full model in safetensors with the tokenizer, in the artifact store
    (``merged/<name>/<version>``, made once per version), and with ``base_name`` also a base model
    under ``$STUDIO_HOME/models``. The name's owner or an admin. Runs in the API process: minutes
    for a large model (the CLI's ``studio models merge`` does it on the operator's machine)."""
    mv = get_version(session, ref)  # 404 before any ownership question
    _check_name_owner(session, key, mv.name, "merge its versions")
    src = merge_source(session, ref)
    session.commit()  # the merge takes a while: hold no database transaction through it
    return merge_into_store(settings, src, body.base_name)


@router.post("/{ref}/promote", response_model=None)
def post_promote(ref: str, body: PromoteRequest, key: UserOrAdminDep, session: SessionDep,
                 request: Request, settings: SettingsDep, background: BackgroundTasks) -> dict | JSONResponse:
    """Set a pinned version's stage (``name@N``); promoting to champion archives the previous one.

    With a promotion gate (``PUT /api/models/{name}/gate``, or ``dataset`` in the body) the
    candidate must beat the champion: 200 promoted (the version, with ``promotion``), 202 an eval
    was queued (``promotion.eval_id``; ask again when it is done), 409 refused (recorded).
    ``force`` promotes anyway and is recorded. Only the name's owner or an admin promotes; only an
    admin forces or overrides the gate, and says why (``reason``)."""
    if "@" not in ref:
        raise StudioError(f"promote needs a pinned version, got {ref!r}", f"write {ref}@N (see `studio models ls`)")
    mv = get_version(session, ref)  # 404 for an unknown version before any ownership question
    _check_name_owner(session, key, mv.name, "promote its versions")
    by = key.name
    if body.overrides_gate():
        require_admin(key, "forcing or overriding the promotion gate")
        if not (body.reason or "").strip():
            raise StudioError("forcing or overriding the promotion gate needs a reason",
                              'add "reason": "why" to the body (it is recorded with the promotion)')
        by = f"{key.name} (reason: {body.reason.strip()})"
    override = {"dataset": body.dataset, "scorer": body.scorer, "margin": body.margin}
    session.commit()  # a gate's eval asks the gateway for its models: release the key row first (see evals.py)
    o = gated_promote(session, ref, body.stage, force=body.force, by=by, override=override,
                      owner_key_id=principal_id(key), models_available=served_models(request))
    if o.outcome == "evaluating":
        return JSONResponse({"promotion": o.as_dict()}, status_code=202)
    if o.outcome == "refused":
        session.commit()  # the refusal is part of the record
        refused = PromotionRefused(f"{o.ref} was not promoted: {o.reason}",
                                   "improve the candidate, lower the gate's margin, or pass force=true")
        # The verdict of each check (parity, the eval's means) goes with the refusal, as with a promotion.
        return error_response(request, refused.status_code, refused.problem, refused.fix,
                              extra={"promotion": o.as_dict()})
    # MLflow's @champion/@challenger follow, once the promotion is committed and answered.
    background.add_task(mirror_best_effort, settings, mv.name)
    return {**o.version, "promotion": {k: v for k, v in o.as_dict().items() if k != "version"}}


@router.get("/{name}/gate")
def get_model_gate(name: str, _: KeyDep, session: SessionDep) -> dict:
    """The name's promotion gate (null: promotions are not gated)."""
    return gate_dict(name, get_gate(session, name))


@router.put("/{name}/gate")
def put_model_gate(name: str, body: GateRequest, key: UserOrAdminDep, session: SessionDep) -> dict:
    """Set the name's promotion gate: golden dataset, scorer, margin. The name's owner or an admin."""
    _check_name_owner(session, key, name, "change its promotion gate")
    set_gate(session, name, GateConfig(**body.model_dump()))
    return gate_dict(name, get_gate(session, name))


def _check_name_owner(session, key, name: str, action: str) -> None:
    """Only the key that registered ``name`` (or an admin) may ``action``. A name nobody has
    registered yet becomes the caller's (a gate set before the first training run); one registered
    before owners were recorded is an admin's to change."""
    owner = name_owner(session, "model", name)
    if owner is None and not list_versions(session, name, limit=1):
        claim_name(session, "model", name, key)
        return
    if not owns(key, owner):
        raise Forbidden(f"registry name {name!r} belongs to another key: key {key.name!r} may not {action}",
                        "ask the name's owner or an admin")


@router.get("/{name}/promotions")
def get_promotions(name: str, _: KeyDep, session: SessionDep) -> list[dict]:
    """Every promotion of the name's versions: promoted, refused or forced, and why."""
    return promotion_history(session, name)
