"""``eval.early_stopping_patience`` stops a run (no Ray): TRL's SFTTrainer on the tiny model with
the studio's validation arguments (studio.train.common.eval_schedule) and callback
(studio.train.common.early_stopping), as every runner builds them. At learning rate 0 eval_loss never
improves, so a patience of 2 stops the run after a few evaluations; without it the run goes to
max_steps. The runs with Ray leave the patience unexhausted (test_job_retry_resume,
test_grpo_end_to_end), so this is where stopping itself is checked."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import AutoTokenizer
from trl import SFTConfig, SFTTrainer

from studio.train import sft
from studio.train.common import early_stopping, eval_schedule
from studio.train.spec import TrainSpec

ROWS = [{"prompt": f"reverse: {a} {b} {c}", "completion": f"{c} {b} {a}"}
        for a, b, c in zip(range(10), range(3, 13), range(5, 15), strict=True)]
MAX_STEPS = 12


def spec(patience: int | None, method: str = "sft") -> TrainSpec:
    return TrainSpec.model_validate({
        "name": "stop", "method": method, "base_model": "tiny", "data": {"dataset": "rows"},
        "hyper": {"max_steps": MAX_STEPS, "batch_size": 4, "logging_steps": 1},
        "eval": {"split_ratio": 0.2, "eval_steps": 1, "early_stopping_patience": patience},
        **({"grpo": {"num_generations": 4}} if method == "grpo" else {})})


def run(tiny_model_dir: Path, s: TrainSpec, tmp_path: Path) -> int:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    train, _ = sft.build_dataset(ROWS[:8], tokenizer)
    held_out, _ = sft.build_dataset(ROWS[8:], tokenizer)
    args = SFTConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, report_to="none", max_length=32,
                     max_steps=MAX_STEPS, learning_rate=0.0, per_device_train_batch_size=4, logging_steps=1,
                     save_strategy="no", completion_only_loss=True, **eval_schedule(s))
    trainer = SFTTrainer(model=str(tiny_model_dir), args=args, train_dataset=train, eval_dataset=held_out,
                         processing_class=tokenizer, callbacks=early_stopping(s))
    trainer.train()
    evals = [log["eval_loss"] for log in trainer.state.log_history if "eval_loss" in log]
    assert evals and max(evals) - min(evals) < 1e-6  # learning rate 0: validation never improves
    return trainer.state.global_step


def test_a_run_whose_eval_loss_stops_improving_stops_after_its_patience(tiny_model_dir, tmp_path):
    assert eval_schedule(spec(2))["metric_for_best_model"] == "eval_loss"
    assert eval_schedule(spec(2))["greater_is_better"] is False
    stopped = run(tiny_model_dir, spec(2), tmp_path / "patience")
    assert stopped <= 4, f"early stopping did not stop the run: {stopped} of {MAX_STEPS} steps"
    assert run(tiny_model_dir, spec(None), tmp_path / "none") == MAX_STEPS  # no patience: every step


@pytest.mark.parametrize("method, metric, higher", [("dpo", "eval_loss", False), ("grpo", "eval_reward", True)])
def test_every_method_stops_on_its_validation_metric(method, metric, higher):
    args = eval_schedule(spec(3, method))
    assert (args["metric_for_best_model"], args["greater_is_better"]) == (metric, higher)
    assert [type(c).__name__ for c in early_stopping(spec(3, method))] == ["EarlyStoppingCallback"]
    assert early_stopping(spec(None, method)) == [] and "metric_for_best_model" not in eval_schedule(spec(None, method))
