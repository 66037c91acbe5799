"""/api/synth: queue synthetic generation jobs, read their progress (JSON or SSE) and draft rows."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse
from pydantic import Field

from studio.access import is_admin, owns, principal_id
from studio.api.deps import KeyDep, SettingsDep
from studio.api.params import Offset
from studio.api.streams import follow_response
from studio.jobs.queue import HIDDEN_SPEC
from studio.data import synth
from studio.data.sources import check_tokenizer
from studio.data.writer import check_owner
from studio.data.synth.spec import SynthSpec
from studio.data.synth.views import SynthDraftRows, SynthStatus
from studio.errors import StudioError
from studio.recipes import Spec

router = APIRouter(prefix="/api/synth", tags=["synth"])


class SynthRequest(Spec):
    spec: SynthSpec = Field(description="The generation recipe (same fields as configs/data/synth-*.yaml).")
    max_retries: int = Field(default=2, ge=0, le=10, description="Job retries; each resumes from the "
                             "finished chunks.")


@router.post("", status_code=201)
async def post_synth(body: SynthRequest, key: KeyDep, settings: SettingsDep) -> SynthStatus:
    """Queue a generation job; poll ``GET /api/synth/{id}`` or stream ``/events``."""
    if body.spec.tokenizer:
        body.spec.tokenizer = check_tokenizer(body.spec.tokenizer, settings, is_admin(key))
    await run_in_threadpool(check_owner, settings, [body.spec.name], key)  # not after the spend
    job_id = await run_in_threadpool(synth.submit, body.spec, settings, key.name, body.max_retries,
                                     owner_key_id=principal_id(key))
    return synth.status(settings, job_id)


def _for_key(info: SynthStatus, key) -> SynthStatus:
    """A synth job's status; its spec for its owner and admins only."""
    if not owns(key, info.owner_key_id):
        info = info.model_copy(update={"spec": None, "spec_hidden": HIDDEN_SPEC})
    return info


@router.get("/{job_id}")
def get_synth(job_id: int, key: KeyDep, settings: SettingsDep) -> SynthStatus:
    """Status, progress (chunks done/total, rows, parse failures, tokens, cost) and result; the
    spec for the job's owner and admins."""
    return _for_key(synth.status(settings, job_id), key)


@router.get("/{job_id}/rows")
def get_draft_rows(job_id: int, _: KeyDep, settings: SettingsDep,
                   limit: Annotated[int, Query(ge=0, le=500)] = 50,
                   offset: Offset = 0) -> SynthDraftRows:
    """Rows generated so far (before curation), while the job runs or after."""
    return synth.draft_rows(settings, job_id, limit, offset)


@router.get("/{job_id}/events")
def get_events(job_id: int, key: KeyDep, settings: SettingsDep, request: Request) -> StreamingResponse:
    """Server-Sent Events: ``progress`` on every change, then ``end`` with the final status."""
    synth.status(settings, job_id)  # 404 before the stream starts

    async def events() -> AsyncIterator[str]:
        try:
            async for info in synth.follow_events(settings, job_id):
                kind = "end" if info.ended else "progress"
                yield f"event: {kind}\ndata: {_for_key(info, key).model_dump_json()}\n\n"
        except StudioError as e:
            yield f"event: error\ndata: {json.dumps({'detail': e.problem, 'fix': e.fix})}\n\n"

    return follow_response(request, key, events())
