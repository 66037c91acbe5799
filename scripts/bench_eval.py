"""Eval runner benchmark: 200 datapoints × 2 models (the tiny base and a LoRA adapter of it) on the
tiny model, the same eval run twice in one process: concurrent (completions in flight at once, so
the engine batches them) vs sequential (one request at a time).

    flock /tmp/studio-heavy.lock .venv/bin/python scripts/bench_eval.py [--rows 200] \
        [--concurrency 64] [--out bench-results/eval.json]

Both runs go through the real path: EvalRun → studio.gateway.Client → /gateway/v1 → Gateway →
Router → ModelDeployment (vLLM), in one Serve application on a private local Ray. Greedy decoding;
each run gets its own system-prompt tag of the same length so neither is served from the
gateway's cache. The goal (≥ 5× on a GPU) is about batching; on 2 CPU cores the ratio is what the
CPU gives, recorded as measured (the JSON has the load average too).
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
import uuid
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
ENGINE = {"dtype": "float32", "max_model_len": 512, "max_loras": 2, "max_lora_rank": 16,
          "max_num_seqs": 64, "enforce_eager": True, "kv_cache_space_gib": 1, "seed": 0}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def gpu_name() -> str | None:
    """The GPU the engine could use, or None (vLLM CPU)."""
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None


def make_adapter(base_dir: Path, out: Path) -> Path:
    """A LoRA adapter with random B weights (so it answers differently from the base)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    peft_model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules="all-linear"))
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.3)
    peft_model.save_pretrained(out)
    return out


def run_eval(settings, client, dataset: str, concurrency: int, tag: str) -> dict:
    from studio.evals.run import create_here, run_job
    from studio.evals.spec import EvalSpec
    from studio.store.db import session_scope
    from studio.store.models import Job

    spec = EvalSpec.model_validate({
        "name": f"bench-{tag}", "dataset": dataset, "models": ["tiny", "bench-adapter@1"],
        "system_prompt": f"run {tag}", "generation": {"max_tokens": 16, "temperature": 0},
        "scorers": [{"type": "exact_match"}], "concurrency": concurrency})
    eval_id = create_here(settings.db_url, spec, "bench", models_available=client.models)  # this gateway's names
    t = time.perf_counter()
    assert run_job(settings, eval_id, client=client) == 0, f"eval {eval_id} failed"
    wall = time.perf_counter() - t
    with session_scope(settings.db_url) as s:
        board = s.get(Job, eval_id).result["leaderboard"]
    answers = sum(m["answers"] for m in board["models"])
    return {"concurrency": concurrency, "wall_s": round(wall, 2), "answers": answers,
            "answers_per_s": round(answers / wall, 2),
            "cache_hits": sum(m["cache_hits"] for m in board["models"]),
            "errors": sum(m["errors"] for m in board["models"]),
            "exact_match": {r["model"]: r["mean"] for r in board["scores"]}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--out", type=Path, default=REPO / "bench-results" / "eval.json")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-eval-") as tmp:
        home = Path(tmp) / "home"
        os.environ["STUDIO_HOME"] = str(home)
        for var in ("STUDIO_DATABASE_URL", "STUDIO_REDIS_URL", "RAY_ADDRESS", "STUDIO_GATEWAY_URL", "STUDIO_API_KEY"):
            os.environ.pop(var, None)
        from studio.stack import _ensure_ray_token

        _ensure_ray_token(os.environ)  # token auth as `studio up` runs it; read when ray imports
        import ray
        from ray import serve

        from deployments.app import build_app
        from studio.data.ingest import ingest_file
        from studio.train.toy_data import write_reversal_files
        from studio.gateway import Client
        from studio.keys import create_key
        from studio.models.tiny import make_tiny
        from studio.registry.versions import register_version
        from studio.settings import StudioSettings
        from studio.store.db import init_db, session_scope

        model_dir = make_tiny(home / "models" / "tiny")
        settings = StudioSettings()
        init_db(settings.db_url)
        _, test = write_reversal_files(Path(tmp) / "data", n_train=10, n_test=args.rows)
        ingest_file(test, "bench-rows", settings)
        adapter = make_adapter(model_dir, Path(tmp) / "adapter")
        with session_scope(settings.db_url) as s:
            key, _ = create_key(s, "bench", "admin")
            register_version(s, name="bench-adapter", base_model=str(model_dir), method="sft", adapter_type="lora",
                             uri=str(adapter))
        port = free_port()
        load_before = os.getloadavg()
        ray.init(address="local", num_cpus=8, include_dashboard=False, logging_level="ERROR")
        try:
            serve.start(http_options={"host": "127.0.0.1", "port": port})
            app_args = {"scheduler": {"enabled": False},
                        "gateway": {"spec": {"cache": {"namespace": f"bench-eval-{uuid.uuid4().hex[:6]}"}}},
                        "models": [{"engine": {"model": str(model_dir), "served_model_name": "tiny", **ENGINE},
                                    "num_cpus": 0.5}]}
            serve.run(build_app(app_args), name="studio", route_prefix="/")
            client = Client(service="eval", base_url=f"http://127.0.0.1:{port}/gateway/v1", api_key=key,
                            timeout_s=600)
            warm = run_eval(settings, client, "bench-rows", args.concurrency, "warm")  # loads the adapter
            concurrent = run_eval(settings, client, "bench-rows", args.concurrency, "con1")
            sequential = run_eval(settings, client, "bench-rows", 1, "seq1")
            client.close()
        finally:
            serve.shutdown()
            ray.shutdown()
        load_after = os.getloadavg()

    result = {
        "benchmark": "eval",
        "at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "gpu": gpu_name(),
                    "loadavg_before": [round(x, 2) for x in load_before],
                    "loadavg_after": [round(x, 2) for x in load_after]},
        "model": "tiny (studio.models.tiny) + a random LoRA adapter, float32, vLLM CPU", "engine": ENGINE,
        "workload": {"rows": args.rows, "models": 2, "max_tokens": 16, "temperature": 0,
                     "path": "EvalRun → gateway Client → /gateway/v1 → Gateway → Router → vLLM"},
        "warmup": warm, "concurrent": concurrent, "sequential": sequential,
        "ratios": {"concurrent_vs_sequential_speedup": round(sequential["wall_s"] / concurrent["wall_s"], 2)},
        "goals": {"concurrent_vs_sequential_speedup": ">= 5 on a GPU; CPU: reported as measured"},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
