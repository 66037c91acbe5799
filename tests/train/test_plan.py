"""The plan's arithmetic (studio.train.plan): parameters trained against PEFT's own count on the tiny
model, each memory term against its formula, ZeRO partitioning, QLoRA, gradient checkpointing, steps.
The estimate against measured peaks: tests/train/test_job_retry_resume.py (SFT), test_dpo_cpt.py (DPO)."""

from __future__ import annotations

from pathlib import Path

import pytest

from studio.settings import StudioSettings
from studio.store.db import init_db
from studio.train.plan import MiB, NF4_BYTES, ModelShape, memory_per_worker, model_shape, total_steps
from studio.train.spec import TrainSpec
from studio.train.toy_data import ingest_toy_datasets
from tests.cli_invoke import invoke
from tests.loopback import free_port

from .conftest import RECIPES

# Llama-2-7B's shape.
SHAPE = ModelShape(model_type="llama", params_total=6_738_415_616, linear_params=6_476_005_376,
                   lora_params=39_976_960, hidden_size=4096, intermediate_size=11008, num_layers=32,
                   vocab_size=32000)


def spec(**fields) -> TrainSpec:
    body = {"name": "p", "method": "sft", "base_model": "/m", "data": {"dataset": "d"}, **fields}
    return TrainSpec.model_validate(body)


def mb(x: float) -> float:
    return round(x / MiB, 1)


def test_lora_terms_follow_their_formulas():
    m = memory_per_worker(spec(hyper={"batch_size": 4}, resources={"num_workers": 2}), SHAPE, 512)
    assert m.device == "cpu"
    assert m.weights_mb == mb(SHAPE.params_total * 4)  # fp32 on CPU
    assert m.trained_mb == mb(SHAPE.lora_params * 4)
    assert m.optimizer_mb == mb(SHAPE.lora_params * 8)  # AdamW: 2 fp32 states
    assert m.gradients_mb == mb(SHAPE.lora_params * 4 * 2)  # fp32, and DDP's buckets with 2 workers
    tokens = 4 * 512
    assert m.activations_mb == mb(tokens * 32 * (10 * 4096 + 4 * 11008) * 4 + tokens * 32000 * 4 * 3)
    parts = (m.runtime_mb, m.weights_mb, m.trained_mb, m.gradients_mb, m.optimizer_mb, m.activations_mb, m.data_mb)
    assert m.total_mb == pytest.approx(sum(parts), abs=0.2)


def test_bf16_gpu_qlora_and_gradient_checkpointing_shrink_what_they_should():
    lora = memory_per_worker(spec(resources={"use_gpu": True}), SHAPE, 512)
    assert lora.device == "gpu" and lora.weights_mb == mb(SHAPE.params_total * 2)  # bf16 with a GPU
    qlora = memory_per_worker(spec(adapter="qlora", resources={"use_gpu": True}), SHAPE, 512)
    rest = SHAPE.params_total - SHAPE.linear_params
    assert qlora.weights_mb == mb(SHAPE.linear_params * NF4_BYTES + rest * 2)
    assert qlora.weights_mb < lora.weights_mb / 3
    ckpt = memory_per_worker(spec(resources={"use_gpu": True}, hyper={"gradient_checkpointing": True}), SHAPE, 512)
    assert ckpt.activations_mb < lora.activations_mb / 3 and ckpt.weights_mb == lora.weights_mb
    half = memory_per_worker(spec(resources={"use_gpu": True}, hyper={"batch_size": 4}), SHAPE, 512)
    assert half.activations_mb == pytest.approx(lora.activations_mb / 2, abs=0.2)


def test_zero_stages_partition_across_workers():
    def full(stage: int | None, **ds):
        fields = {"adapter": "full", "resources": {"use_gpu": True, "num_workers": 4}}
        if stage is not None:
            fields["deepspeed"] = {"stage": stage, **ds}
        return memory_per_worker(spec(**fields), SHAPE, 512)

    ddp, z1, z2, z3 = full(None), full(1), full(2), full(3)
    p = SHAPE.params_total
    assert ddp.optimizer_mb == mb(8 * p) and ddp.gradients_mb == mb(2 * p * 2)  # bf16 grads, DDP buckets
    assert z1.optimizer_mb == mb(8 * p / 4) and z1.gradients_mb == mb(2 * p)
    assert z2.gradients_mb == mb(2 * p / 4) and z2.weights_mb == mb(2 * p)
    assert z3.weights_mb == mb(2 * p / 4)
    assert full(2, offload_optimizer=True).optimizer_mb == 0
    assert z3.total_mb < z2.total_mb < z1.total_mb < ddp.total_mb


def test_dpo_runs_chosen_and_rejected_together_and_full_dpo_holds_a_reference():
    sft = memory_per_worker(spec(), SHAPE, 256)
    dpo = memory_per_worker(spec(method="dpo", data={"dataset": "pref"}), SHAPE, 256)
    assert dpo.activations_mb == pytest.approx(2 * sft.activations_mb, abs=0.2)
    full_dpo = memory_per_worker(spec(method="dpo", adapter="full"), SHAPE, 256)
    assert full_dpo.weights_mb == mb(2 * SHAPE.params_total * 4)


def test_steps_count_as_the_trainer_does():
    tiny = spec(hyper={"epochs": 15, "batch_size": 32}, resources={"num_workers": 2})
    assert total_steps(tiny, 2000) == 15 * 32  # ceil(1000 / 32) per epoch
    assert total_steps(spec(hyper={"epochs": 1.5, "batch_size": 8, "gradient_accumulation_steps": 2}), 100) == 11
    assert total_steps(spec(hyper={"max_steps": 7}), 10**6) == 7


@pytest.mark.parametrize("targets", ["all-linear", ["q_proj", "v_proj"]])
def test_parameters_trained_match_peft(tiny_model_dir: Path, targets):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    s = spec(base_model=str(tiny_model_dir), lora={"r": 8, "target_modules": targets})
    shape = model_shape(str(tiny_model_dir), s)
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    assert shape.params_total == sum(p.numel() for p in model.parameters())
    peft = get_peft_model(model, LoraConfig(r=8, target_modules=targets, task_type="CAUSAL_LM"))
    assert shape.lora_params == sum(p.numel() for p in peft.parameters() if p.requires_grad)
    assert model_shape(str(tiny_model_dir), spec(adapter="full")).lora_params == 0


def test_cli_plans_and_submit_refuses_what_cannot_fit(tmp_path: Path, tiny_model_dir: Path, monkeypatch):
    """`studio train plan` and `studio train submit` in-process on a real home (Ray not up: this
    machine's resources); a batch no machine holds is refused naming the knob, `--force` queues it."""
    home = tmp_path / "project" / ".studio"
    settings = StudioSettings(home=home, database_url=None, artifacts_uri=None, mlflow_uri=None, redis_url=None,
                              admin_key=None)
    init_db(settings.db_url)
    settings.models_dir.mkdir(parents=True)
    (settings.models_dir / "tiny").symlink_to(tiny_model_dir)
    ingest_toy_datasets(settings, tmp_path / "data")
    for var in ("STUDIO_DATABASE_URL", "STUDIO_ARTIFACTS_URI", "STUDIO_MLFLOW_URI", "RAY_ADDRESS"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("STUDIO_HOME", str(home))
    monkeypatch.setenv("STUDIO_HTTP_PORT", str(free_port()))  # no studio answers: submit only queues
    recipe = str(RECIPES / "sft_reverse_tiny.yaml")

    code, out = invoke("train", "plan", recipe)
    assert code == 0, out
    assert "parameters trained  327,680 of 918,656" in out and "2,000 rows" in out and "192 on 2 worker(s)" in out
    assert "wall time           unknown" in out and "fits: 2 worker(s)" in out
    code, out = invoke("train", "plan", recipe, "hyper.batch_size=200000")
    assert code == 1 and "does not fit" in out and "try hyper.batch_size=" in out, out
    code, out = invoke("train", "submit", recipe, "hyper.batch_size=200000")
    assert code == 1 and "cannot fit" in out and "hyper.batch_size=" in out and "--force" in out, out
    code, out = invoke("train", "submit", recipe, "hyper.batch_size=200000", "--force")
    assert code == 0 and "QUEUED" in out, out
