"""GRPO through the real entrypoint: rollouts from the job's vLLM actor, kept warm for the whole job,
which merges the policy's LoRA into its weights in place every step (from memory, no adapter files);
rewards logged to the job's metrics and MLflow; the adapter moved and is registered. And the
HF-generate fallback, which must say so in the job's log. (That an in-place update changes the
engine's output exactly as the trained policy does: test_rollout_engine.py.)"""

from __future__ import annotations

import re

import pytest
from mlflow.tracking import MlflowClient
from sqlalchemy import select

from studio.registry.versions import get_version
from studio.settings import StudioSettings
from studio.store.db import session_scope
from studio.store.models import Job, JobMetric

from .conftest import RECIPES, Entrypoint, lora_b_norms, load_adapter, tail

pytestmark = pytest.mark.slow

RECIPE = str(RECIPES / "grpo_reverse_tiny.yaml")


def finished_job(home: StudioSettings, output: str):
    with session_scope(home.db_url) as s:
        job = s.scalars(select(Job)).one()
        mv = get_version(s, job.result["model"])
        metrics: dict[str, list[float]] = {}
        for m in s.scalars(select(JobMetric).where(JobMetric.job_id == job.id).order_by(JobMetric.step)):
            metrics.setdefault(m.key, []).append(m.value)
        job.events  # noqa: B018 - load before the session closes
    assert job.status == "SUCCEEDED", f"{job.error}\n{tail(output)}"
    assert [e.to_status for e in job.events][-2:] == ["CHECKPOINTING", "SUCCEEDED"]
    assert (mv.method, mv.adapter_type, mv.job_id) == ("grpo", "lora", job.id)
    load_adapter(mv.base_model, mv.uri)  # a plain PEFT directory
    norms = lora_b_norms(mv.uri)
    assert norms and all(n > 0 for n in norms.values()), "GRPO did not move the adapter"
    return job, mv, metrics


def test_grpo_recipe_with_vllm_rollout_actor(home: StudioSettings, entrypoint: Entrypoint):
    steps = 6
    result = entrypoint.run("--recipe", RECIPE, f"hyper.max_steps={steps}", "checkpoint.every_steps=6",
                            timeout_s=600)
    assert result.returncode == 0, tail(result.output)
    out = result.output
    job, mv, metrics = finished_job(home, out)
    assert mv.metrics["global_step"] == steps

    # Rollouts came from the one vLLM actor, its weights updated in place once per step.
    assert len(re.findall(r"vLLM rollout actor grpo-rollout-\w+-job-\d+ ready \(vLLM 0\.32\.0", out)) == 1, tail(out)
    assert "FALL BACK" not in out and "HF generate" not in out
    loads = re.findall(r"policy step (\d+) loaded in place: (\d+) LoRA modules merged into (\d+) weights", out)
    assert [int(v) for v, *_ in loads] == list(range(steps)), tail(out)
    assert {(int(m), int(w)) for _, m, w in loads} == {(4 * 7, 38)}  # every linear layer of the tiny model's 4
    for version in range(steps):
        # every rank (2 workers) sampled 4 prompts x 4 generations with this step's policy
        assert len(re.findall(rf"policy step {version}: 16 completions for 4 prompts", out)) == 2, tail(out)

    # Rewards per step in the job's metrics and MLflow; groups differed, so there was a gradient.
    assert {"reward", "reward_std", "rewards/exact_match/mean", "rewards/char_f1/mean",
            "rollout/tokens_per_s", "loss", "lr"} <= set(metrics)
    assert max(metrics["reward_std"]) > 0 and max(metrics["grad_norm"]) > 0
    assert all(v > 0 for v in metrics["rollout/tokens_per_s"])
    history = MlflowClient(tracking_uri=home.mlflow).get_metric_history(job.mlflow_run_id, "reward")
    assert len(history) == len(metrics["reward"])


def test_grpo_hf_generate_fallback_says_so(home: StudioSettings, entrypoint: Entrypoint):
    result = entrypoint.run("--recipe", RECIPE, "grpo.rollout.engine=hf", "hyper.max_steps=2",
                            "hyper.logging_steps=1", "resources.num_workers=1", "checkpoint.every_steps=2",
                            timeout_s=600)
    assert result.returncode == 0, tail(result.output)
    assert "WARNING: GRPO rollouts use HF generate" in result.output
    assert "rollouts use HF generate in the trainer (slow fallback)" in result.output  # the worker too
    assert "starting vLLM rollout actor" not in result.output and "loaded in place" not in result.output
    job, mv, metrics = finished_job(home, result.output)
    assert "reward" in metrics and "rollout/tokens_per_s" not in metrics
