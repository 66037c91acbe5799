"""Batch API benchmark: the same 200 chat requests (greedy, 16 tokens, the tiny model) run as one
batch (the batch job's runner: ``STUDIO_BATCH_CONCURRENCY`` calls in flight, lines written as they
finish) vs one at a time, through the same path.

    flock /tmp/heavy.lock .venv/bin/python scripts/bench_batch.py [--lines 200] [--concurrency 32] \
        [--out bench-results/batch.json]

How each side runs: one private local Ray with one Serve application (gateway, Router, one vLLM
ModelDeployment; no scheduler), nothing else on the machine meant to run. Both sides call
``studio.gateway.Client`` → /gateway/v1 → Gateway → Router → vLLM with the gateway's cache off, so
every line reaches the engine. The batch side is ``studio.batches.run.run_job`` in this process
(the Ray job's work without the Ray job's ~3 s start), timed from the call to its return and from
the batch's ``in_progress_at`` to ``completed_at``; the sequential side sends the same bodies one
after another. Rounds alternate (batch, sequential, batch, sequential) after a warm-up batch; the
load average is recorded before each round. Greedy answers are compared line by line.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
ENGINE = {"dtype": "float32", "max_model_len": 512, "max_num_seqs": 64, "enforce_eager": True,
          "kv_cache_space_gib": 1, "seed": 0}
MAX_TOKENS = 16


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def requests(n: int) -> list[dict]:
    return [{"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions",
             "body": {"model": "tiny", "temperature": 0, "max_tokens": MAX_TOKENS, "messages": [
                 {"role": "user", "content": "reverse: " + " ".join(f"{i:04d}")}]}} for i in range(n)]


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def run_batch(settings, client_factory, lines: list[dict], concurrency: int) -> dict:
    from studio.batches import BatchCreate, create_batch
    from studio.batches.files import add_file
    from studio.batches.run import run_job
    from studio.store.artifacts import ArtifactStore
    from studio.store.db import session_scope
    from studio.store.models import Batch, StoredFile

    settings.batch_concurrency = concurrency
    data = "".join(json.dumps(x) + "\n" for x in lines).encode()
    with session_scope(settings.db_url) as s:
        source = add_file(s, ArtifactStore(settings.artifacts), data, "bench.jsonl", "batch", None)
        batch = create_batch(s, settings, None, BatchCreate(input_file_id=source.id,
                                                           endpoint="/v1/chat/completions"), "bench")
        batch_id, job_id = batch.id, batch.job_id
    client = client_factory(batch_id, concurrency)
    loadavg = load()
    t = time.perf_counter()
    assert run_job(settings, job_id, client=client) == 0, f"batch job {job_id} failed"
    wall = time.perf_counter() - t
    client.close()
    with session_scope(settings.db_url) as s:
        b = s.get(Batch, batch_id)
        assert b.status == "completed" and b.completed == len(lines), (b.status, b.completed, b.failed)
        running_s = (b.completed_at - b.in_progress_at).total_seconds()
        out = ArtifactStore(settings.artifacts).get_bytes(s.get(StoredFile, b.output_file_id).key)
        tokens = b.completion_tokens
    texts = {o["custom_id"]: o["response"]["body"]["choices"][0]["message"]["content"]
             for o in map(json.loads, out.decode().splitlines())}
    return {"loadavg_before": loadavg, "wall_s": round(wall, 2), "in_progress_to_completed_s":
            round(running_s, 2), "lines_per_s": round(len(lines) / wall, 2),
            "completion_tokens": tokens, "tokens_per_s": round(tokens / wall, 1), "texts": texts}


def run_sequential(client, lines: list[dict]) -> dict:
    loadavg = load()
    t = time.perf_counter()
    texts, tokens = {}, 0
    for x in lines:
        body = dict(x["body"])
        out = client.chat(body.pop("model"), body.pop("messages"), **body)
        texts[x["custom_id"]] = out["choices"][0]["message"]["content"]
        tokens += out["usage"]["completion_tokens"]
    wall = time.perf_counter() - t
    return {"loadavg_before": loadavg, "wall_s": round(wall, 2), "lines_per_s": round(len(lines) / wall, 2),
            "completion_tokens": tokens, "tokens_per_s": round(tokens / wall, 1), "texts": texts}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lines", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--out", type=Path, default=REPO / "bench-results" / "batch.json")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-batch-") as tmp:
        home = Path(tmp) / "home"
        os.environ["STUDIO_HOME"] = str(home)
        for var in ("STUDIO_DATABASE_URL", "STUDIO_REDIS_URL", "RAY_ADDRESS", "STUDIO_GATEWAY_URL",
                    "STUDIO_API_KEY", "STUDIO_JOB_ID"):
            os.environ.pop(var, None)
        from studio.stack import _ensure_ray_token

        _ensure_ray_token(os.environ)  # token auth as `studio up` runs it; read when ray imports
        import ray
        from ray import serve

        from deployments.app import build_app
        from studio.gateway import Client
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
        lines = requests(args.lines)
        load_start = load()
        ray.init(address="local", num_cpus=8, include_dashboard=False, logging_level="ERROR")
        try:
            serve.start(http_options={"host": "127.0.0.1", "port": port})
            app_args = {"scheduler": {"enabled": False}, "gateway": {"spec": {"cache": {"enabled": False}}},
                        "models": [{"engine": {"model": str(model_dir), "served_model_name": "tiny", **ENGINE},
                                    "num_cpus": 0.5, "max_ongoing_requests": 64}]}
            serve.run(build_app(app_args), name="studio", route_prefix="/")
            base = f"http://127.0.0.1:{port}/gateway/v1"

            def batch_client(batch_id: str, width: int) -> Client:
                return Client(service="batch", job_id=batch_id, base_url=base, api_key=key,
                              max_concurrency=width, max_retries=0, timeout_s=600)

            warm = run_batch(settings, batch_client, lines[:32], args.concurrency)
            rounds = []
            for _ in range(2):
                batch = run_batch(settings, batch_client, lines, args.concurrency)
                with Client(service="bench", base_url=base, api_key=key, timeout_s=600) as one:
                    sequential = run_sequential(one, lines)
                rounds.append({"batch": batch, "sequential": sequential})
        finally:
            serve.shutdown()
            ray.shutdown()
        load_end = load()

    same = [sum(r["batch"]["texts"][k] == r["sequential"]["texts"][k] for k in r["batch"]["texts"])
            for r in rounds]
    for r in rounds:
        for side in r.values():
            side.pop("texts")
    warm.pop("texts")
    best = {side: min(r[side]["wall_s"] for r in rounds) for side in ("batch", "sequential")}
    result = {
        "benchmark": "batch",
        "at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                    "loadavg_start": load_start, "loadavg_end": load_end},
        "model": "tiny (studio.models.tiny), float32, vLLM CPU, one ModelDeployment", "engine": ENGINE,
        "workload": {"lines": args.lines, "max_tokens": MAX_TOKENS, "temperature": 0,
                     "concurrency": args.concurrency, "gateway_cache": "off",
                     "path": "gateway Client → /gateway/v1 → Gateway → Router → vLLM"},
        "how": "each side alone on one private Ray + Serve, rounds alternating batch/sequential "
               "after a 32-line warm-up batch; the batch side is the batch job's runner in-process "
               "(run_job: claim, checks, calls, writes, files), without the Ray job's start",
        "warmup": warm, "rounds": rounds,
        "greedy_identical_answers": {"per_round": same, "of": args.lines},
        "ratios": {"batch_vs_sequential_speedup_best": round(best["sequential"] / best["batch"], 2)},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
