"""GRPO reward functions as TRL calls them (chat completions, the reference column), and recipes whose
rewards cannot be built fail with a message naming the reward and the fix."""

from __future__ import annotations

import os
import sys

import pytest

from studio.errors import StudioError
from studio.train.grpo import grpo_row, run_lengths
from studio.train.rewards import build_reward_funcs, import_callable, parse_score, positional_overlap
from studio.train.spec import RewardSpec, TrainSpec


def chat(text: str) -> list[dict[str, str]]:
    return [{"role": "assistant", "content": text}]


def build(**fields):
    funcs, weights = build_reward_funcs([RewardSpec.model_validate(fields)])
    return funcs[0], weights[0]


def test_exact_match_compares_stripped_text_with_the_reference():
    f, weight = build(type="exact_match", weight=2.0)
    got = f(prompts=[[]] * 3, completions=[chat(" 8 4 0 6\n"), chat("8 4 0"), chat("1")],
            completion_ids=[[]] * 3, reference=["8 4 0 6", "8 4 0 6", None])
    assert got == [1.0, 0.0, None]  # None: a row without a reference is not scored
    assert (f.__name__, weight) == ("exact_match", 2.0)


def test_regex_must_match_the_whole_completion():
    f, _ = build(type="regex", pattern=r"\d( \d)*")
    assert f(completions=[chat("1 2 3"), chat("1 2 x"), "4"]) == [1.0, 0.0, 1.0]


def test_json_schema_validity():
    f, _ = build(type="json_schema", schema={"type": "object", "required": ["answer"],
                                             "properties": {"answer": {"type": "integer"}}})
    assert f(completions=[chat('{"answer": 3}'), chat('{"answer": "3"}'), chat("not json"), chat("{}")]) == \
        [1.0, 0.0, 0.0, 0.0]


def test_python_callable_by_import_path_gets_the_columns():
    f, _ = build(type="python", callable="studio.train.rewards:positional_overlap", name="overlap")
    assert f.__name__ == "overlap"
    got = f(prompts=[[]] * 2, completions=[chat("8 4 1 6"), chat("8")], completion_ids=[[]] * 2,
            reference=["8 4 0 6", "8 4 0 6"])
    assert got == [0.75, 0.25]
    assert positional_overlap([chat("1 2")], reference=[None]) == [None]


@pytest.mark.parametrize(("path", "needle"), [
    ("no_such_module_xyz:fn", "module 'no_such_module_xyz' cannot be imported"),
    ("studio.train.rewards:no_such_fn", "has no attribute 'no_such_fn'"),
    ("studio.train.rewards", "is not an import path"),
    ("studio.train.rewards:DEFAULT_JUDGE_PROMPT", "is a str, not a function"),
])
def test_bad_import_path_is_a_clear_error(path: str, needle: str, monkeypatch):
    # Allowed by the admin, so what is checked is the import itself.
    monkeypatch.setenv("STUDIO_REWARD_ALLOWLIST", "no_such_module_xyz:*, studio.train.rewards:*")
    with pytest.raises(StudioError, match=needle) as e:
        build(type="python", callable=path)
    assert path in str(e.value) and "Fix:" in str(e.value)
    with pytest.raises(StudioError):
        import_callable(path)


def test_bad_regex_and_bad_schema_and_duplicate_names():
    with pytest.raises(StudioError, match="does not compile"):
        build(type="regex", pattern="(")
    with pytest.raises(StudioError, match="not a valid JSON schema"):
        build(type="json_schema", schema={"type": "no-such-type"})
    with pytest.raises(StudioError, match="both named 'exact_match'"):
        build_reward_funcs([RewardSpec(type="exact_match"), RewardSpec(type="exact_match")])


def test_reward_fields_are_required_by_type_and_unknown_fields_refused():
    for fields, needle in [({"type": "regex"}, "needs 'pattern'"), ({"type": "python"}, "needs 'callable'"),
                           ({"type": "json_schema"}, "needs 'schema'"), ({"type": "judge"}, "needs 'judge_model'"),
                           ({"type": "exact_match", "colour": 1}, "colour")]:
        with pytest.raises(ValueError, match=needle):
            RewardSpec.model_validate(fields)


def test_judge_reward_builds_from_config_and_parses_scores():
    """Config only: calling the judge needs a running gateway (not started by this unit test)."""
    f, _ = build(type="judge", judge_model="tiny", judge_prompt="Score 0-10.")
    assert (f.__name__, f.model, f.instructions) == ("judge", "tiny", "Score 0-10.")
    assert [parse_score(t) for t in ("7", "Score: 10/10", "15", "none")] == [0.7, 1.0, 1.0, None]


def test_grpo_spec_needs_whole_groups_per_step():
    base = {"name": "g", "method": "grpo", "base_model": "m", "data": {"dataset": "d"}}
    with pytest.raises(ValueError, match="not a multiple of grpo.num_generations"):
        TrainSpec.model_validate({**base, "hyper": {"batch_size": 6}, "resources": {"num_workers": 1},
                                  "grpo": {"num_generations": 4}})
    spec = TrainSpec.model_validate(base)
    assert spec.grpo.rollout.engine == "vllm" and spec.grpo.rewards[0].type == "exact_match"


def test_rows_and_prompt_groups():
    assert grpo_row({"prompt": "reverse: 1 2", "completion": "2 1"}) == \
        {"prompt": [{"role": "user", "content": "reverse: 1 2"}], "reference": "2 1"}
    msgs = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
    assert grpo_row({"messages": msgs}) == {"prompt": msgs[:1], "reference": "yo"}
    assert grpo_row({"messages": msgs[:1]}) == {"prompt": msgs[:1], "reference": None}
    # TRL repeats each prompt num_generations times in a row; vLLM samples n at once.
    assert run_lengths([[1], [1], [2], [2], [2], [1]]) == ([[1], [2], [1]], [2, 3, 1])


def test_rollout_actor_names_and_cpu_env():
    from studio.train.rollout import actor_name, cpu_env
    from studio.train.spec import RolloutSpec

    assert actor_name("sqlite:///a.db", 3) != actor_name("sqlite:///b.db", 3)  # studios sharing a cluster
    # vLLM reads VLLM_CPU_KVCACHE_SPACE with int(): a fraction of a GiB is rounded up, never passed as "0.5"
    env = cpu_env(RolloutSpec(kv_cache_space_gib=0.5, cpu_processes=1).model_dump())
    assert env["VLLM_CPU_KVCACHE_SPACE"] == "1"
    # one engine process, its OpenMP threads on every core the actor may use (the trainers wait meanwhile)
    assert env["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0" and int(env["OMP_NUM_THREADS"]) == len(os.sched_getaffinity(0))
    assert cpu_env(RolloutSpec(cpu_processes=2, reserved_cpus=0).model_dump())["VLLM_CPU_NUM_OF_RESERVED_CPU"] == "0"


def test_lora_factors_merge_to_what_peft_merges(tiny_model_dir):
    """What the rollout engine's worker loads each step (base + scale * B @ A per adapted module) is the
    weights PEFT's own merge gives, for every module the checkpoint holds."""
    import torch
    from peft import LoraConfig, get_peft_model
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from studio.train.grpo_sync import lora_factors, merged_weights

    torch.manual_seed(0)
    peft = get_peft_model(AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)),
                          LoraConfig(r=4, lora_alpha=16, target_modules="all-linear", task_type="CAUSAL_LM"))
    with torch.no_grad():
        for name, p in peft.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    factors = lora_factors(peft)
    assert len(factors) == 7 * 4 and all(scale == 4.0 for _, _, scale, _ in factors.values())
    base = load_file(str(tiny_model_dir / "model.safetensors"))
    ours = dict(merged_weights(base, factors))
    theirs = peft.merge_and_unload().state_dict()
    assert ours.keys() == base.keys()
    changed = [n for n in ours if not torch.equal(ours[n], base[n])]
    assert sorted(changed) == sorted(f"{m}.weight" for m in factors)
    for name, weight in ours.items():
        torch.testing.assert_close(weight, theirs[name], rtol=0, atol=1e-6)


PROBE = "tests.train.reward_probe"  # importing it is visible in sys.modules


@pytest.mark.parametrize("path", [
    "os:system", f"{PROBE}:score", "studio.train.rewards:import_callable", "studio.train.rewards:json.loads",
    "studio.train.rewards:build_reward_funcs",
])
def test_a_python_reward_outside_the_allowlist_is_refused_before_import(path: str, monkeypatch):
    monkeypatch.delenv("STUDIO_REWARD_ALLOWLIST", raising=False)
    sys.modules.pop(PROBE, None)
    with pytest.raises(StudioError, match="is not allowed") as e:
        build(type="python", callable=path)
    assert e.value.status_code == 400 and "STUDIO_REWARD_ALLOWLIST" in e.value.fix
    assert PROBE not in sys.modules  # refused without running the module's code


@pytest.mark.parametrize("allow", [f"{PROBE}:score", f"{PROBE}:*", f"json:loads, {PROBE}:score"])
def test_the_admin_allowlist_opens_a_function_or_a_module(allow: str, monkeypatch):
    monkeypatch.setenv("STUDIO_REWARD_ALLOWLIST", allow)
    f, _ = build(type="python", callable=f"{PROBE}:score")
    assert f(completions=["a", "b"]) == [1.0, 1.0]
    monkeypatch.setenv("STUDIO_REWARD_ALLOWLIST", f"{PROBE}:other")  # another function of it: refused
    with pytest.raises(StudioError, match="is not allowed"):
        build(type="python", callable=f"{PROBE}:score")
    monkeypatch.setenv("STUDIO_REWARD_ALLOWLIST", f"{PROBE}:*")  # module:* never opens private names
    with pytest.raises(StudioError, match="is not allowed"):
        build(type="python", callable=f"{PROBE}:_private")
