"""GRPO through the real entrypoint: rollouts from the job's vLLM actor, kept warm for the whole job,
which merges the policy's LoRA into its weights in place every step (from memory, no adapter files);
rewards logged to the job's metrics and MLflow; validation on held-out prompts (eval_reward, sampled
by the same actor) with early stopping armed on it; the adapter moved and is registered. And the
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
        steps: dict[str, list[int]] = {}
        for m in s.scalars(select(JobMetric).where(JobMetric.job_id == job.id).order_by(JobMetric.step)):
            metrics.setdefault(m.key, []).append(m.value)
            steps.setdefault(m.key, []).append(m.step)
        job.events  # noqa: B018 - load before the session closes
    assert job.status == "SUCCEEDED", f"{job.error}\n{tail(output)}"
    assert [e.to_status for e in job.events][-2:] == ["CHECKPOINTING", "SUCCEEDED"]
    assert (mv.method, mv.adapter_type, mv.job_id) == ("grpo", "lora", job.id)
    load_adapter(mv.base_model, mv.uri)  # a plain PEFT directory
    norms = lora_b_norms(mv.uri)
    assert norms and all(n > 0 for n in norms.values()), "GRPO did not move the adapter"
    return job, mv, metrics, steps


def test_grpo_recipe_with_vllm_rollout_actor(home: StudioSettings, entrypoint: Entrypoint):
    steps = 6
    # Validation: 8 held-out prompts (0.4 % of reverse-train's 2000 rows) at steps 3 and 6, in batches of
    # 8 completions (2 prompts) per worker; early stopping armed on eval_reward (patience 10: it never stops
    # here, but transformers looks the metric up at every evaluation and fails if it is missing).
    validation = ["eval.split_ratio=0.004", "eval.eval_steps=3", "eval.batch_size=8", "eval.early_stopping_patience=10"]
    result = entrypoint.run("--recipe", RECIPE, f"hyper.max_steps={steps}", "checkpoint.every_steps=6", *validation,
                            timeout_s=600)
    assert result.returncode == 0, tail(result.output)
    out = result.output
    job, mv, metrics, at = finished_job(home, out)
    assert mv.metrics["global_step"] == steps

    # Rollouts came from the one vLLM actor, its weights updated in place once per step.
    assert len(re.findall(r"vLLM rollout actor grpo-rollout-\w+-job-\d+ ready \(vLLM 0\.32\.0", out)) == 1, tail(out)
    assert "FALL BACK" not in out and "HF generate" not in out
    loads = re.findall(r"policy step (\d+) loaded in place: (\d+) LoRA modules merged into (\d+) weights", out)
    # Steps 0-5 for training; the evaluation after the last step samples from policy step 6.
    assert [int(v) for v, *_ in loads] == list(range(steps + 1)), tail(out)
    assert {(int(m), int(w)) for _, m, w in loads} == {(4 * 7, 38)}  # every linear layer of the tiny model's 4
    for version in range(steps):
        # every rank (2 workers) sampled 4 prompts x 4 generations with this step's policy
        assert len(re.findall(rf"policy step {version}: 16 completions for 4 prompts", out)) == 2, tail(out)
    for version in (3, 6):  # each evaluation: 2 batches per rank of 2 held-out prompts x 4 generations
        assert len(re.findall(rf"policy step {version}: 8 completions for 2 prompts", out)) == 4, tail(out)

    # Rewards per step in the job's metrics and MLflow; groups differed, so there was a gradient.
    assert {"reward", "reward_std", "rewards/exact_match/mean", "rewards/char_f1/mean",
            "rollout/tokens_per_s", "loss", "lr"} <= set(metrics)
    assert max(metrics["reward_std"]) > 0 and max(metrics["grad_norm"]) > 0
    assert all(v > 0 for v in metrics["rollout/tokens_per_s"])
    client = MlflowClient(tracking_uri=home.mlflow)
    history = client.get_metric_history(job.mlflow_run_id, "reward")
    assert len(history) == len(metrics["reward"])

    # Validation: the held-out prompts' rewards (and TRL's eval_loss) at steps 3 and 6, in the job's metrics
    # (what `studio jobs show` and the UI read) and in MLflow.
    grpo_eval = {"eval_reward", "eval_reward_std", "eval_rewards/exact_match/mean", "eval_rewards/char_f1/mean",
                 "eval_loss", "eval_rollout/tokens_per_s"}
    assert grpo_eval <= set(metrics) and not {"eval_runtime", "eval_samples_per_second"} & set(metrics)
    assert all(at[k] == [3, 6] for k in grpo_eval), {k: at[k] for k in grpo_eval}
    assert all(0 <= v <= 1 for v in metrics["eval_rewards/exact_match/mean"])
    assert [m.step for m in client.get_metric_history(job.mlflow_run_id, "eval_reward")] == [3, 6]


def test_grpo_hf_generate_fallback_says_so(home: StudioSettings, entrypoint: Entrypoint):
    result = entrypoint.run("--recipe", RECIPE, "grpo.rollout.engine=hf", "hyper.max_steps=2",
                            "hyper.logging_steps=1", "resources.num_workers=1", "checkpoint.every_steps=2",
                            timeout_s=600)
    assert result.returncode == 0, tail(result.output)
    assert "WARNING: GRPO rollouts use HF generate" in result.output
    assert "rollouts use HF generate in the trainer (slow fallback)" in result.output  # the worker too
    assert "starting vLLM rollout actor" not in result.output and "loaded in place" not in result.output
    job, mv, metrics, _ = finished_job(home, result.output)
    assert "reward" in metrics and "rollout/tokens_per_s" not in metrics
