"""DPO and CPT through the real entrypoint with a few steps each: the job succeeds, a version is
registered with lineage, and the adapter's weights moved."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from studio.registry.versions import get_version
from studio.settings import StudioSettings
from studio.store.db import session_scope
from studio.store.models import Job, JobMetric

from .conftest import RECIPES, Entrypoint, lora_b_norms, load_adapter, tail

pytestmark = pytest.mark.slow


def run_recipe(home: StudioSettings, entrypoint: Entrypoint, recipe: str, *overrides: str):
    result = entrypoint.run("--recipe", str(RECIPES / recipe), *overrides, timeout_s=600)
    assert result.returncode == 0, tail(result.output)
    with session_scope(home.db_url) as s:
        job = s.scalars(select(Job)).one()
        mv = get_version(s, job.result["model"])
        keys = set(s.scalars(select(JobMetric.key).where(JobMetric.job_id == job.id)))
        job.events  # noqa: B018 - load before the session closes
    assert job.status == "SUCCEEDED", job.error
    assert [e.to_status for e in job.events][-2:] == ["CHECKPOINTING", "SUCCEEDED"]
    assert mv.job_id == job.id and mv.dataset_snapshot_id and mv.mlflow_run_id == job.mlflow_run_id
    load_adapter(mv.base_model, mv.uri)
    norms = lora_b_norms(mv.uri)
    assert norms and all(n > 0 for n in norms.values()), "the adapter did not move"
    return job, mv, keys


def test_dpo_recipe(home: StudioSettings, entrypoint: Entrypoint):
    job, mv, keys = run_recipe(home, entrypoint, "dpo_reverse_tiny.yaml", "hyper.max_steps=6", "hyper.logging_steps=3")
    assert (mv.method, mv.adapter_type, mv.metrics["global_step"]) == ("dpo", "lora", 6)
    assert {"loss", "lr", "rewards/margins", "rewards/accuracies"} <= keys


def test_cpt_recipe(home: StudioSettings, entrypoint: Entrypoint):
    job, mv, keys = run_recipe(home, entrypoint, "cpt_tiny.yaml", "hyper.max_steps=6", "hyper.logging_steps=3")
    assert (mv.method, mv.adapter_type, mv.metrics["global_step"]) == ("cpt", "lora", 6)
    assert {"loss", "lr", "tokens_per_s"} <= keys
