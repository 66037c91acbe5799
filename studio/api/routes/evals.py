"""/api/evals: queue an eval (EvalSpec body, the fields of a configs/eval/*.yaml), list, show with
the live leaderboard, page through per-datapoint results, stream them (SSE), cancel; and the
leaderboard pooled over every run on a dataset.

A spec that cannot run is refused before a job exists: 422 for a wrong field, 400/404 naming the
problem (0 rows, a scorer needing a reference the dataset lacks, an unknown model)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse

from studio.access import principal_id
from studio.api.deps import KeyDep, SessionDep, SettingsDep
from studio.api.params import Offset
from studio.api.routes.gateway import served_models
from studio.api.streams import follow_response
from studio.data.snapshots import resolve_snapshot
from studio.errors import StudioError
from studio.evals.leaderboard import dataset_leaderboard
from studio.evals.queue import enqueue_eval, get_eval, list_evals
from studio.evals.spec import EvalSpec
from studio.evals.views import (DatasetLeaderboard, EvalDetail, EvalResultsPage, EvalSummary, eval_detail,
                                eval_summary, follow_eval_async, results_page)
from studio.jobs.follow import FollowEvent
from studio.jobs.queue import request_cancel

router = APIRouter(prefix="/api/evals", tags=["evals"])


@router.post("", status_code=201)
def post_eval(spec: EvalSpec, key: KeyDep, session: SessionDep, request: Request) -> EvalDetail:
    """Queue an eval run; the scheduler starts it on Ray within about a second."""
    # Preflight asks the Gateway deployment for its model names: end this request's transaction
    # first, so no lock of it is held while that call runs.
    session.commit()
    job = enqueue_eval(session, spec, submitted_by=key.name, owner_key_id=principal_id(key),
                       models_available=served_models(request))
    return eval_detail(session, job, key)


@router.get("")
def get_evals(_: KeyDep, session: SessionDep,
              dataset: Annotated[str | None, Query(description="Only runs on this dataset name.")] = None,
              limit: Annotated[int, Query(ge=1, le=500)] = 100,
              offset: Offset = 0) -> list[EvalSummary]:
    """Eval runs, newest first, with their progress."""
    return [eval_summary(session, j) for j in list_evals(session, limit, offset, dataset)]


@router.get("/leaderboard")
def get_dataset_leaderboard(_: KeyDep, session: SessionDep,
                            dataset: Annotated[str, Query(description="name, name@N or snapshot id")]
                            ) -> DatasetLeaderboard:
    """Every run on this dataset snapshot pooled: models keyed by the version that answered."""
    board = dataset_leaderboard(session, resolve_snapshot(session, dataset).snapshot.id)
    return DatasetLeaderboard.model_validate(board)


@router.get("/{eval_id}")
def get_one_eval(eval_id: int, key: KeyDep, session: SessionDep) -> EvalDetail:
    """Status, progress, events and the leaderboard so far (live while the run goes); the spec for
    the run's owner and admins."""
    return eval_detail(session, get_eval(session, eval_id), key)


@router.get("/{eval_id}/results")
def get_results(eval_id: int, _: KeyDep, session: SessionDep,
                model: Annotated[str | None, Query(description="Only this model's answers.")] = None,
                limit: Annotated[int, Query(ge=1, le=1000)] = 50,
                offset: Offset = 0) -> EvalResultsPage:
    """Per-datapoint answers with every scorer's verdict (unscored ones keep the reason and the raw reply)."""
    job = get_eval(session, eval_id)
    return EvalResultsPage(eval_id=eval_id, limit=limit, offset=offset,
                           results=results_page(session, job, limit=limit, offset=offset, model=model))


@router.post("/{eval_id}/cancel", status_code=202)
def cancel_eval(eval_id: int, key: KeyDep, session: SessionDep) -> EvalSummary:
    """Cancel a queued or running eval (the results stored so far stay)."""
    get_eval(session, eval_id)
    return eval_summary(session, request_cancel(session, eval_id, key.name, key))


@router.get("/{eval_id}/events", response_model=None)
def get_events(eval_id: int, key: KeyDep, session: SessionDep, settings: SettingsDep,
               request: Request) -> StreamingResponse:
    """``text/event-stream``: ``status``, ``result`` (one per answer), ``leaderboard``, ``end``."""
    get_eval(session, eval_id)
    session.commit()  # the stream may last long: do not hold this request's transaction

    async def stream() -> AsyncIterator[str]:
        try:
            async for event in follow_eval_async(settings.db_url, eval_id):
                yield event.sse()
        except StudioError as e:
            yield FollowEvent("error", {"detail": e.problem, "fix": e.fix}).sse()

    return follow_response(request, key, stream())
