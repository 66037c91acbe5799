"""Group relative policy optimization with TRL's ``GRPOTrainer`` on one Ray Train worker, rollouts
sampled by the job's vLLM actor (``rollout.py``).

Read top to bottom: data → rewards → rollouts → trainer → fit. TRL keeps everything GRPO is
(group advantages, the clipped loss, KL, reward weighting, logging); we plug in only where the
completions come from, through TRL's ``rollout_func`` hook: the trainer calls it with this rank's
prompts (each repeated ``num_generations`` times in a row) and gets back prompt ids, completion ids
and sampling logprobs. Without a rollout actor (``grpo.rollout.engine: hf``, or vLLM unavailable,
which the driver has already said loudly) TRL samples with transformers ``generate`` itself.

Rows: a prompt_completion row gives the prompt (one user turn) and its ``reference`` answer; a chat
row gives the turns before its last assistant turn and that turn as the reference (no assistant turn:
a prompt without a reference, for rewards that need none).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from studio.train import common
from studio.train.rewards import build_reward_funcs
from studio.train.rollout import NAMESPACE, adapter_id
from studio.train.worker import WorkerJob


def grpo_row(row: dict[str, Any]) -> dict[str, Any]:
    if "messages" in row:
        msgs = list(row["messages"])
        last = max((i for i, m in enumerate(msgs) if m["role"] == "assistant"), default=None)
        if last is None:
            return {"prompt": msgs, "reference": None}
        return {"prompt": msgs[:last], "reference": msgs[last]["content"]}
    return {"prompt": [{"role": "user", "content": row["prompt"]}], "reference": row["completion"]}


def policy_files(trainer) -> dict[str, bytes]:
    """The policy's current LoRA as the files of a PEFT directory (what vLLM loads)."""
    model = trainer.accelerator.unwrap_model(trainer.model)
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        return {f.name: f.read_bytes() for f in Path(tmp).iterdir() if f.name.startswith("adapter_")}


def run_lengths(items: list[list[int]]) -> tuple[list[list[int]], list[int]]:
    """Consecutive equal prompts → (each once, how many times): TRL's sampler repeats every prompt
    ``num_generations`` times in a row, and vLLM samples ``n`` completions of one prompt at once."""
    unique: list[list[int]] = []
    counts: list[int] = []
    for ids in items:
        if unique and unique[-1] == ids:
            counts[-1] += 1
        else:
            unique.append(ids)
            counts.append(1)
    return unique, counts


class VLLMRollout:
    """TRL ``rollout_func``: completions from the job's vLLM actor, with the policy of this step."""

    def __init__(self, actor_name: str, job: WorkerJob):
        import ray

        self.actor = ray.get_actor(actor_name, namespace=NAMESPACE)
        g = job.train_spec.grpo
        self.sampling = {"max_tokens": g.max_completion_length, "temperature": g.temperature, "top_p": g.top_p}
        self.version: int | None = None

    def __call__(self, prompts: list[Any], trainer) -> dict[str, Any]:
        import ray

        step = trainer.state.global_step
        if step != self.version:
            if trainer.accelerator.is_main_process:
                ray.get(self.actor.load_policy.remote(step, policy_files(trainer)))
            trainer.accelerator.wait_for_everyone()  # every rank samples from the new version
            self.version = step
        tokenizer = trainer.processing_class
        prompt_ids = [tokenizer.apply_chat_template(p, add_generation_prompt=True, tokenize=True, return_dict=False)
                      if isinstance(p, list) else tokenizer(p, add_special_tokens=False)["input_ids"]
                      for p in prompts]
        unique, counts = run_lengths(prompt_ids)
        out = ray.get(self.actor.generate.remote(unique, counts, step, self.sampling))
        if out["adapter_id"] != adapter_id(step):
            raise RuntimeError(f"rollouts came from {out['adapter_id']}, not {adapter_id(step)}")
        metrics = trainer._metrics["train"]  # TRL averages these per logging step (loss, reward, ...)
        metrics["rollout/tokens_per_s"].append(out["tokens"] / max(out["seconds"], 1e-9))
        metrics["rollout/policy_step"].append(float(step))
        return {"prompt_ids": prompt_ids, "completion_ids": out["completion_ids"], "logprobs": out["logprobs"]}


def train_loop_per_worker(config: dict[str, Any]) -> None:
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")  # rollout_func is marked experimental in TRL 1.16
    from trl import GRPOConfig, GRPOTrainer

    job = WorkerJob(**config)
    spec = job.train_spec
    g = spec.grpo

    tokenizer = common.load_tokenizer(job.base_model)
    rows = common.load_rows(job)
    dataset = common.to_dataset([grpo_row(r) for r in rows])
    reward_funcs, weights = build_reward_funcs(g.rewards, job.job_id)

    if job.rollout_actor:
        rollout_func = VLLMRollout(job.rollout_actor, job)
    else:
        print("[studio.train.grpo] WARNING: no vLLM rollout actor: rollouts use HF generate in the trainer "
              "(slow fallback)", flush=True)
        rollout_func = None

    args = common.training_args(
        GRPOConfig, job, len(rows) * g.num_generations,
        num_generations=g.num_generations,
        max_completion_length=g.max_completion_length,
        temperature=g.temperature,
        top_p=g.top_p,
        beta=g.beta,
        reward_weights=weights,
        log_completions=False,
    )
    model, peft_config, quantization_config = common.policy(job)  # init_adapter: continue that adapter
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=reward_funcs,
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=peft_config,
        quantization_config=quantization_config,
        rollout_func=rollout_func,
    )
    common.fit(trainer, job)
