"""What each runner trains on, checked on TRL's own tokenized rows (no Ray): SFT's loss covers the
answer only, for prompt_completion rows and for chat rows (assistant_only_loss via the template's
{% generation %} markers, or the last assistant turn when a template has none)."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import AutoTokenizer
from trl import SFTConfig, SFTTrainer

from studio.train import sft
from studio.train.common import deepspeed_config, save_schedule
from studio.train.evaluate import rows_to_examples
from studio.train.spec import TrainSpec

ROW = {"prompt": "reverse: 6 0 4 8", "completion": "8 4 0 6"}
CHAT = {"messages": [{"role": "system", "content": "Answer with digits."}, {"role": "user", "content": ROW["prompt"]},
                     {"role": "assistant", "content": ROW["completion"]}]}


@pytest.fixture
def tokenizer(tiny_model_dir: Path):
    return AutoTokenizer.from_pretrained(tiny_model_dir)


def trained_text(tiny_model_dir: Path, tokenizer, rows, tmp_path: Path) -> str:
    """The tokens that carry loss in TRL's first prepared example, decoded."""
    dataset, assistant_only = sft.build_dataset(rows, tokenizer)
    args = SFTConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, report_to="none", max_length=64,
                     assistant_only_loss=assistant_only, completion_only_loss=None if assistant_only else True)
    trainer = SFTTrainer(model=str(tiny_model_dir), args=args, train_dataset=dataset, processing_class=tokenizer)
    example = trainer.train_dataset[0]
    return tokenizer.decode([t for t, label in zip(example["input_ids"], example["labels"], strict=True)
                             if label != -100])


def test_prompt_completion_rows_train_on_the_completion_only(tiny_model_dir, tokenizer, tmp_path):
    assert trained_text(tiny_model_dir, tokenizer, [ROW], tmp_path).strip() == "8 4 0 6<|im_end|>"


def test_chat_rows_train_on_assistant_turns_only(tiny_model_dir, tokenizer, tmp_path):
    assert sft.build_dataset([CHAT], tokenizer)[1] is True  # the tiny template has {% generation %}
    assert trained_text(tiny_model_dir, tokenizer, [CHAT], tmp_path).strip() == "8 4 0 6<|im_end|>"


def test_chat_rows_without_generation_markers_train_on_the_last_turn(tiny_model_dir, tokenizer, tmp_path):
    tokenizer.chat_template = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + "
                               "'<|im_end|>\\n' }}{% endfor %}{% if add_generation_prompt %}"
                               "{{ '<|im_start|>assistant\\n' }}{% endif %}")
    dataset, assistant_only = sft.build_dataset([CHAT], tokenizer)
    assert assistant_only is False and dataset[0]["completion"] == [CHAT["messages"][-1]]
    assert trained_text(tiny_model_dir, tokenizer, [CHAT], tmp_path).strip() == "8 4 0 6<|im_end|>"


def test_evaluation_prompts_match_training_prompts():
    assert rows_to_examples([ROW]) == [([{"role": "user", "content": ROW["prompt"]}], ROW["completion"])]
    assert rows_to_examples([CHAT]) == [(CHAT["messages"][:2], ROW["completion"])]


def spec(**fields) -> TrainSpec:
    return TrainSpec.model_validate({"name": "t", "method": "sft", "base_model": "x", "data": {"dataset": "d"},
                                     **fields})


def test_checkpoint_schedule():
    assert save_schedule(spec(checkpoint={"every_steps": 20}), 2000) == {"save_strategy": "steps", "save_steps": 20}
    assert save_schedule(spec(), 2000) == {"save_strategy": "epoch"}
    # 2000 rows over 2 workers x 32 per step = 32 steps per epoch; every 5 epochs = 160 steps.
    s = spec(checkpoint={"every_epochs": 5}, hyper={"batch_size": 32}, resources={"num_workers": 2})
    assert save_schedule(s, 2000) == {"save_strategy": "steps", "save_steps": 160}


def test_deepspeed_config_from_the_spec():
    assert deepspeed_config(spec()) is None
    ds = deepspeed_config(spec(deepspeed={"stage": 2, "offload_optimizer": True}))
    assert ds["zero_optimization"]["stage"] == 2
    assert ds["zero_optimization"]["offload_optimizer"]["device"] == "cpu"
    assert ds["train_micro_batch_size_per_gpu"] == "auto"  # filled from TrainingArguments by transformers
    assert deepspeed_config(spec(deepspeed={"config": {"zero_optimization": {"stage": 3}}})) == {
        "zero_optimization": {"stage": 3}}
