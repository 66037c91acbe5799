"""/api/jobs: queue a training job (TrainSpec body), list, show, compare, cancel, logs, metrics.

Wrong input is refused before a job exists: an unknown field or a wrong type is a 422 naming the
field; preflight (model, dataset and its kind, GPUs) is a 400 problem naming the problem and the fix.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse

from studio.access import is_admin, require_owner
from studio.api.deps import KeyDep, SessionDep, SettingsDep
from studio.api.params import Offset
from studio.api.streams import follow_response
from studio.errors import StudioError
from studio.evals.leaderboard import version_scores
from studio.jobs import ray_jobs
from studio.jobs.follow import FollowEvent, follow_job_async
from studio.jobs.queue import (get_job, job_detail, job_summaries, job_summary, list_jobs, metrics_by_key,
                               request_cancel)
from studio.jobs.status import JobStatus
from studio.jobs.views import JobDetail, JobMetrics, JobSummary
from studio.mlflow_links import run_url
from studio.recipes import with_home_paths
from studio.train.preflight import check_caller_paths
from studio.train.compare import Comparison, compare_runs, parse_ids
from studio.train.plan import TrainPlan, plan_run
from studio.train.queue import cluster_gpus, enqueue_train_job
from studio.train.spec import TrainSpec
from studio.train.sweep import SweepSpec, enqueue_sweep_job

router = APIRouter(prefix="/api/jobs", tags=["jobs"])


@router.post("", status_code=201)
def post_job(spec: TrainSpec, key: KeyDep, session: SessionDep, settings: SettingsDep,
             force: Annotated[bool, Query(description="Admin keys only: queue a recipe even though its plan "
                                                      "says it cannot fit the free resources.")] = False) -> JobDetail:
    """Queue a training job. The body has the fields of a `configs/train/*.yaml` recipe. The job
    starts when the scheduler (in the running studio) picks it up, within about a second.
    ``base_model``: a folder under ``$STUDIO_HOME/models`` (its name, or a path that may start with
    ``${STUDIO_HOME}``) or a hub id; ``init_adapter``: a registered version or a folder there too.
    Other server paths are 403 (an admin's may lie under ``STUDIO_DATA_ROOTS``). A recipe whose
    workers cannot fit (``POST /api/jobs/plan``) is a 400 naming the knob to turn."""
    if force and not is_admin(key):
        raise StudioError("force: only an admin key may queue a recipe that the plan says cannot fit",
                          "drop force and turn the knob the refusal names, or ask an admin", status_code=403)
    spec = check_caller_paths(with_home_paths(spec, settings.home_abs, "request"), settings, is_admin(key))
    job = enqueue_train_job(session, spec, submitted_by=key.name, cluster_gpus=cluster_gpus(),
                            key=key, check_fit=not force)
    return job_detail(session, job, key)


@router.post("/sweep", status_code=201)
def post_sweep(spec: SweepSpec, key: KeyDep, session: SessionDep, settings: SettingsDep,
               force: Annotated[bool, Query(description="Admin keys only: queue it even though the plan of one "
                                                        "trial says it cannot fit the free resources.")] = False
               ) -> JobDetail:
    """Queue a sweep: the body of a `configs/sweeps/*.yaml` file with the training recipe inline
    (``train``; no ``recipe`` path over HTTP). One job of kind ``sweep``; its trials become training
    jobs (``parent_id``) while it runs, listed by ``GET /api/jobs/{id}`` (``trials``); cancelling it
    cancels them all. The same rules as ``POST /api/jobs``: the recipe's paths are checked (a user
    key names no server path), a field the space names must exist (400 naming it and the recipe's
    fields), a domain must be samplable."""
    if force and not is_admin(key):
        raise StudioError("force: only an admin key may queue a recipe that the plan says cannot fit",
                          "drop force and turn the knob the refusal names, or ask an admin", status_code=403)
    train = check_caller_paths(with_home_paths(spec.train, settings.home_abs, "request"), settings, is_admin(key))
    spec = spec.model_copy(update={"train": train})
    job = enqueue_sweep_job(session, spec, submitted_by=key.name, cluster_gpus=cluster_gpus(), key=key,
                            check_fit=not force)
    return job_detail(session, job, key)


@router.post("/plan")
def post_plan(spec: TrainSpec, key: KeyDep, session: SessionDep, settings: SettingsDep) -> TrainPlan:
    """What the recipe (the body of ``POST /api/jobs``) will need and take, queueing nothing:
    parameters trained, peak memory per worker, tokens, steps, wall time from this cluster's measured
    tokens/s, and whether it fits the free resources (docs/training.md, "Plan a run")."""
    spec = check_caller_paths(with_home_paths(spec, settings.home_abs, "request"), settings, is_admin(key))
    return plan_run(spec, session, cluster_gpus=cluster_gpus())


@router.get("")
def get_jobs(_: KeyDep, session: SessionDep,
             status: Annotated[list[JobStatus] | None, Query(description="Only these statuses (repeatable).")] = None,
             limit: Annotated[int, Query(ge=1, le=500)] = 100,
             offset: Offset = 0) -> list[JobSummary]:
    """Jobs, newest first."""
    return job_summaries(session, list_jobs(session, status, limit, offset))


@router.get("/compare")
def get_compare(key: KeyDep, session: SessionDep,
                ids: Annotated[list[str] | None, Query(description="2 to 8 training job ids, comma-separated "
                                                "(ids=12,15) or repeated.")] = None) -> Comparison:
    """Training runs side by side: recipes (dotted fields, the differing ones marked), loss and
    eval-loss curves, final metrics, wall time, tokens/s, peak memory, and the eval scores of the
    versions they registered. A recipe is shown to its job's owner and admins only, as
    ``GET /api/jobs/{id}`` shows it. 400 for fewer than 2 or more than 8 ids or a job that is not a
    training job; 404 for an unknown id."""
    return compare_runs(session, parse_ids(ids or []), key, scores=version_scores)


@router.get("/{job_id}")
def get_one_job(job_id: int, key: KeyDep, session: SessionDep, settings: SettingsDep) -> JobDetail:
    """A job with its result, progress and every status change (events); its spec for its owner
    and admins; ``mlflow_url``: its run in the MLflow UI."""
    detail = job_detail(session, get_job(session, job_id), key)
    return detail.model_copy(update={"mlflow_url": run_url(settings, detail.mlflow_run_id)})


@router.post("/{job_id}/cancel", status_code=202)
def cancel_job(job_id: int, key: KeyDep, session: SessionDep) -> JobSummary:
    """Cancel: queued or retrying jobs are CANCELLED at once; a job on Ray is stopped by the
    scheduler within a tick (202: watch the status). 409 when there is nothing left to cancel."""
    return job_summary(session, request_cancel(session, job_id, key.name, key))


@router.get("/{job_id}/metrics")
def get_metrics(job_id: int, _: KeyDep, session: SessionDep) -> JobMetrics:
    """Per-step metrics grouped by key (loss, learning_rate, …): one series per chart."""
    return JobMetrics(job_id=job_id, metrics=metrics_by_key(session, job_id))


@router.get("/{job_id}/logs", response_model=None)
def get_logs(job_id: int, key: KeyDep, session: SessionDep, settings: SettingsDep, request: Request,
             follow: Annotated[bool, Query(description="Stream Server-Sent Events until the job is done.")] = False,
             attempt: Annotated[int | None, Query(ge=1, description="An earlier attempt; default: the latest.")] = None,
             ) -> dict | StreamingResponse:
    """The Ray job logs of an attempt. With ``follow=true``: ``text/event-stream`` of ``status``,
    ``progress``, ``log`` and finally ``end`` events (``error`` if Ray stops answering). The
    owner's and admins' only: logs show what the job read and wrote."""
    job = get_job(session, job_id)
    require_owner(key, job.owner_key_id, f"job {job_id}", "read its logs")
    if follow:
        # The stream may last hours: end this request's transaction now rather than hold it
        # until the stream closes.
        session.commit()
        return follow_response(request, key, _sse(settings, job_id))
    sid = ray_jobs.submission_id(job_id, attempt) if attempt else job.ray_submission_id
    out = {"job_id": job_id, "status": job.status, "attempt": attempt or job.attempts, "submission_id": sid}
    if sid is None:
        return {**out, "logs": "", "note": f"job {job_id} is {job.status} and has not been submitted to Ray yet"}
    return {**out, "logs": ray_jobs.job_logs(ray_jobs.jobs_client(settings), sid)}


async def _sse(settings, job_id: int) -> AsyncIterator[str]:
    try:
        async for event in follow_job_async(settings, job_id, logs_client=lambda: ray_jobs.jobs_client(settings)):
            yield event.sse()
    except StudioError as e:
        yield FollowEvent("error", {"detail": e.problem, "fix": e.fix}).sse()
