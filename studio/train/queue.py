"""Queue a training job: preflight, pin what it resolved, store it QUEUED for the scheduler."""

from __future__ import annotations

import sys

from sqlalchemy.orm import Session

from studio.access import claim_name, principal_id
from studio.jobs.status import create_job
from studio.settings import StudioSettings
from studio.store.models import ApiKey, Job
from studio.train.preflight import preflight
from studio.train.spec import TrainResult, TrainSpec


def enqueue_train_job(session: Session, spec: TrainSpec, submitted_by: str | None, *,
                      cluster_gpus: float | None = None, key: ApiKey | None = None,
                      check_fit: bool = False) -> Job:
    """Preflight the spec (raises ``StudioError`` naming the problem; nothing is created), then
    store it QUEUED.

    The stored spec pins what preflight resolved: the dataset as ``name@N`` (a version ingested
    later does not change what this job — or its retries — trains on) and the base model as an
    absolute path (Ray workers run in another working directory).

    With the submitting ``key``, the job is that key's and so is its registry name: a name another
    key registered first is refused (403) before anything is stored.

    ``check_fit`` (submit from the API and the CLI, unless forced): a recipe whose workers cannot fit
    the free resources is refused naming the knob to turn (``studio.train.plan``).
    """
    if key is not None:
        claim_name(session, "model", spec.name, key)
    inputs = preflight(spec, session, cluster_gpus=cluster_gpus)
    if check_fit:
        from studio.train.plan import check_submit_fits

        check_submit_fits(spec, session, inputs)
    pinned = spec.model_copy(deep=True)
    pinned.base_model = inputs.base_model
    pinned.data.dataset = inputs.dataset_ref
    pinned.init_adapter = inputs.init_adapter_ref  # name@N or an absolute path / URI (None without one)
    if inputs.eval_dataset_ref:
        pinned.eval.dataset = inputs.eval_dataset_ref
    job = create_job(session, name=spec.name, spec=pinned.model_dump(mode="json", by_alias=True),
                     max_retries=spec.max_retries, submitted_by=submitted_by,
                     owner_key_id=principal_id(key) if key is not None else None)
    if spec.hyper.max_steps:  # what progress bars count to (GET /api/jobs/{id} total_steps)
        job.result = TrainResult(total_steps=spec.hyper.max_steps).dump()
    return job


def cluster_gpus(settings: StudioSettings | None = None) -> float | None:
    """GPUs of the Ray cluster this process is connected to (a Serve replica is), or on an
    autoscaling cluster the most it can scale to (STUDIO_CLUSTER_MAX_GPUS), else None: preflight
    then skips the GPU check rather than guess."""
    from studio.cluster import cluster_gpu_capacity

    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return None
    return cluster_gpu_capacity(float(ray.cluster_resources().get("GPU", 0.0)), settings or StudioSettings())
