"""Direct preference optimization with TRL's ``DPOTrainer`` on one Ray Train worker.

Preference rows (prompt, chosen, rejected) become TRL's conversational preference format, so the
chat template is applied as at inference. The reference model is the base model itself: with LoRA
and QLoRA, TRL computes reference log-probs with the adapter disabled (no second copy in memory);
with ``adapter: full`` it loads a frozen copy of the base.
"""

from __future__ import annotations

from typing import Any

from studio.train import common
from studio.train.worker import WorkerJob


def preference_row(row: dict[str, Any]) -> dict[str, Any]:
    return {"prompt": [{"role": "user", "content": row["prompt"]}],
            "chosen": [{"role": "assistant", "content": row["chosen"]}],
            "rejected": [{"role": "assistant", "content": row["rejected"]}]}


def train_loop_per_worker(config: dict[str, Any]) -> None:
    from trl import DPOConfig, DPOTrainer

    job = WorkerJob(**config)
    spec = job.train_spec

    tokenizer = common.load_tokenizer(job.base_model)
    rows = common.load_rows(job)
    dataset = common.to_dataset([preference_row(r) for r in rows])
    eval_rows = common.load_eval_rows(job)  # eval: eval_loss and eval_rewards/* (accuracies, margins, ...)
    eval_dataset = common.to_dataset([preference_row(r) for r in eval_rows]) if eval_rows is not None else None

    args = common.training_args(
        DPOConfig, job, len(rows),
        max_length=spec.hyper.max_seq_length,
        beta=spec.dpo.beta,
        loss_type=[spec.dpo.loss_type],
    )
    model, peft_config, quantization_config = common.policy(job)
    trainer = DPOTrainer(
        model=model,
        # Fresh LoRA: the reference is the base (adapter disabled); init_adapter: a frozen copy of
        # that adapter (TRL's "ref" adapter); full: TRL loads a frozen copy of the base.
        ref_model=None,
        args=args,
        train_dataset=dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        peft_config=peft_config,
        quantization_config=quantization_config,
    )
    common.fit(trainer, job)
