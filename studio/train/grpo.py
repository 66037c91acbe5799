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
from typing import Any

from studio.train import common
from studio.train.grpo_sync import lora_factors
from studio.train.rewards import build_reward_funcs
from studio.train.rollout import NAMESPACE, RolloutEngineError
from studio.train.worker import WorkerJob


def grpo_row(row: dict[str, Any]) -> dict[str, Any]:
    if "messages" in row:
        msgs = list(row["messages"])
        last = max((i for i, m in enumerate(msgs) if m["role"] == "assistant"), default=None)
        if last is None:
            return {"prompt": msgs, "reference": None}
        return {"prompt": msgs[:last], "reference": msgs[last]["content"]}
    return {"prompt": [{"role": "user", "content": row["prompt"]}], "reference": row["completion"]}


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

        self.actor_name = actor_name
        try:
            self.actor = ray.get_actor(actor_name, namespace=NAMESPACE)
        except ValueError:
            raise RolloutEngineError(f"the GRPO rollout engine ({actor_name}) is gone: it died earlier in this "
                                     "attempt; the job's retry starts a new one") from None
        g = job.train_spec.grpo
        self.sampling = {"max_tokens": g.max_completion_length, "temperature": g.temperature, "top_p": g.top_p}
        self.timeout_s = g.rollout.step_timeout_s
        self.version: int | None = None

    def call(self, what: str, ref):
        """``ray.get`` of an actor call; a dead, failed or silent engine becomes one RolloutEngineError."""
        import ray

        try:
            return ray.get(ref, timeout=self.timeout_s)
        except RolloutEngineError:
            raise
        except ray.exceptions.GetTimeoutError:
            raise RolloutEngineError(f"the GRPO rollout engine ({self.actor_name}) did not finish {what} in "
                                     f"{self.timeout_s:g} s (grpo.rollout.step_timeout_s)") from None
        except ray.exceptions.RayError as e:
            last = str(e).strip().splitlines()[-1] if str(e).strip() else ""
            raise RolloutEngineError(f"the GRPO rollout engine ({self.actor_name}) died while {what}: "
                                     f"{type(e).__name__}: {last}"[:1000]) from None

    def __call__(self, prompts: list[Any], trainer) -> dict[str, Any]:
        step = trainer.state.global_step
        if step != self.version:
            if trainer.accelerator.is_main_process:
                model = trainer.accelerator.unwrap_model(trainer.model)
                self.call(f"loading policy step {step}", self.actor.load_policy.remote(step, lora_factors(model)))
            trainer.accelerator.wait_for_everyone()  # every rank samples from the new weights
            self.version = step
        tokenizer = trainer.processing_class
        prompt_ids = [tokenizer.apply_chat_template(p, add_generation_prompt=True, tokenize=True, return_dict=False)
                      if isinstance(p, list) else tokenizer(p, add_special_tokens=False)["input_ids"]
                      for p in prompts]
        unique, counts = run_lengths(prompt_ids)
        out = self.call(f"sampling step {step}", self.actor.generate.remote(unique, counts, step, self.sampling))
        if out["policy_step"] != step:
            raise RuntimeError(f"rollouts came from policy step {out['policy_step']}, not {step}")
        # TRL averages these per logging step (loss, reward, ...); an evaluation's go to its eval_* metrics.
        metrics = trainer._metrics["train" if trainer.model.training else "eval"]
        metrics["rollout/tokens_per_s"].append(out["tokens"] / max(out["seconds"], 1e-9))
        metrics["rollout/policy_step"].append(float(step))
        return {"prompt_ids": prompt_ids, "completion_ids": out["completion_ids"], "logprobs": out["logprobs"]}


def share_cores_with_rollouts() -> None:
    """On CPU the trainer ranks and the rollout engine take turns: while the engine samples, every rank
    waits for it; while the ranks train, the engine idles. So the ranks of a node split all its cores
    between them (Ray gives each only ``cpus_per_worker`` OpenMP threads, 1 by default)."""
    import ray.train
    import torch

    cores = len(os.sched_getaffinity(0))
    ranks = ray.train.get_context().get_local_world_size()
    torch.set_num_threads(max(1, cores // ranks))
    print(f"[studio.train.grpo] rank {ray.train.get_context().get_world_rank()}: {torch.get_num_threads()} torch "
          f"threads ({cores} cores, {ranks} trainer ranks on this node)", flush=True)


def train_loop_per_worker(config: dict[str, Any]) -> None:
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")  # rollout_func is marked experimental in TRL 1.16
    from trl import GRPOConfig, GRPOTrainer

    job = WorkerJob(**config)
    spec = job.train_spec
    g = spec.grpo
    if not spec.resources.use_gpu:
        share_cores_with_rollouts()

    tokenizer = common.load_tokenizer(job.base_model)
    rows = common.load_rows(job)
    dataset = common.to_dataset([grpo_row(r) for r in rows])
    # eval: held-out prompts, each sampled num_generations times with the policy of that step and
    # scored by the same rewards (eval_reward, eval_rewards/<func>/mean, ...; TRL's eval loop).
    eval_rows = common.load_eval_rows(job)
    eval_dataset = common.to_dataset([grpo_row(r) for r in eval_rows]) if eval_rows is not None else None
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
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        peft_config=peft_config,
        quantization_config=quantization_config,
        rollout_func=rollout_func,
    )
    common.fit(trainer, job)
