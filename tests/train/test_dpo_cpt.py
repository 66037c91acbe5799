"""DPO and CPT through the real entrypoint with a few steps each: the job succeeds, a version is
registered with lineage, and the adapter's weights moved. The DPO run starts from an existing
adapter (``init_adapter``), as the demo's DPO after SFT does."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from safetensors.torch import load_file
from sqlalchemy import select

from studio.registry.versions import get_version, register_version
from studio.settings import StudioSettings
from studio.store.db import session_scope
from studio.store.models import Job, JobMetric
from studio.train.plan import plan_run
from studio.train.spec import TrainSpec

from .conftest import RECIPES, Entrypoint, lora_b_norms, load_adapter, tail

pytestmark = [pytest.mark.slow, pytest.mark.no_engine]


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


def test_dpo_recipe_from_an_sft_adapter(home: StudioSettings, entrypoint: Entrypoint, tmp_path: Path):
    """DPO after SFT: ``init_adapter`` names a registered adapter (rank 4, random B, unlike the
    recipe's fresh rank-8 LoRA with B = 0); the result continues from its weights."""
    tiny = str((home.models_dir / "tiny").resolve())
    sft = write_adapter(tiny, tmp_path / "sft-adapter", r=4, b_std=0.05)
    with session_scope(home.db_url) as s:
        register_version(s, name="reverse-tiny", base_model=tiny, method="sft", adapter_type="lora", uri=str(sft))
    # Validation during training on a held-out quarter of the rows, every 3 steps, reported to tensorboard too.
    job, mv, keys = run_recipe(home, entrypoint, "dpo_reverse_tiny.yaml", "hyper.max_steps=6", "hyper.logging_steps=3",
                               "init_adapter=reverse-tiny@1", "eval.split_ratio=0.25", "eval.eval_steps=3",
                               "tracking.report_to=[mlflow,tensorboard]")
    assert (mv.method, mv.adapter_type, mv.metrics["global_step"]) == ("dpo", "lora", 6)
    # The plan's memory estimate (studio train plan) is within 25 % of the peak RSS a worker reached.
    with session_scope(home.db_url) as s:
        estimate = plan_run(TrainSpec.model_validate(job.spec), s).memory
    assert abs(estimate.total_mb - mv.metrics["peak_rss_mb"]) <= 0.25 * mv.metrics["peak_rss_mb"], (estimate, mv.metrics)
    assert {"loss", "lr", "rewards/margins", "rewards/accuracies"} <= keys
    dpo_eval = {"eval_loss", "eval_rewards/accuracies", "eval_rewards/margins"}
    assert dpo_eval <= keys and not {"eval_runtime", "eval_samples_per_second"} & keys
    with session_scope(home.db_url) as s:
        steps = set(s.scalars(select(JobMetric.step).where(JobMetric.job_id == job.id, JobMetric.key == "eval_loss")))
    assert steps == {3, 6}
    history = mlflow_history(home, job.mlflow_run_id, "eval_loss")
    assert [m.step for m in history] == [3, 6] and all(m.value > 0 for m in history)
    assert dpo_eval <= set(MlflowClient(home.mlflow).get_run(job.mlflow_run_id).data.metrics)
    events = list((home.home_abs / "tracking" / "reverse-tiny-dpo" / f"job-{job.id}" / "tensorboard").glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0, "no tensorboard event file was written"
    assert job.spec["init_adapter"] == "reverse-tiny@1"
    # Started from the SFT adapter: its rank, and every matrix near (but not at) its starting value.
    assert json.loads((Path(mv.uri) / "adapter_config.json").read_text())["r"] == 4
    assert not (Path(mv.uri) / "ref").exists(), "TRL's frozen reference copy leaked into the result"
    start, end = load_file(str(sft / "adapter_model.safetensors")), load_file(str(Path(mv.uri) / "adapter_model.safetensors"))
    assert start.keys() == end.keys()
    moved = {k: float((end[k] - start[k]).norm() / start[k].norm()) for k in start if "lora_B" in k}
    assert all(0 < d < 0.5 for d in moved.values()), moved


def mlflow_history(home: StudioSettings, run_id: str, key: str):
    return sorted(MlflowClient(home.mlflow).get_metric_history(run_id, key), key=lambda m: m.step)


def write_adapter(base_model: str, out: Path, *, r: int, b_std: float) -> Path:
    """A LoRA adapter whose B matrices are random (a fresh one's are zero): a stand-in SFT result."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base_model),
                           LoraConfig(r=r, lora_alpha=2 * r, target_modules="all-linear", task_type="CAUSAL_LM"))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, b_std)
    model.save_pretrained(str(out))
    return out


def test_cpt_recipe(home: StudioSettings, entrypoint: Entrypoint):
    # Validation for CPT too: eval_loss on a held-out quarter of the text rows every 3 steps.
    job, mv, keys = run_recipe(home, entrypoint, "cpt_tiny.yaml", "hyper.max_steps=6", "hyper.logging_steps=3",
                               "eval.split_ratio=0.25", "eval.eval_steps=3")
    assert (mv.method, mv.adapter_type, mv.metrics["global_step"]) == ("cpt", "lora", 6)
    assert {"loss", "lr", "tokens_per_s", "eval_loss"} <= keys
    with session_scope(home.db_url) as s:
        steps = set(s.scalars(select(JobMetric.step).where(JobMetric.job_id == job.id, JobMetric.key == "eval_loss")))
    assert steps == {3, 6}
    assert [m.step for m in mlflow_history(home, job.mlflow_run_id, "eval_loss")] == [3, 6]
