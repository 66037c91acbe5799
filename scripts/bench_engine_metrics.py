"""What re-exporting the engine's ``vllm:*`` series costs the token path (deployments/engine_metrics.py).

    .venv/bin/python scripts/bench_engine_metrics.py [--rounds 3] [--requests 768] [--concurrency 8] [--out bench-results/engine_metrics.json]

One vLLM engine on the tiny model, started in this process as a ModelDeployment replica starts it
(``VLLMEngine``: ``AsyncLLM`` with vLLM's default ``PrometheusStatLogger``, the engine settings of
configs/serve/studio.yaml). Workload per phase: ``--requests`` streamed chat completions,
``--concurrency`` at a time, 32 output tokens each (``ignore_eos``). Phases, interleaved over
``--rounds`` in a rotated order so that drift of the shared machine falls on all alike:

- ``off``: no re-export (vLLM's own logger still runs, as it always does);
- ``every_5s``: the replica's report as shipped: ``engine_metric_blocks`` in a worker thread every
  5 s (``EVERY_S``), the way ``ModelDeployment._report_loop`` runs it;
- ``every_0.1s``: the same 50 times as often, to make any effect visible.

Reported: output tokens/s and TTFT (p50, p99) per phase, the render's time (ms) and size under load,
and the Router's merge of two replicas' blocks (``EngineMetricsStore.render``). The JSON records the
load average. Takes ~3 min on 2 cores (a phase ≈13 s).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
PROMPT = [{"role": "user", "content": "reverse: 6 0 4 8"}]
LABELS = {"deployment": "Model-tiny-bench", "version": "tiny", "replica": "bench"}


async def one_request(engine, ttfts: list[float]) -> None:
    start = time.perf_counter()
    result = await engine.generate("chat", {"model": "tiny", "messages": PROMPT, "max_tokens": 32,
                                            "ignore_eos": True, "stream": True})
    assert not isinstance(result, dict), result
    first = True
    async for _ in result:
        if first:
            ttfts.append(time.perf_counter() - start)
            first = False


async def phase(engine, requests: int, concurrency: int, every_s: float | None,
                renders: list[float]) -> dict:
    from deployments.engine_metrics import engine_metric_blocks

    stop = asyncio.Event()

    async def reporter():
        while not stop.is_set():
            t = time.perf_counter()
            await asyncio.to_thread(engine_metric_blocks, LABELS)
            renders.append(time.perf_counter() - t)
            try:
                await asyncio.wait_for(stop.wait(), every_s)
            except asyncio.TimeoutError:
                pass

    task = asyncio.create_task(reporter()) if every_s else None
    ttfts: list[float] = []
    queue = list(range(requests))

    async def worker():
        while queue:
            queue.pop()
            await one_request(engine, ttfts)

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall = time.perf_counter() - start
    stop.set()
    if task:
        await task
    q = statistics.quantiles(ttfts, n=100)
    return {"tokens_per_s": requests * 32 / wall, "ttft_p50_ms": q[49] * 1e3,
            "ttft_p99_ms": q[98] * 1e3}


async def main_async(args) -> dict:
    from deployments.engine_metrics import EngineMetricsStore, engine_metric_blocks
    from deployments.engines.vllm_engine import VLLMEngine
    from studio.models.tiny import make_tiny
    from studio.serving.config import EngineConfig

    tmp = Path(tempfile.mkdtemp(prefix="bench-engine-metrics-"))
    model = make_tiny(tmp / "tiny")
    engine = VLLMEngine(EngineConfig(
        model=str(model), served_model_name="tiny", dtype="float32", max_model_len=512,
        kv_cache_space_gib=1, max_loras=4, max_lora_rank=16, max_num_seqs=16, seed=0,
        stream_interval=8))
    await engine.start()
    try:
        await phase(engine, 16, args.concurrency, None, [])  # warm-up
        phases = {"off": None, "every_5s": 5.0, "every_0.1s": 0.1}
        results: dict[str, list[dict]] = {name: [] for name in phases}
        renders: dict[str, list[float]] = {name: [] for name in phases}
        names = list(phases)
        for r in range(args.rounds):
            for name in names[r % len(names):] + names[:r % len(names)]:
                results[name].append(await phase(engine, args.requests, args.concurrency,
                                                 phases[name], renders[name]))
                print(name, results[name][-1], flush=True)
        blocks = engine_metric_blocks(LABELS)
        store = EngineMetricsStore(stale_s=60)
        store.report("tiny", "r1", blocks)
        store.report("tiny", "r2", blocks)
        t = time.perf_counter()
        for _ in range(50):
            merged = store.render()
        merge_ms = (time.perf_counter() - t) / 50 * 1e3
        all_renders = renders["every_5s"] + renders["every_0.1s"]
        summary = {name: {k: statistics.median(p[k] for p in runs) for k in runs[0]}
                   for name, runs in results.items()}
        return {
            "phases": summary, "rounds": results,
            "render_under_load_ms": {"median": statistics.median(all_renders) * 1e3,
                                     "max": max(all_renders) * 1e3, "n": len(all_renders)},
            "render_bytes": sum(len(b) for b in blocks.values()), "families": len(blocks),
            "router_merge_two_replicas_ms": merge_ms, "merged_bytes": len(merged),
            "tokens_per_s_ratio_every_5s_vs_off": (summary["every_5s"]["tokens_per_s"]
                                                   / summary["off"]["tokens_per_s"]),
        }
    finally:
        engine.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=768)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--out", type=Path, default=REPO / "bench-results" / "engine_metrics.json")
    args = parser.parse_args()
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    load_before = os.getloadavg()
    result = asyncio.run(main_async(args))
    result.update({
        "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "load_avg_before": load_before, "load_avg_after": os.getloadavg(),
        "how": "one engine in this process, alone; phases interleaved per round; same engine "
               "settings in every phase (configs/serve/studio.yaml's, max_num_seqs 16)",
        "args": {k: str(v) for k, v in vars(args).items()},
    })
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("phases", "render_under_load_ms", "render_bytes",
                                             "router_merge_two_replicas_ms")}, indent=2))


if __name__ == "__main__":
    main()
