"""GRPO rollout throughput: the vLLM rollout actor (``studio.train.rollout.RolloutEngine``) vs HF
``generate`` (TRL's fallback path), same tiny model, same LoRA policy, same prompts, in one run.

    flock /tmp/studio-heavy.lock .venv/bin/python scripts/bench_grpo.py [--prompts 32] [--rounds 5] \
        [--out bench-results/grpo_rollout.json]

One round = what a GRPO step asks of its rollout engine: ``--prompts`` digit-reversal prompts
(chat-templated) × ``--generations`` sampled completions of exactly ``--max-tokens`` tokens
(temperature 1; EOS ignored on both sides, so both produce the same number of tokens).
- hf: ``PeftModel.generate`` on the prompts repeated ``generations`` times, left-padded, as TRL's
  ``_generate_single_turn`` does without vLLM, with torch's default threads in this process;
- vllm: the real actor in a private local Ray (one fresh engine per configuration in ``VARIANTS``;
  "studio" is the GRPO default): ``load_policy`` (a new ``policy-step-N`` adapter id,
  as every GRPO step does) + ``generate`` (n completions per prompt), timed from the caller's side,
  Ray round trips included. The engine's start-up is reported separately (paid once per job).
tokens/s = completion tokens / wall seconds, median over ``--rounds`` after one warm-up round.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def make_policy(work: Path, r: int = 8):
    """The tiny model and a LoRA policy whose B matrices are non-zero (a trained-looking adapter)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from studio.models.tiny import make_tiny

    model_dir = make_tiny(work / "tiny")
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    peft = get_peft_model(base, LoraConfig(r=r, lora_alpha=2 * r, target_modules="all-linear", task_type="CAUSAL_LM"))
    with torch.no_grad():
        for name, p in peft.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.02)
    adapter_dir = work / "policy"
    peft.save_pretrained(str(adapter_dir))
    return model_dir, adapter_dir


def prompt_token_ids(model_dir: Path, n: int) -> list[list[int]]:
    from transformers import AutoTokenizer

    from studio.models.tiny import reversal_example

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    rng = random.Random(0)
    return [tok.apply_chat_template([{"role": "user", "content": reversal_example(rng)[0]}],
                                    add_generation_prompt=True, tokenize=True, return_dict=False) for _ in range(n)]


def bench_hf(model_dir: Path, adapter_dir: Path, prompts: list[list[int]], gens: int, max_tokens: int,
             rounds: int) -> dict:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32),
                                      str(adapter_dir)).eval()
    rows = [ids for ids in prompts for _ in range(gens)]  # TRL's sampler repeats each prompt
    width = max(len(r) for r in rows)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    input_ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows])
    attention = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    times, tokens = [], 0
    for i in range(rounds + 1):
        t0 = time.perf_counter()
        with torch.no_grad():
            out = model.generate(input_ids=input_ids, attention_mask=attention, do_sample=True, temperature=1.0,
                                 max_new_tokens=max_tokens, min_new_tokens=max_tokens, pad_token_id=pad)
        if i:  # round 0 warms up
            times.append(time.perf_counter() - t0)
        tokens = (out.shape[1] - width) * out.shape[0]
    return {"completion_tokens_per_round": tokens, "round_s": times,
            "tokens_per_s": tokens / statistics.median(times), "torch_threads": torch.get_num_threads()}


# vLLM configurations measured in the same run; "studio" is what GRPO jobs use by default.
VARIANTS = {
    "studio": ({}, {}),
    "with_logprobs_and_text": ({}, {"logprobs": 0, "detokenize": True}),
    "reserved_cpus_0": ({"reserved_cpus": 0}, {}),
}


def bench_vllm(model_dir: Path, adapter_dir: Path, prompts: list[list[int]], gens: int, max_tokens: int,
               rounds: int, cfg_over: dict, sampling_over: dict) -> dict:
    import ray

    from studio.train.rollout import RolloutEngine
    from studio.train.spec import RolloutSpec

    ray.init(address="local", num_cpus=8, include_dashboard=False, logging_level="ERROR")
    try:
        cfg = RolloutSpec(dtype="float32", max_model_len=256, max_num_seqs=256).model_dump(mode="json") | cfg_over
        actor = ray.remote(RolloutEngine).options(num_cpus=1).remote(str(model_dir), cfg, 8)
        t0 = time.perf_counter()
        status = ray.get(actor.start.remote())
        if not status["ok"]:
            raise SystemExit(status["reason"])
        start_s = time.perf_counter() - t0
        files = {f.name: f.read_bytes() for f in adapter_dir.iterdir() if f.name.startswith("adapter_")}
        sampling = {"max_tokens": max_tokens, "temperature": 1.0, "ignore_eos": True} | sampling_over
        times, gen_times, tokens = [], [], 0
        for version in range(rounds + 1):
            t0 = time.perf_counter()
            ray.get(actor.load_policy.remote(version, files))  # a new adapter id, as every GRPO step
            t1 = time.perf_counter()
            out = ray.get(actor.generate.remote(prompts, [gens] * len(prompts), version, sampling))
            t2 = time.perf_counter()
            if version:
                times.append(t2 - t0)
                gen_times.append(t2 - t1)
            tokens = out["tokens"]
        ray.get(actor.shutdown.remote())
        return {"engine_config": cfg, "sampling": sampling, "engine_start_s": start_s,
                "completion_tokens_per_round": tokens, "round_s": times, "generate_only_s": gen_times,
                "tokens_per_s": tokens / statistics.median(times),
                "tokens_per_s_generate_only": tokens / statistics.median(gen_times)}
    finally:
        ray.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--generations", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=REPO / "bench-results" / "grpo_rollout.json")
    args = parser.parse_args()
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

    with tempfile.TemporaryDirectory(prefix="bench-grpo-") as tmp:
        model_dir, adapter_dir = make_policy(Path(tmp))
        prompts = prompt_token_ids(model_dir, args.prompts)
        load = {"before": os.getloadavg()[0]}
        hf = bench_hf(model_dir, adapter_dir, prompts, args.generations, args.max_tokens, args.rounds)
        load["after_hf"] = os.getloadavg()[0]
        variants = {}
        for label, (cfg_over, sampling_over) in VARIANTS.items():
            variants[label] = bench_vllm(model_dir, adapter_dir, prompts, args.generations, args.max_tokens,
                                         args.rounds, cfg_over, sampling_over)
            load[f"after_vllm_{label}"] = os.getloadavg()[0]
        vllm = variants["studio"]

    result = {
        "benchmark": "grpo_rollout_tokens_per_s",
        "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "loadavg_1m": load},
        "workload": {"model": "studio tiny (make_tiny), float32", "adapter": "LoRA r=8 all-linear",
                     "prompts": args.prompts, "generations_per_prompt": args.generations,
                     "tokens_per_completion": args.max_tokens, "rounds": args.rounds},
        "hf_generate": hf,
        "vllm_actor": variants,
        "ratio_vllm_over_hf": vllm["tokens_per_s"] / hf["tokens_per_s"],
        "ratio_by_variant": {k: v["tokens_per_s"] / hf["tokens_per_s"] for k, v in variants.items()},
        "ratio_vllm_over_hf_generate_only": vllm["tokens_per_s_generate_only"] / hf["tokens_per_s"],
        "goal_ratio": 3.0,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("ratio_vllm_over_hf", "ratio_vllm_over_hf_generate_only")}
                     | {"hf_tokens_per_s": hf["tokens_per_s"], "vllm_tokens_per_s": vllm["tokens_per_s"]}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
