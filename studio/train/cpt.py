"""Continued pre-training: causal language modeling on raw text rows, on one Ray Train worker.

TRL's ``SFTTrainer`` on a language-modeling dataset (a ``text`` column) is plain next-token
prediction on every token; rows are packed into ``max_seq_length`` blocks ("wrapped": documents are
concatenated and cut, the usual pre-training layout, which needs no FlashAttention).
"""

from __future__ import annotations

from typing import Any

from studio.train import common
from studio.train.worker import WorkerJob


def train_loop_per_worker(config: dict[str, Any]) -> None:
    from trl import SFTConfig, SFTTrainer

    job = WorkerJob(**config)
    spec = job.train_spec

    tokenizer = common.load_tokenizer(job.base_model)
    rows = common.load_rows(job)
    dataset = common.to_dataset([{"text": r["text"]} for r in rows])
    eval_rows = common.load_eval_rows(job)
    eval_dataset = common.to_dataset([{"text": r["text"]} for r in eval_rows]) if eval_rows is not None else None

    args = common.training_args(
        SFTConfig, job, len(rows),
        dataset_text_field="text",
        max_length=spec.hyper.max_seq_length,
        packing=True,
        packing_strategy="wrapped",
        completion_only_loss=False,
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
