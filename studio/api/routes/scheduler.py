"""/api/scheduler: is the job scheduler of the running studio alive, and what did it last do."""

from __future__ import annotations

from fastapi import APIRouter, Request

from studio.api.deps import KeyDep
from studio.errors import Unavailable

router = APIRouter(prefix="/api/scheduler", tags=["jobs"])


@router.get("")
async def get_scheduler(request: Request, _: KeyDep) -> dict:
    """The scheduler deployment's status: last pass, passes run, last error."""
    handle = getattr(request.app.state, "scheduler", None)
    if handle is None:
        raise Unavailable("this API process has no job scheduler: it runs inside the Serve application "
                          "`studio up` deploys (scheduler.enabled in configs/serve/studio.yaml)",
                          "run `studio up`; jobs stay QUEUED until a scheduler runs")
    return await handle.status.remote()
