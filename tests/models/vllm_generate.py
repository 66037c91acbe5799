"""Greedy generation with the real vLLM engine, run in a subprocess by ``test_vllm_tiny.py``.

    python tests/models/vllm_generate.py MODEL_DIR REQUEST_JSON OUT_JSON

REQUEST_JSON holds ``{"prompts": [...], "chats": [[message, ...], ...], "max_tokens": 8}``; OUT_JSON
gets, per prompt and per chat, the prompt token ids, generated token ids, text and the logprob of
each generated token. vLLM starts worker processes (hence the ``__main__`` guard) and keeps ~3 GB
RSS, which the pytest process should not inherit.
"""

from __future__ import annotations

import json
import os
import sys
import time


def _result(output) -> dict:
    completion = output.outputs[0]
    return {
        "prompt_token_ids": list(output.prompt_token_ids),
        "token_ids": list(completion.token_ids),
        "text": completion.text,
        "logprobs": [
            step[tid].logprob for step, tid in zip(completion.logprobs, completion.token_ids)
        ],
    }


def main(model: str, request_path: str, out_path: str) -> None:
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB; the default would take far more
    from vllm import LLM, SamplingParams

    with open(request_path) as f:
        request = json.load(f)
    started = time.perf_counter()
    llm = LLM(
        model=model,
        # The tiny model is saved in float32; vLLM on CPU would otherwise downcast to bfloat16,
        # and outputs would no longer match transformers token for token.
        dtype="float32",
        enforce_eager=True,  # torch.compile warm-up costs a minute on CPU
        max_model_len=512,
        max_num_seqs=4,
        seed=0,
    )
    ready_s = time.perf_counter() - started
    greedy = SamplingParams(max_tokens=request["max_tokens"], temperature=0.0, logprobs=1)
    started = time.perf_counter()
    prompts = [_result(o) for o in llm.generate(request["prompts"], greedy, use_tqdm=False)]
    chats = [_result(o) for o in llm.chat(request["chats"], greedy, use_tqdm=False)]
    generate_s = time.perf_counter() - started
    timings = {"ready_s": ready_s, "generate_s": generate_s}
    with open(out_path, "w") as f:
        json.dump({"prompts": prompts, "chats": chats, "timings": timings}, f)


if __name__ == "__main__":
    main(*sys.argv[1:4])
