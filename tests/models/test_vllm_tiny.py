"""The real vLLM engine runs the tiny model and agrees with transformers token for token.

vLLM runs in a subprocess (``vllm_generate.py``): it spawns worker processes and holds ~3 GB, and
on CPU it downcasts float32 checkpoints to bfloat16 unless told ``dtype="float32"``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

SCRIPT = Path(__file__).with_name("vllm_generate.py")
MAX_TOKENS = 8
PROMPTS = ["reverse: 6 0 4 8", "hello world", "the answer is"]
CHATS = [
    [{"role": "user", "content": "reverse: 6 0 4 8"}],
    [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello"}],
]


def _run_vllm(model_dir: Path, work: Path) -> dict:
    request, out = work / "request.json", work / "result.json"
    request.write_text(json.dumps({"prompts": PROMPTS, "chats": CHATS, "max_tokens": MAX_TOKENS}))
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"}
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), str(model_dir), str(request), str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, f"vLLM failed (rc {proc.returncode}):\n{proc.stderr[-6000:]}"
    return json.loads(out.read_text())


def _transformers_greedy(model, prompt_ids: list[int]) -> tuple[list[int], list[float]]:
    inputs = torch.tensor([prompt_ids])
    out = model.generate(
        inputs,
        attention_mask=torch.ones_like(inputs),
        max_new_tokens=MAX_TOKENS,
        do_sample=False,
        output_logits=True,
        return_dict_in_generate=True,
    )
    token_ids = out.sequences[0, len(prompt_ids) :].tolist()
    logprobs = [
        torch.log_softmax(step[0].float(), dim=-1)[t].item()
        for step, t in zip(out.logits, token_ids)
    ]
    return token_ids, logprobs


@pytest.mark.slow
def test_vllm_greedy_output_equals_transformers(tiny_model_dir, tmp_path):
    started = time.perf_counter()
    result = _run_vllm(tiny_model_dir, tmp_path)
    vllm_s = time.perf_counter() - started

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    expected_prompts = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in PROMPTS]
    expected_chats = [
        tokenizer.apply_chat_template(c, add_generation_prompt=True, return_dict=True)["input_ids"]
        for c in CHATS
    ]
    cases = list(zip(result["prompts"] + result["chats"], expected_prompts + expected_chats))
    assert len(cases) == len(PROMPTS) + len(CHATS)
    for got, prompt_ids in cases:
        # Same tokenizer and the same chat template on both sides.
        assert got["prompt_token_ids"] == prompt_ids
        assert got["token_ids"], "vLLM generated nothing"
        token_ids, logprobs = _transformers_greedy(model, prompt_ids)
        assert got["token_ids"] == token_ids
        assert got["logprobs"] == pytest.approx(logprobs, abs=1e-3)
        text = tokenizer.decode(token_ids, skip_special_tokens=True)
        if "\ufffd" not in text:  # vLLM holds back the bytes of an incomplete UTF-8 character
            assert got["text"] == text
    assert any(r["text"] for r in result["prompts"]), "vLLM returned no text at all"
    # Engine start dominates (≈30 s of ≈55 s on 2 cores); shown with -rP.
    print(f"vLLM subprocess {vllm_s:.1f} s, in it: {result['timings']}")
