"""The floor under the studio's serving path: what a streamed answer costs on its way from a model
to the client when there is no model and no studio code, each server alone (issue 22).

    flock /tmp/heavy.lock .venv/bin/python scripts/bench_serve_floor.py [--rounds 2] \
        [--out docs/bench/serve-floor.json]

The studio's `/v1` path costs ~0.3 CPU-ms a token more than vLLM's own server (docs/serving.md,
"Quiet machine"). This script asks how much of that is Ray Serve's own streaming, which any
Serve-based server pays, and how much is the studio's code on it. A fake model emits the SSE strings
vLLM's chat stream sends for ``--tokens`` tokens at ``stream_interval`` 8, grouped as the studio's
model replica yields them (``deployments.model.coalesced``: role and first tokens together, then a
string per 8 tokens, then finish + usage + ``[DONE]`` together), one string every ``--gap-ms``
per request, as an engine that is never the bottleneck would. Three servers of it, each started
alone (one child process each, stopped and checked gone before the next), rounds interleaved:

- ``plain``: one uvicorn + FastAPI process streaming the strings (the shape of vLLM's api_server);
- ``serve_one_hop``: a Ray Serve deployment that is itself the FastAPI ingress and streams the
  strings (Serve's high-throughput mode as `studio up` starts it: HAProxy, direct ingress, gRPC);
- ``serve_two_hop``: a FastAPI ingress deployment relaying a model deployment's stream through a
  deployment handle (``handle.options(stream=True)``), the studio's layout without the studio:
  no keys, Router, metrics or completion log.

Per point: the 1-minute load average before it; tokens/s, TTFT p50/p99 and latency p50 through the
official ``openai`` client (the same load as scripts/bench_serve_alone.py); the CPU seconds of every
process of the server per 1000 tokens. ``unpaced_c32``: the strings as fast as the path takes them
(no gap), the path's own ceiling on this machine. Compare the per-process figures with the studio's
in docs/bench/serve-alone-raw-uni.json (``cpu_by_process`` at c=8).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

# At module level: with postponed annotations FastAPI resolves ``request: Request`` in the module.
from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))
from bench_serve import free_port, wait_http  # noqa: E402
from bench_serve_alone import cpu_delta, cpu_snapshot, machine, measure, stop_and_check, tree  # noqa: E402

CHUNK_TOKENS = 8  # configs/serve/studio.yaml's stream_interval
MODES = ("plain", "serve_one_hop", "serve_two_hop")


# ---- the fake model's stream ------------------------------------------------------------------

def sse_strings(tokens: int, model: str = "tiny") -> list[str]:
    """The strings the studio's model replica yields for one streamed chat answer of ``tokens``
    tokens (``include_usage``), as vLLM writes them, already coalesced."""
    created = int(time.time())
    head = {"id": "chatcmpl-floor", "object": "chat.completion.chunk", "created": created,
            "model": model}

    def chunk(delta: dict, finish: str | None = None) -> str:
        body = {**head, "choices": [{"index": 0, "delta": delta, "logprobs": None,
                                     "finish_reason": finish}]}
        return f"data: {json.dumps(body, separators=(',', ':'))}\n\n"

    text = " ".join(["7"] * CHUNK_TOKENS)  # one string per 8 tokens
    out = [chunk({"role": "assistant", "content": ""}) + chunk({"content": text})]
    out += [chunk({"content": text}) for _ in range(tokens // CHUNK_TOKENS - 1)]
    usage = {**head, "choices": [], "usage": {"prompt_tokens": 12, "completion_tokens": tokens,
                                              "total_tokens": 12 + tokens}}
    out.append(chunk({}, "length") + f"data: {json.dumps(usage, separators=(',', ':'))}\n\n"
               + "data: [DONE]\n\n")
    return out


async def paced(tokens: int, gap_s: float):
    for i, s in enumerate(sse_strings(tokens)):
        if i and gap_s:
            await asyncio.sleep(gap_s)
        yield s


async def max_tokens_of(request) -> int:
    body = await request.json()
    return int(body.get("max_tokens") or 64)


# ---- the servers (each a child process of this script) ------------------------------------------

def plain_child(port: int, gap_s: float) -> None:
    import uvicorn

    app = FastAPI()

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        return StreamingResponse(paced(await max_tokens_of(request), gap_s),
                                 media_type="text/event-stream")

    @app.get("/healthz")
    async def healthz():
        return {"ok": True}

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


def serve_child(port: int, mode: str, gap_s: float) -> None:
    from studio.settings import StudioSettings
    from studio.stack import serve_env

    os.environ.update(serve_env(StudioSettings(serve_fast_path=True)))  # as `studio up` starts Ray
    import ray
    from ray import serve

    app = FastAPI()

    @serve.deployment(name="FakeModel", max_ongoing_requests=64)
    class FakeModel:
        async def stream(self, tokens: int):
            async for s in paced(tokens, gap_s):
                yield s

    @serve.deployment(name="Ingress", max_ongoing_requests=256)
    @serve.ingress(app)
    class Ingress:
        def __init__(self, model=None):
            self.model = model

        @app.post("/v1/chat/completions")
        async def chat(self, request: Request):
            tokens = await max_tokens_of(request)
            if self.model is None:  # one hop: this replica is the model
                return StreamingResponse(paced(tokens, gap_s), media_type="text/event-stream")
            gen = self.model.options(stream=True).stream.remote(tokens)

            async def relay():
                try:
                    async for s in gen:
                        yield s
                finally:
                    gen.cancel()

            return StreamingResponse(relay(), media_type="text/event-stream")

        @app.get("/healthz")
        async def healthz(self):
            return {"ok": True}

    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="ERROR")
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(Ingress.bind(FakeModel.bind() if mode == "serve_two_hop" else None), name="floor",
              route_prefix="/")
    def on_term(*_):
        serve.shutdown()
        ray.shutdown()
        os._exit(0)

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    while True:  # until the parent's SIGTERM
        signal.pause()


class Server:
    def __init__(self, mode: str, gap_ms: float, log_dir: Path):
        self.mode, self.gap_ms, self.log_dir = mode, gap_ms, log_dir
        self.proc: subprocess.Popen | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> None:
        self.port = free_port()
        flag = "--plain-child" if self.mode == "plain" else "--serve-child"
        args = [sys.executable, __file__, flag, str(self.port), self.mode, str(self.gap_ms / 1000)]
        log = open(self.log_dir / f"{self.mode}.log", "a")
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_ADDRESS", "STUDIO_"))}
        self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env,
                                     cwd=str(REPO), start_new_session=True)
        wait_http(f"http://127.0.0.1:{self.port}/healthz", timeout=180)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc = None


def point(server: Server, concurrency: int, requests: int, tokens: int) -> dict:
    procs = tree(server.proc.pid)
    load_before = [round(x, 2) for x in os.getloadavg()]
    before = cpu_snapshot(procs)
    r = measure(server.url, "none", "tiny", requests, concurrency, tokens)
    r["loadavg_before"] = load_before
    r["cpu_by_process"] = cpu_delta(before, cpu_snapshot(procs), r["output_tokens"], r["wall_s"])
    r["cpu_ms_per_1k_tokens_all"] = round(sum(x["cpu_ms_per_1k_tokens"] or 0
                                              for x in r["cpu_by_process"]), 1)
    return r


def run_server(server: Server, args) -> dict:
    t0 = time.perf_counter()
    server.start()
    out: dict = {"ready_s": round(time.perf_counter() - t0, 1), "points": {}}
    measure(server.url, "none", "tiny", 16, 8, args.tokens)  # warm-up
    pids = {p.pid for p in tree(server.proc.pid)}
    for name, conc, n in (("c1", 1, args.c1_requests), ("c8", 8, args.requests),
                          ("c32", 32, args.c32_requests)):
        out["points"][name] = point(server, conc, n, args.tokens)
    out["stop"] = stop_and_check(pids, server.stop)
    # The path's ceiling: the same strings with no gap (a fresh server, so the paced points above
    # are not disturbed by it).
    unpaced = Server(server.mode, 0, server.log_dir)
    unpaced.start()
    measure(unpaced.url, "none", "tiny", 16, 8, args.tokens)
    pids = {p.pid for p in tree(unpaced.proc.pid)}
    out["points"]["unpaced_c32"] = point(unpaced, 32, args.c32_requests, args.tokens)
    out["stop_unpaced"] = stop_and_check(pids, unpaced.stop)
    return out


def summary(rounds: list[dict]) -> dict:
    """Per mode and point: the rounds' tokens/s and all-process CPU-ms per 1000 tokens."""
    out: dict = {}
    for rnd in rounds:
        for mode in MODES:
            for name, p in rnd.get(mode, {}).get("points", {}).items():
                row = out.setdefault(mode, {}).setdefault(name, {"tokens_per_s": [],
                                                                 "cpu_ms_per_1k_tokens": [],
                                                                 "ttft_ms_p50": []})
                row["tokens_per_s"].append(p["tokens_per_s"])
                row["cpu_ms_per_1k_tokens"].append(p["cpu_ms_per_1k_tokens_all"])
                row["ttft_ms_p50"].append(p["ttft_ms_p50"])
    return out


def bench(args) -> None:
    import tempfile

    started = time.perf_counter()
    result = {"benchmark": "serve-floor", "at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "machine_before": machine(), "serve_fast_path": True,
              "workload": {"stream": True, "max_tokens": args.tokens, "chunk_tokens": CHUNK_TOKENS,
                           "gap_ms": args.gap_ms, "strings_per_answer": len(sse_strings(args.tokens)),
                           "requests": {"c1": args.c1_requests, "c8": args.requests,
                                        "c32": args.c32_requests, "unpaced_c32": args.c32_requests}},
              "rounds": []}
    with tempfile.TemporaryDirectory(prefix="bench-floor-") as tmp:
        for i in range(args.rounds):
            order = list(MODES[i % len(MODES):] + MODES[:i % len(MODES)])
            rnd: dict = {"order": order}
            for mode in order:
                print(f"round {i + 1}/{args.rounds}: {mode}", flush=True)
                server = Server(mode, args.gap_ms, Path(tmp))
                try:
                    rnd[mode] = run_server(server, args)
                except Exception as e:  # noqa: BLE001 — record why, go on
                    rnd[mode] = {"error": f"{type(e).__name__}: {str(e)[:1500]}"}
                    print(f"  {mode} failed: {rnd[mode]['error']}", flush=True)
                    server.stop()
            result["rounds"].append(rnd)
    result["machine_after"] = machine()
    result["wall_s"] = round(time.perf_counter() - started, 1)
    result["summary"] = summary(result["rounds"])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["summary"], indent=1))
    print(f"written to {args.out}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=64, help="tokens per answer")
    parser.add_argument("--gap-ms", type=float, default=30.0,
                        help="time between two strings of one answer (8 tokens each)")
    parser.add_argument("--requests", type=int, default=128, help="requests of the 8-client point")
    parser.add_argument("--c1-requests", type=int, default=16)
    parser.add_argument("--c32-requests", type=int, default=128)
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "bench" / "serve-floor.json")
    parser.add_argument("--plain-child", nargs=3, help=argparse.SUPPRESS)
    parser.add_argument("--serve-child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.plain_child:
        plain_child(int(args.plain_child[0]), float(args.plain_child[2]))
    elif args.serve_child:
        serve_child(int(args.serve_child[0]), args.serve_child[1], float(args.serve_child[2]))
    else:
        bench(args)


if __name__ == "__main__":
    main()
