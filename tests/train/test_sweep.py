"""A sweep end to end on the tiny model: the real entrypoint ``python -m studio.train.sweep_run``
(as ``ray job submit`` runs it) on the package's Ray head, Ray Tune running two trials, each a Ray
Train run of a few steps with its own MLflow run under the sweep's parent run; exactly one version
(the best trial's) is registered, with the sweep in its lineage."""

from __future__ import annotations

import pytest
import yaml
from mlflow.tracking import MlflowClient
from sqlalchemy import select

from studio.jobs.queue import get_job, job_detail
from studio.registry.versions import lineage
from studio.store.db import session_scope
from studio.store.models import Job, ModelVersion
from tests.train.conftest import RECIPES, tail

pytestmark = pytest.mark.slow


def test_two_trial_sweep_registers_one_version_under_one_parent_run(home, entrypoint, tmp_path):
    sweep = {
        "recipe": str(RECIPES / "sft_reverse_tiny.yaml"),
        # The fewest steps that still evaluate (step 2) and report to Tune twice (steps 2 and 4).
        "train": {"name": "rev-sweep", "hyper": {"max_steps": 4, "batch_size": 8, "logging_steps": 2},
                  "resources": {"num_workers": 1}, "eval": {"split_ratio": 0.05, "eval_steps": 2, "batch_size": 16},
                  "checkpoint": {"every_steps": 2, "keep": 1}, "eval_after": {"dataset": "reverse-test", "limit": 4}},
        "space": {"hyper.learning_rate": "loguniform(1e-3, 1e-2)"},
        "num_trials": 2, "search": "random", "metric": "eval_loss", "scheduler": "fifo", "max_concurrent_trials": 2,
    }
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep))
    run = entrypoint.run("--recipe", str(path), module="studio.train.sweep_run", timeout_s=400)
    assert run.returncode == 0, tail(run.output)

    with session_scope(home.db_url) as s:
        parent = s.scalars(select(Job).where(Job.kind == "sweep")).one()
        trials = list(s.scalars(select(Job).where(Job.parent_id == parent.id).order_by(Job.id)))
        versions = list(s.scalars(select(ModelVersion).where(ModelVersion.name == "rev-sweep")))
        assert parent.status == "SUCCEEDED" and parent.submitted_by == "ray job submit"
        assert [(t.kind, t.status) for t in trials] == [("train", "SUCCEEDED")] * 2
        # Each trial trained with its own sampled learning rate.
        rates = [t.spec["hyper"]["learning_rate"] for t in trials]
        assert len(set(rates)) == 2 and all(1e-3 <= r <= 1e-2 for r in rates)
        assert [t.result["params"] for t in trials] == [{"hyper.learning_rate": r} for r in rates]

        # Exactly one version: the trial with the lower eval_loss, scored by eval_after once.
        assert len(versions) == 1
        (mv,) = versions
        losses = {t.id: t.result["metrics"]["eval_loss"] for t in trials}
        assert mv.job_id == min(losses, key=losses.get) == parent.result["best_trial_job_id"]
        assert parent.result["model"] == "rev-sweep@1" and "exact_match" in mv.metrics
        assert lineage(s, "rev-sweep@1")["sweep"]["job_id"] == parent.id
        detail = job_detail(s, get_job(s, parent.id))
        assert [(t.job_id, t.status, t.registered) for t in detail.trials] == [
            (t.id, "SUCCEEDED", "rev-sweep@1" if t.id == mv.job_id else None) for t in trials]
        assert all(t.eval_loss == losses[t.job_id] and t.wall_s > 0 for t in detail.trials)
        parent_run, trial_runs, best_run = parent.mlflow_run_id, {t.mlflow_run_id for t in trials}, mv.mlflow_run_id

    # MLflow: the sweep's parent run has the two trials' runs as children; the version is a child's.
    client = MlflowClient(home.mlflow)
    experiment = client.get_experiment_by_name("rev-sweep")
    children = client.search_runs([experiment.experiment_id], f"tags.mlflow.parentRunId = '{parent_run}'")
    assert {r.info.run_id for r in children} == trial_runs and len(children) == 2
    assert best_run in trial_runs
    assert client.get_run(parent_run).info.status == "FINISHED"
    assert all("eval_loss" in r.data.metrics for r in children)
