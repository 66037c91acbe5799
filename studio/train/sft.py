"""Supervised fine-tuning with TRL's ``SFTTrainer`` on one Ray Train worker (run by ``run.py``).

Read top to bottom: data → trainer → fit. Loss is on the answer only:
- prompt_completion rows become TRL's conversational prompt/completion format (the prompt as a user
  turn, the completion as the assistant turn), so the chat template is applied exactly as at
  inference, and ``completion_only_loss`` masks the prompt;
- chat rows stay ``messages`` with ``assistant_only_loss`` when the chat template marks assistant
  text with ``{% generation %}``; without those markers (most hub templates) the last assistant turn
  becomes the completion of a prompt/completion row.
"""

from __future__ import annotations

import logging
from typing import Any

from studio.train import common
from studio.train.worker import WorkerJob

log = logging.getLogger(__name__)


def prompt_completion_row(row: dict[str, Any]) -> dict[str, Any]:
    return {"prompt": [{"role": "user", "content": row["prompt"]}],
            "completion": [{"role": "assistant", "content": row["completion"]}]}


def last_turn_row(row: dict[str, Any]) -> dict[str, Any]:
    msgs = row["messages"]
    last = max(i for i, m in enumerate(msgs) if m["role"] == "assistant")
    return {"prompt": msgs[:last], "completion": [msgs[last]]}


def build_dataset(rows: list[dict[str, Any]], tokenizer):
    """Rows of a prompt_completion or chat snapshot → (HF Dataset, assistant_only_loss)."""
    if rows and "messages" in rows[0]:
        rows = [r for r in rows if any(m["role"] == "assistant" for m in r["messages"])]
        if common.has_generation_markers(tokenizer):
            return common.to_dataset([{"messages": r["messages"]} for r in rows]), True
        log.warning("the chat template has no {% generation %} markers: training on the last assistant turn")
        return common.to_dataset([last_turn_row(r) for r in rows]), False
    return common.to_dataset([prompt_completion_row(r) for r in rows]), False


def train_loop_per_worker(config: dict[str, Any]) -> None:
    from trl import SFTConfig, SFTTrainer

    job = WorkerJob(**config)
    spec = job.train_spec

    tokenizer = common.load_tokenizer(job.base_model)
    rows = common.load_rows(job)
    dataset, assistant_only = build_dataset(rows, tokenizer)
    eval_rows = common.load_eval_rows(job)  # eval: validation rows, shaped as the training rows
    eval_dataset = build_dataset(eval_rows, tokenizer)[0] if eval_rows is not None else None

    args = common.training_args(
        SFTConfig, job, len(rows),
        max_length=spec.hyper.max_seq_length,
        completion_only_loss=True if not assistant_only else None,
        assistant_only_loss=assistant_only,
    )
    model, peft_config, quantization_config = common.policy(job)  # init_adapter: continue that adapter
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        peft_config=peft_config,
        quantization_config=quantization_config,
    )
    common.fit(trainer, job)
