"""Fault tolerance across attempts: the whole attempt dies (its driver killed after the first checkpoint,
and its Ray Train actors and placement group with it), the scheduler marks it FAILED → RETRYING, and
``--job-id`` starts attempt 2, which
resumes from the job's latest Ray Train checkpoint (same storage path and run name) and registers
the result under ``models/<name>/<job>-2``."""

from __future__ import annotations

import time

import pytest
from mlflow.tracking import MlflowClient
from sqlalchemy import select

from studio.jobs.progress import job_progress
from studio.jobs.status import JobStatus, transition
from studio.settings import StudioSettings
from studio.store.db import session_scope
from studio.store.models import Job, JobMetric
from studio.train.plan import plan_run
from studio.train.spec import TrainSpec

from .conftest import RECIPES, Entrypoint, tail

pytestmark = [pytest.mark.slow, pytest.mark.no_engine]

MAX_STEPS, EVERY = 60, 20


def test_retry_resumes_from_the_previous_attempts_checkpoint(home: StudioSettings, entrypoint: Entrypoint):
    proc, log = entrypoint.start(
        "--recipe", str(RECIPES / "sft_reverse_tiny.yaml"), f"hyper.max_steps={MAX_STEPS}",
        f"checkpoint.every_steps={EVERY}", "hyper.logging_steps=5", "eval_after=null",
        # Validation on the held-out snapshot every checkpoint; patience the run cannot exhaust.
        "eval.dataset=reverse-test", f"eval.eval_steps={EVERY}", "eval.early_stopping_patience=5")
    deadline = time.monotonic() + 180
    checkpoint = None
    while checkpoint is None and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.3)
        with session_scope(home.db_url) as s:
            job = s.scalars(select(Job)).first()
            checkpoint = job.checkpoint_uri if job else None
    assert checkpoint, f"no checkpoint was reported:\n{tail(log)}"
    entrypoint.stop(proc)  # attempt 1 dies with its driver: nobody records it
    entrypoint.ray_head.wait_idle()  # ...and so do its Ray Train controller, workers and placement group

    with session_scope(home.db_url) as s:
        job = s.scalars(select(Job)).one()
        assert (job.status, job.attempts) == ("RUNNING", 1)
        # What the scheduler does when Ray reports the attempt's Ray job as failed.
        transition(s, job.id, JobStatus.FAILED, "Ray job failed")
        transition(s, job.id, JobStatus.RETRYING, "attempt 2 of 3 after a backoff")
        job_id = job.id

    result = entrypoint.run("--job-id", str(job_id), timeout_s=600)
    assert result.returncode == 0, tail(result.output)
    with session_scope(home.db_url) as s:
        job = s.get(Job, job_id)
        events = [e.to_status for e in job.events]
        resumed = s.execute(select(JobMetric.attempt, JobMetric.value).where(
            JobMetric.job_id == job_id, JobMetric.key == "resumed_from_step")).all()
        evals = s.execute(select(JobMetric.attempt, JobMetric.step, JobMetric.value).where(
            JobMetric.job_id == job_id, JobMetric.key == "eval_loss")).all()
    assert job.status == "SUCCEEDED" and job.attempts == 2
    assert events[-5:] == ["RETRYING", "STARTING", "RUNNING", "CHECKPOINTING", "SUCCEEDED"]
    assert len(resumed) == 1 and resumed[0].attempt == 2 and resumed[0].value >= EVERY
    assert job.result["metrics"]["global_step"] == MAX_STEPS
    # The plan's memory estimate (studio train plan) is within 25 % of the peak RSS a worker reached.
    with session_scope(home.db_url) as s:
        estimate = plan_run(TrainSpec.model_validate(job.spec), s).memory
    peak = job.result["metrics"]["peak_rss_mb"]
    assert abs(estimate.total_mb - peak) <= 0.25 * peak, (estimate, peak)
    # eval_loss beside the training loss: attempt 2 validated at every EVERY steps it ran, in the job's
    # metrics and in its MLflow run.
    assert {st for a, st, _ in evals if a == 2} >= {2 * EVERY, MAX_STEPS} and all(v > 0 for *_, v in evals)
    history = MlflowClient(home.mlflow).get_metric_history(job.mlflow_run_id, "eval_loss")
    assert {m.step for m in history} >= {2 * EVERY, MAX_STEPS}
    assert job.spec["eval"]["dataset"] == "reverse-test"
    assert job.result["uri"].endswith(f"models/reverse-tiny/{job_id}-2")
    # Progress counts attempt 2's steps to the total the trainer recorded, epochs included (issue 24).
    with session_scope(home.db_url) as s:
        p = job_progress(s, s.get(Job, job_id))
    assert (p.unit, p.done, p.total) == ("step", MAX_STEPS, MAX_STEPS) and p.epochs and p.epoch is not None
    assert p.rate_per_s and p.eta_s is None and p.text.startswith(f"step {MAX_STEPS}/{MAX_STEPS} · epoch ")
