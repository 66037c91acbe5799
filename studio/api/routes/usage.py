"""GET /api/usage: gateway usage aggregated by service, model group, key, day (and job,
deployment), with filters. Admin keys see every key's usage; other keys see their own."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter, Query

from studio.api.deps import KeyDep, SessionDep
from studio.gateway.usage import aggregate_usage
from studio.keys import Role

router = APIRouter(prefix="/api/usage", tags=["usage"])


@router.get("")
def get_usage(
    key: KeyDep, session: SessionDep,
    group_by: str = Query("service,model", description="Comma-separated: service, model, key, "
                          "day, job, deployment (empty: one total)."),
    since: datetime | None = Query(None, description="Only calls at or after (ISO 8601)."),
    until: datetime | None = Query(None, description="Only calls before (ISO 8601)."),
    service: str | None = Query(None, description="Only this calling service (eval, synth, ...)."),
    model: str | None = Query(None, description="Only this model group."),
    key_name: str | None = Query(None, alias="key", description="Only this key (admins)."),
    job: str | None = Query(None, description="Only this job id."),
) -> dict[str, Any]:
    dims = [g.strip() for g in group_by.split(",") if g.strip()]
    if key.role != Role.admin.value:
        key_name = key.name  # a non-admin key sees only its own calls
    rows = aggregate_usage(session, dims, since=since, until=until, service=service, model=model,
                           key=key_name, job=job)
    return {"group_by": dims, "rows": rows}
