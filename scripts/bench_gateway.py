"""Gateway benchmark: what the gateway adds over the studio's /v1 path on the tiny model, one run.

    flock /tmp/studio-heavy.lock .venv/bin/python scripts/bench_gateway.py [--requests 48] \
        [--concurrency 8] [--out bench-results/gateway.json]

Both paths run in the same Serve application on a private local Ray, same engine:
- direct:  HTTP → ApiIngress → Router → ModelDeployment (vLLM)          (``/v1/chat/completions``)
- gateway: HTTP → ApiIngress → Gateway → Router → ModelDeployment (vLLM) (``/gateway/v1/...``)
Workload: non-streamed chat completions of exactly ``--max-tokens`` tokens (``ignore_eos``),
temperature 0.7 without a seed (so the gateway cannot serve them from cache), one request at a time
for latency (p50/p99) and ``--concurrency`` at a time for throughput (output tokens / wall s).
Requests alternate direct/gateway (latency) and blocks alternate (throughput), so drift on a busy
machine hits both sides alike. Then cache-hit latency: one temperature-0 request repeated.
Results depend on what else runs on the machine (the JSON records the load average).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import statistics
import sys
import tempfile
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
ENGINE = {"dtype": "float32", "max_model_len": 512, "max_loras": 4, "max_lora_rank": 16,
          "max_num_seqs": 16, "enforce_eager": True, "kv_cache_space_gib": 1, "seed": 0}
PROMPT = [{"role": "user", "content": "reverse: 6 0 4 8"}]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 2)


async def one(http, path: str, body: dict) -> float:
    t = time.perf_counter()
    r = await http.post(path, json=body)
    r.raise_for_status()
    return (time.perf_counter() - t) * 1000


async def latency(http, n: int, body: dict) -> dict[str, list[float]]:
    out = {"direct": [], "gateway": []}
    for i in range(n):  # alternate, so both sides see the same machine
        for side, path in (("direct", "/v1/chat/completions"),
                           ("gateway", "/gateway/v1/chat/completions"))[:: 1 if i % 2 else -1]:
            out[side].append(await one(http, path, body))
    return out


async def throughput(http, path: str, n: int, concurrency: int, body: dict, tokens: int) -> float:
    sem = asyncio.Semaphore(concurrency)

    async def go():
        async with sem:
            await one(http, path, body)

    t = time.perf_counter()
    await asyncio.gather(*[go() for _ in range(n)])
    return n * tokens / (time.perf_counter() - t)


async def run_bench(base: str, key: str, args) -> dict:
    import httpx

    body = {"model": "tiny", "messages": PROMPT, "max_tokens": args.max_tokens,
            "min_tokens": args.max_tokens, "ignore_eos": True, "temperature": 0.7}
    headers = {"Authorization": f"Bearer {key}", "x-studio-service": "bench"}
    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=300) as http:
        await latency(http, 3, body)  # warm-up both paths
        lat = await latency(http, args.requests, body)
        tput = {"direct": [], "gateway": []}
        for block in range(4):
            for side, path in (("direct", "/v1/chat/completions"),
                               ("gateway", "/gateway/v1/chat/completions"))[:: 1 if block % 2 else -1]:
                tput[side].append(await throughput(http, path, args.requests // 2,
                                                   args.concurrency, body, args.max_tokens))
        cached = {**body, "temperature": 0, "messages": [{"role": "user", "content": "reverse: 1 2"}]}
        await one(http, "/gateway/v1/chat/completions", cached)  # fills the cache
        hits = [await one(http, "/gateway/v1/chat/completions", cached) for _ in range(args.requests)]
    direct_tps, gateway_tps = statistics.median(tput["direct"]), statistics.median(tput["gateway"])
    return {
        "latency_ms": {side: {"p50": pct(v, 0.5), "p99": pct(v, 0.99), "n": len(v)}
                       for side, v in lat.items()},
        "throughput_tokens_per_s": {"direct": round(direct_tps, 1), "gateway": round(gateway_tps, 1),
                                    "blocks": {k: [round(x, 1) for x in v] for k, v in tput.items()}},
        "cache_hit_latency_ms": {"p50": pct(hits, 0.5), "p99": pct(hits, 0.99), "n": len(hits)},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=48)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--out", type=Path, default=REPO / "bench-results" / "gateway.json")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-gateway-") as tmp:
        home = Path(tmp) / "home"
        os.environ["STUDIO_HOME"] = str(home)
        for var in ("STUDIO_DATABASE_URL", "STUDIO_REDIS_URL", "RAY_ADDRESS"):
            os.environ.pop(var, None)
        from studio.stack import _ensure_ray_token

        _ensure_ray_token(os.environ)  # token auth as `studio up` runs it; read when ray imports
        import ray
        from ray import serve

        from deployments.app import build_app
        from studio.keys import create_key
        from studio.models.tiny import make_tiny
        from studio.settings import StudioSettings
        from studio.store.db import init_db, session_scope

        model_dir = make_tiny(home / "models" / "tiny")
        settings = StudioSettings()
        init_db(settings.db_url)
        with session_scope(settings.db_url) as s:
            key, _ = create_key(s, "bench", "admin")
        port = free_port()
        load_before = os.getloadavg()
        ray.init(address="local", num_cpus=8, include_dashboard=False, logging_level="ERROR")
        try:
            serve.start(http_options={"host": "127.0.0.1", "port": port})
            app_args = {"scheduler": {"enabled": False},
                        "gateway": {"spec": {"cache": {"namespace": f"bench-{uuid.uuid4().hex[:6]}"}}},
                        "models": [{"engine": {"model": str(model_dir), "served_model_name": "tiny",
                                               **ENGINE}, "num_cpus": 0.5}]}
            serve.run(build_app(app_args), name="studio", route_prefix="/")
            measured = asyncio.run(run_bench(f"http://127.0.0.1:{port}", key, args))
        finally:
            serve.shutdown()
            ray.shutdown()
        load_after = os.getloadavg()

    lat, tps = measured["latency_ms"], measured["throughput_tokens_per_s"]
    result = {
        "benchmark": "gateway",
        "at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                    "loadavg_before": [round(x, 2) for x in load_before],
                    "loadavg_after": [round(x, 2) for x in load_after]},
        "model": "tiny (studio.models.tiny), float32", "engine": ENGINE,
        "workload": {"requests": args.requests, "concurrency": args.concurrency,
                     "max_tokens": args.max_tokens, "stream": False, "temperature": 0.7},
        **measured,
        "ratios": {
            "gateway_added_latency_ms_p50": round(lat["gateway"]["p50"] - lat["direct"]["p50"], 2),
            "gateway_added_latency_ms_p99": round(lat["gateway"]["p99"] - lat["direct"]["p99"], 2),
            "gateway_vs_direct_throughput": round(tps["gateway"] / tps["direct"], 3),
            "cache_hit_vs_direct_latency_p50": round(
                measured["cache_hit_latency_ms"]["p50"] / lat["direct"]["p50"], 3),
        },
        "goals": {"gateway_added_latency_ms_p50": "<= 5", "gateway_vs_direct_throughput": ">= 0.90"},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({"ratios": result["ratios"], "latency_ms": lat,
                      "cache_hit_latency_ms": measured["cache_hit_latency_ms"]}, indent=2))
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
