"""A sweep end to end on the tiny model: the real entrypoint ``python -m studio.train.sweep_run``
(as ``ray job submit`` runs it) on the package's Ray head, Ray Tune running two trials one at a time,
each a Ray Train run of a few steps with its own MLflow run under the sweep's parent run. The sweep's
process is killed once the first trial has finished and the second is training; the scheduler's pass
fails it (its heartbeat stopped) and schedules the retry, and attempt 2 (``--job-id``, as the
message says to run it by hand) restores Tune's experiment: the finished trial is not trained again,
the interrupted one runs anew, and exactly one version (the best trial's) is registered, with the
sweep in its lineage."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
import yaml
from mlflow.tracking import MlflowClient
from sqlalchemy import select

from studio.jobs.queue import get_job, job_detail
from studio.jobs.scheduler import reconcile_once
from studio.jobs.submission import SchedulerConfig
from studio.registry.versions import lineage
from studio.store.db import session_scope
from studio.store.models import Job, JobEvent, ModelVersion, utcnow
from tests.train.conftest import RECIPES, tail

pytestmark = [pytest.mark.slow, pytest.mark.no_engine]


def test_two_trial_sweep_resumes_after_its_process_dies_and_registers_one_version(home, entrypoint, tmp_path):
    sweep = {
        "recipe": str(RECIPES / "sft_reverse_tiny.yaml"),
        # The fewest steps that still evaluate (step 2) and report to Tune twice (steps 2 and 4).
        "train": {"name": "rev-sweep", "hyper": {"max_steps": 4, "batch_size": 8, "logging_steps": 2},
                  "resources": {"num_workers": 1}, "eval": {"split_ratio": 0.05, "eval_steps": 2, "batch_size": 16},
                  "checkpoint": {"every_steps": 2, "keep": 1}, "eval_after": {"dataset": "reverse-test", "limit": 4}},
        "space": {"hyper.learning_rate": "loguniform(1e-3, 1e-2)"},
        "num_trials": 2, "search": "random", "metric": "eval_loss", "scheduler": "fifo", "max_concurrent_trials": 1,
    }
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep))
    proc, log = entrypoint.start("--recipe", str(path), module="studio.train.sweep_run")

    # Attempt 1 dies (its process group SIGKILLed, nothing recorded) once trial 1 finished and trial 2 trains.
    def children(s):
        return list(s.scalars(select(Job).where(Job.parent_id.is_not(None)).order_by(Job.id)))

    deadline, states = time.monotonic() + 300, []
    while states[:1] != ["SUCCEEDED"] or states[1:] != ["RUNNING"]:
        assert proc.poll() is None and time.monotonic() < deadline, f"trials {states}:\n{tail(log)}"
        time.sleep(0.3)
        with session_scope(home.db_url) as s:
            states = [c.status for c in children(s)]
    entrypoint.stop(proc)
    entrypoint.ray_head.wait_idle()  # its Tune and Ray Train actors died with it

    with session_scope(home.db_url) as s:
        parent = s.scalars(select(Job).where(Job.kind == "sweep")).one()
        assert (parent.status, parent.attempts, parent.submitted_by) == ("RUNNING", 1, "ray job submit")
        first, interrupted = children(s)
        sweep_id, first_trial = parent.id, first.result["sweep_trial"]
    # The scheduler's pass once the heartbeat timeout has passed: the silent sweep (and its silent
    # trial) FAILED, the sweep RETRYING (its backoff not over yet, so not submitted to Ray: no client).
    config = SchedulerConfig()
    report = reconcile_once(home, None, config, now=utcnow() + timedelta(seconds=config.heartbeat_timeout_s + 1))
    assert sorted(report.failed) == [sweep_id, interrupted.id] and report.retrying == [sweep_id], report
    with session_scope(home.db_url) as s:
        assert s.get(Job, sweep_id).status == "RETRYING"

    run = entrypoint.run("--job-id", str(sweep_id), module="studio.train.sweep_run", timeout_s=400)
    assert run.returncode == 0, tail(run.output)
    assert "restoring the Tune experiment" in run.output, tail(run.output)

    with session_scope(home.db_url) as s:
        parent = s.get(Job, sweep_id)
        trials = children(s)
        versions = list(s.scalars(select(ModelVersion).where(ModelVersion.name == "rev-sweep")))
        assert (parent.status, parent.attempts) == ("SUCCEEDED", 2)
        assert "RETRYING" in [e.to_status for e in s.scalars(select(JobEvent).where(JobEvent.job_id == sweep_id))]
        # Trial 1 trained once (one job row), the interrupted trial's row FAILED, and one more trial
        # ran in attempt 2: two finished trials, each with its own sampled learning rate.
        assert [(t.id, t.kind, t.status) for t in trials[:2]] == [(first.id, "train", "SUCCEEDED"),
                                                                   (interrupted.id, "train", "FAILED")]
        assert trials[1].error.endswith(f"it is a trial of sweep {sweep_id}, whose retry runs it again")
        assert [t.result.get("sweep_trial") for t in trials].count(first_trial) == 1
        finished = [t for t in trials if t.status == "SUCCEEDED"]
        assert len(trials) == 3 and [t.id for t in finished] == [first.id, trials[2].id]
        rates = [t.spec["hyper"]["learning_rate"] for t in finished]
        assert len(set(rates)) == 2 and all(1e-3 <= r <= 1e-2 for r in rates)
        assert [t.result["params"] for t in finished] == [{"hyper.learning_rate": r} for r in rates]
        assert parent.result["trials"] == 2 and parent.result["finished_trials"] == 2

        # Exactly one version: the finished trial with the lower eval_loss, scored by eval_after once.
        assert len(versions) == 1
        (mv,) = versions
        losses = {t.id: t.result["metrics"]["eval_loss"] for t in finished}
        assert mv.job_id == min(losses, key=losses.get) == parent.result["best_trial_job_id"]
        assert parent.result["model"] == "rev-sweep@1" and "exact_match" in mv.metrics
        assert lineage(s, "rev-sweep@1")["sweep"]["job_id"] == parent.id
        detail = job_detail(s, get_job(s, parent.id))
        assert [(t.job_id, t.status, t.registered) for t in detail.trials] == [
            (t.id, t.status, "rev-sweep@1" if t.id == mv.job_id else None) for t in trials]
        assert all(t.eval_loss == losses[t.job_id] and t.wall_s > 0 for t in detail.trials if t.job_id in losses)
        parent_run, best_run = parent.mlflow_run_id, mv.mlflow_run_id
        runs = {t.mlflow_run_id: t.status for t in trials}

    # MLflow: the sweep's one parent run has a child run per trial job: the two finished ones
    # FINISHED, the interrupted one ended FAILED by attempt 2; trial 1 has one run only.
    client = MlflowClient(home.mlflow)
    experiment = client.get_experiment_by_name("rev-sweep")
    children_runs = client.search_runs([experiment.experiment_id], f"tags.mlflow.parentRunId = '{parent_run}'")
    assert {r.info.run_id: r.info.status for r in children_runs} == {
        run_id: "FINISHED" if status == "SUCCEEDED" else "FAILED" for run_id, status in runs.items()}
    assert [r.data.tags.get("studio.sweep_trial") for r in children_runs].count(first_trial) == 1
    assert best_run in runs and runs[best_run] == "SUCCEEDED"
    assert client.get_run(parent_run).info.status == "FINISHED"
    assert all("eval_loss" in r.data.metrics for r in children_runs if r.info.status == "FINISHED")
    assert len(client.search_runs([experiment.experiment_id], "tags.`studio.kind` = 'sweep'")) == 1
