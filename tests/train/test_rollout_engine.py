"""The GRPO rollout engine, started the way the job's driver starts it, on the package's Ray head:
each policy update lands in place and changes its output exactly as the trained policy does —
greedy tokens equal to HF ``generate`` of the same weights (base + LoRA), logprobs within float
tolerance — and a dead engine fails the next step with an error naming the rollout engine
instead of hanging."""

from __future__ import annotations

import signal
import time

import psutil
import pytest
import ray
import torch

from studio.train.grpo_sync import lora_factors
from studio.train.rollout import RolloutEngineError, start_rollout_actor
from studio.train.spec import TrainSpec

from .conftest import RayHead

pytestmark = pytest.mark.slow

NEW_TOKENS = 12
PROMPTS = ["reverse: 6 0 4 8", "reverse: 1 2 3", "sort: 9 5 7", "hello world"]


@pytest.fixture(scope="module")
def engine(ray_head: RayHead, tiny_model_dir):
    spec = TrainSpec.model_validate({
        "name": "rollout-test", "method": "grpo", "base_model": str(tiny_model_dir), "data": {"dataset": "x"},
        "grpo": {"rollout": {"dtype": "float32", "max_model_len": 128, "max_num_seqs": 16}}})
    ray.init(address=ray_head.address, logging_level="ERROR")
    actor = None
    try:
        actor = start_rollout_actor(spec, str(tiny_model_dir), "grpo-rollout-test", say=print)
        assert actor is not None, "vLLM did not start: the rollout engine fell back to HF generate"
        yield actor
    finally:
        if actor is not None:
            ray.kill(actor.handle)
        ray.shutdown()
        ray_head.wait_idle()


@pytest.fixture(scope="module")
def policy(tiny_model_dir):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32),
                           LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", task_type="CAUSAL_LM")).eval()
    tok = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    ids = [tok.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True, tokenize=True,
                                   return_dict=False) for p in PROMPTS]
    return model, ids


def hf_greedy(model, prompt_ids: list[list[int]]) -> tuple[list[list[int]], list[list[float]]]:
    """Greedy tokens and their logprobs (of the raw logits) from transformers, one prompt at a time,
    never stopping at EOS (as vLLM with ignore_eos)."""
    from transformers import GenerationConfig

    config = GenerationConfig(do_sample=False, max_new_tokens=NEW_TOKENS, eos_token_id=None, pad_token_id=0,
                              output_logits=True, return_dict_in_generate=True)
    tokens, logprobs = [], []
    with torch.no_grad():
        for ids in prompt_ids:
            out = model.generate(input_ids=torch.tensor([ids]), generation_config=config)
            new = out.sequences[0, len(ids):].tolist()
            steps = [torch.log_softmax(step[0].float(), -1) for step in out.logits]
            tokens.append(new)
            logprobs.append([float(s[t]) for s, t in zip(steps, new, strict=True)])
    return tokens, logprobs


def engine_greedy(actor, step: int, prompt_ids: list[list[int]]) -> dict:
    sampling = {"max_tokens": NEW_TOKENS, "temperature": 0.0, "ignore_eos": True, "logprobs": 0}
    return ray.get(actor.handle.generate.remote(prompt_ids, [1] * len(prompt_ids), step, sampling), timeout=120)


def assert_same(engine_out: dict, hf: tuple[list[list[int]], list[list[float]]]) -> None:
    tokens, logprobs = hf
    assert engine_out["completion_ids"] == tokens
    for ours, theirs in zip(engine_out["logprobs"], logprobs, strict=True):
        assert ours == pytest.approx(theirs, abs=2e-3)


def test_in_place_policy_updates_match_hf_generate_of_the_same_weights(engine, policy):
    model, prompt_ids = policy
    # Step 0: a fresh LoRA (B = 0) is the base model.
    ray.get(engine.handle.load_policy.remote(0, lora_factors(model)), timeout=120)
    base = engine_greedy(engine, 0, prompt_ids)
    assert base["policy_step"] == 0
    assert_same(base, hf_greedy(model, prompt_ids))

    # Two "trained" policies in turn, pushed into the same warm engine.
    for step, scale in ((1, 0.05), (2, 0.08)):
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, scale)
        loaded = ray.get(engine.handle.load_policy.remote(step, lora_factors(model)), timeout=120)
        assert loaded["loaded"] and loaded["policy_step"] == step
        out = engine_greedy(engine, step, prompt_ids)
        assert out["completion_ids"] != base["completion_ids"], "the update did not change the engine's output"
        assert_same(out, hf_greedy(model, prompt_ids))

    with pytest.raises(RuntimeError, match="holds policy step 2, not 1"):  # never sample with stale weights
        engine_greedy(engine, 1, prompt_ids)


def test_a_dead_engine_fails_the_step_naming_the_rollout_engine(engine, policy, ray_head: RayHead):
    """Runs last in the module: it kills the engine's processes (EngineCore and its worker)."""
    _, prompt_ids = policy
    [actor] = ray_head.state("actors", ("class_name", "=", "RolloutEngine"), ("state", "=", "ALIVE"))
    engine_procs = psutil.Process(int(actor["pid"])).children(recursive=True)
    assert engine_procs, "the rollout actor has no engine processes"
    for p in engine_procs:
        p.send_signal(signal.SIGKILL)
    t0 = time.monotonic()
    with pytest.raises(RolloutEngineError, match=r"the GRPO rollout engine \(grpo-rollout-test\) failed while "
                                                 r"sampling step 2"):
        engine_greedy(engine, 2, prompt_ids)
    assert time.monotonic() - t0 < 60  # an error, not a hang
