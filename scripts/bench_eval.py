"""Eval concurrency benchmark: the same 200-row eval run as real eval jobs at concurrency 1 and at
concurrency 32, timed from the job's RUNNING event to its CHECKPOINTING event (``job_events``).

    flock /tmp/heavy.lock .venv/bin/python scripts/bench_eval.py [--rows 200] [--concurrency 32] \
        [--rounds 2] [--adapter] [--profile] [--out bench-results/eval.json]

How it runs: one private local Ray with one Serve application (Gateway, Router, one vLLM
ModelDeployment of the tiny model; no scheduler), nothing else on the machine meant to run. Each
eval is queued like ``studio eval run`` queues it and run by its Ray job's command,
``python -m studio.evals.run --job-id N``, in a process of its own (the Ray job's work without the
Ray job's start), spending on a key of its own: the gateway's cache is on, as in a real eval, and a
fresh key is a fresh cache scope, so every run asks the engine the same requests. Greedy decoding,
16 tokens, exact match. Rounds are interleaved (c=1, c=32, then c=32, c=1, ...) after a warm-up
eval; the load average is recorded before each run, and the CPU seconds every process on the
machine used during it (grouped: the eval job, the engine, each Serve replica, Ray's own).
``--lane`` adds the bare lane: the same requests sent by ``studio.gateway.Client`` alone at both
widths, what the eval runner could reach. ``--profile`` runs one more c=32 eval, apart from the
timed rounds (py-spy takes CPU from the machine), sampled by py-spy (``--idle``, from RUNNING on)
and summarised: where the job's time goes. ``--adapter`` evaluates a LoRA adapter of the
tiny model too (two models, 400 answers per eval).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import platform
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
ENGINE = {"dtype": "float32", "max_model_len": 512, "max_loras": 2, "max_lora_rank": 16,
          "max_num_seqs": 64, "enforce_eager": True, "kv_cache_space_gib": 1, "seed": 0}
MAX_TOKENS = 16


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


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


# ---- where the CPU goes -----------------------------------------------------------------------
def _group(p) -> str:
    """A readable group for a process: Ray's titles name Serve replicas (ray::ServeReplica:studio:
    Gateway), vLLM names its engine core; the eval job is found by its command line."""
    try:
        cmd = " ".join(p.cmdline())[:300]
        name = p.name()
    except Exception:  # noqa: BLE001 - gone meanwhile
        return "gone"
    if "studio.evals.run" in cmd:
        return "eval job"
    for marker in ("ServeReplica:studio:", "ServeController", "ProxyActor", "EngineCore"):
        if marker in cmd or marker in name:
            tail = cmd.split(marker, 1)[1].split()[0] if marker.endswith(":") and marker in cmd else ""
            return (marker.rstrip(":") + (f":{tail}" if tail else "")).replace("ServeReplica:studio", "replica")
    if "VLLM" in name or "vllm" in cmd.split(" ")[0]:
        return "vllm " + name
    for marker in ("gcs_server", "raylet", "dashboard", "log_monitor", "runtime_env", "monitor.py"):
        if marker in cmd or marker in name:
            return "ray " + marker
    if p.pid == os.getpid():
        return "bench driver"
    return "other"


def cpu_snapshot() -> dict[int, tuple[str, float]]:
    import psutil

    out = {}
    for p in psutil.process_iter():
        try:
            t = p.cpu_times()
            out[p.pid] = (_group(p), t.user + t.system)
        except Exception:  # noqa: BLE001
            continue
    return out


def cpu_used(before: dict, after: dict) -> dict[str, float]:
    used: dict[str, float] = collections.Counter()
    for pid, (group, t) in after.items():
        used[group] += t - (before[pid][1] if pid in before else 0.0)
    return {g: round(s, 2) for g, s in sorted(used.items(), key=lambda x: -x[1]) if s >= 0.05}


# ---- py-spy -----------------------------------------------------------------------------------
def summarise_profile(raw: Path, top: int = 20) -> dict:
    """py-spy's raw (collapsed) stacks → the share of samples per thread, per leaf function (where
    the time is spent, idle included: a thread waiting in select/epoll/a lock is sampled there)
    and per function anywhere on the stack (what the time is spent under)."""
    def name(frame: str) -> str:  # "Class.method (path/file.py:12)" → "Class.method (file.py)"
        func, _, where = frame.partition(" (")
        return f"{func} ({where.rsplit('/', 1)[-1].split(':')[0]})" if where else func

    leaves: collections.Counter = collections.Counter()
    threads: collections.Counter = collections.Counter()
    frames: collections.Counter = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        parts = stack.split(";")
        total += n
        threads[parts[0]] += n
        leaves[name(parts[-1])] += n
        for f in {name(x) for x in parts[1:]}:
            frames[f] += n
    pct = (lambda n: round(100 * n / total, 1)) if total else (lambda n: 0.0)
    return {"samples": total,
            "threads_pct": {t: pct(n) for t, n in threads.most_common(8)},
            "leaf_pct": {f: pct(n) for f, n in leaves.most_common(top)},
            "inclusive_pct": {f: pct(n) for f, n in frames.most_common(top * 2)}}


# ---- one eval job -----------------------------------------------------------------------------
def job_cpu_s(proc, settings, job_id: int, while_in: tuple[str, ...]) -> float | None:
    """The job process's CPU seconds once its row has left ``while_in`` (polled every 50 ms)."""
    import psutil

    from studio.store.db import session_scope
    from studio.store.models import Job

    while proc.poll() is None:
        with session_scope(settings.db_url) as s:
            status = s.get(Job, job_id).status
        if status not in while_in:
            try:
                t = psutil.Process(proc.pid).cpu_times()
                return t.user + t.system
            except psutil.NoSuchProcess:
                return None
        time.sleep(0.05)
    return None


def run_eval(settings, base: str, models: list[str], dataset: str, concurrency: int, n: int,
             profile_to: Path | None) -> dict:
    from studio.evals.queue import enqueue_eval
    from studio.evals.spec import EvalSpec
    from studio.keys import create_job_key, create_key
    from studio.store.db import session_scope
    from studio.store.models import ApiKey, EvalOutput, Job, JobEvent

    spec = EvalSpec.model_validate({
        "name": f"bench-c{concurrency}-{n}", "dataset": dataset, "models": models,
        "generation": {"max_tokens": MAX_TOKENS, "temperature": 0},
        "scorers": [{"type": "exact_match"}], "concurrency": concurrency, "max_retries": 0})
    with session_scope(settings.db_url) as s:
        # A fresh submitter is a fresh cache scope; the job spends on a key derived from it, as
        # the scheduler gives it one.
        _, info = create_key(s, f"bench-eval-{n}", "user")
        eval_id = enqueue_eval(s, spec, "bench", models_available=lambda: models,
                               owner_key_id=info.id).id
        key, _ = create_job_key(s, s.get(ApiKey, info.id), eval_id, timedelta(hours=2))
    env = {**os.environ, "STUDIO_GATEWAY_URL": base, "STUDIO_API_KEY": key,
           "STUDIO_JOB_ID": str(eval_id)}
    loadavg = load()
    cpu0 = cpu_snapshot()
    kids0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "studio.evals.run", "--job-id", str(eval_id)],
                            env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    # The job's own CPU while RUNNING (its start, imports included, and its leaderboard are not).
    job_cpu = [job_cpu_s(proc, settings, eval_id, ("QUEUED", "STARTING"))]
    spy = None
    py_spy = shutil.which("py-spy") or shutil.which("py-spy", path=str(Path(sys.executable).parent))
    if profile_to is not None and py_spy:  # attached once RUNNING: it cannot read a starting interpreter
        spy = subprocess.Popen([py_spy, "record", "--pid", str(proc.pid), "--rate", "200", "--idle",
                                "--threads", "--format", "raw", "--nonblocking", "-o", str(profile_to)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    job_cpu.append(job_cpu_s(proc, settings, eval_id, ("RUNNING",)))
    out, _ = proc.communicate(timeout=1800)
    wall = time.perf_counter() - t
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)  # the eval job, waited for (py-spy not yet)
    cpu = cpu_used(cpu0, cpu_snapshot())
    cpu["eval job"] = round(kids.ru_utime + kids.ru_stime - kids0.ru_utime - kids0.ru_stime, 2)
    cpu = dict(sorted(cpu.items(), key=lambda x: -x[1]))
    if spy is not None:
        spy.wait(timeout=60)
    assert proc.returncode == 0, f"eval {eval_id} failed:\n{out[-3000:]}"
    with session_scope(settings.db_url) as s:
        job = s.get(Job, eval_id)
        at = {e.to_status: e.at for e in s.query(JobEvent).filter(JobEvent.job_id == eval_id)}
        board, summary = job.result["leaderboard"], job.result
        texts = {f"{o.datapoint}|{o.model}": o.output for o in
                 s.query(EvalOutput).filter(EvalOutput.job_id == eval_id)}
        first_error = s.query(EvalOutput.error).filter(EvalOutput.job_id == eval_id,
                                                       EvalOutput.error.is_not(None)).first()
    answers = sum(m["answers"] for m in board["models"])
    errors = sum(m["errors"] for m in board["models"])
    assert errors == 0, f"eval {eval_id}: {errors} of {answers} answers are errors, e.g. {first_error}"
    running_s = (at["CHECKPOINTING"] - at["RUNNING"]).total_seconds()
    return {"eval_id": eval_id, "concurrency": concurrency, "loadavg_before": loadavg,
            "running_to_checkpointing_s": round(running_s, 3),
            "runner_wall_s": summary.get("wall_s"), "process_wall_s": round(wall, 2),
            "eval_job_cpu_s_while_running": round(job_cpu[1] - job_cpu[0], 2) if None not in job_cpu else None,
            "writes": summary.get("writes"),
            "answers": answers, "answers_per_s": round(answers / running_s, 2),
            "cache_hits": sum(m["cache_hits"] for m in board["models"]),
            "errors": errors, "exact_match": {r["model"]: r["mean"] for r in board["scores"]},
            "cpu_s_by_process": cpu, "texts": texts}


def run_lane(base: str, key: str, models: list[str], prompts: list[str], concurrency: int) -> dict:
    """The same requests through studio.gateway.Client alone (no eval runner, no writes)."""
    from studio.gateway import Client

    client = Client(service="bench", base_url=base, api_key=key, max_concurrency=concurrency,
                    timeout_s=600)

    async def go():
        calls = [client.achat(m, [{"role": "user", "content": p}], max_tokens=MAX_TOKENS, temperature=0)
                 for p in prompts for m in models]
        return await asyncio.gather(*calls)

    loadavg = load()
    cpu0 = cpu_snapshot()
    t = time.perf_counter()
    bodies = asyncio.run(go())
    wall = time.perf_counter() - t
    client.close()
    return {"concurrency": concurrency, "loadavg_before": loadavg, "wall_s": round(wall, 3),
            "answers": len(bodies), "cache_hits": sum(b["studio_gateway"]["cache_hit"] for b in bodies),
            "cpu_s_by_process": cpu_used(cpu0, cpu_snapshot())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2, help="pairs of runs (c=1 and c=N), order alternating")
    parser.add_argument("--adapter", action="store_true", help="evaluate a LoRA adapter of the tiny model too")
    parser.add_argument("--lane", action="store_true", help="also time the bare gateway Client at both widths")
    parser.add_argument("--profile", action="store_true", help="py-spy the c=N eval jobs")
    parser.add_argument("--out", type=Path, default=REPO / "bench-results" / "eval.json")
    args = parser.parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)

    with tempfile.TemporaryDirectory(prefix="bench-eval-") as tmp:
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
        from studio.data.ingest import ingest_file
        from studio.keys import create_key
        from studio.models.tiny import make_tiny
        from studio.registry.versions import register_version
        from studio.settings import StudioSettings
        from studio.store.db import init_db, session_scope
        from studio.train.toy_data import write_reversal_files

        model_dir = make_tiny(home / "models" / "tiny")
        settings = StudioSettings()
        init_db(settings.db_url)
        _, test = write_reversal_files(Path(tmp) / "data", n_train=10, n_test=args.rows)
        ingest_file(test, "bench-rows", settings)
        prompts = [json.loads(line)["prompt"] for line in test.read_text().splitlines()]
        models = ["tiny"]
        if args.adapter:
            adapter = make_adapter(model_dir, Path(tmp) / "adapter")
            with session_scope(settings.db_url) as s:
                register_version(s, name="bench-adapter", base_model=str(model_dir), method="sft",
                                 adapter_type="lora", uri=str(adapter))
            models.append("bench-adapter@1")
        port = free_port()
        load_start = load()
        ray.init(address="local", num_cpus=8, include_dashboard=False, logging_level="ERROR")
        base = f"http://127.0.0.1:{port}/gateway/v1"
        runs, lane, profiled = [], [], None
        try:
            serve.start(http_options={"host": "127.0.0.1", "port": port})
            app_args = {"scheduler": {"enabled": False},
                        "models": [{"engine": {"model": str(model_dir), "served_model_name": "tiny", **ENGINE},
                                    "num_cpus": 0.5, "max_ongoing_requests": 64}]}
            serve.run(build_app(app_args), name="studio", route_prefix="/")
            n = 0
            warm = run_eval(settings, base, models, "bench-rows", args.concurrency, n, None)
            warm.pop("texts")
            for r in range(args.rounds):
                order = [1, args.concurrency] if r % 2 == 0 else [args.concurrency, 1]
                for c in order:
                    n += 1
                    runs.append(run_eval(settings, base, models, "bench-rows", c, n, None))
                    print(json.dumps({k: v for k, v in runs[-1].items() if k != "texts"}), flush=True)
            if args.lane:
                for c in (args.concurrency, 1):
                    with session_scope(settings.db_url) as s:  # a fresh cache scope per run
                        lane_key, _ = create_key(s, f"bench-lane-{c}", "admin")  # may send a cap
                    lane.append(run_lane(base, lane_key, models, prompts, c))
                    print(json.dumps(lane[-1]), flush=True)
            if args.profile:  # apart from the timed rounds: py-spy takes CPU from the machine
                n += 1
                prof = args.out.with_name(f"{args.out.stem}-c{args.concurrency}.pyspy.txt")
                profiled = run_eval(settings, base, models, "bench-rows", args.concurrency, n, prof)
                profiled.pop("texts")
                if prof.exists():
                    profiled["profile"] = {"raw": str(prof), **summarise_profile(prof)}
        finally:
            serve.shutdown()
            ray.shutdown()
        load_end = load()

    by_c: dict[int, list[dict]] = collections.defaultdict(list)
    for one in runs:
        by_c[one["concurrency"]].append(one)
    ref = runs[0]["texts"]
    identical = [sum(one["texts"].get(k) == v for k, v in ref.items()) for one in runs]
    for one in runs:
        one.pop("texts")
    times = {c: [one["running_to_checkpointing_s"] for one in rs] for c, rs in by_c.items()}
    c = args.concurrency
    ratios = {}
    if times.get(1) and times.get(c):
        ratios = {"speedup_best": round(min(times[1]) / min(times[c]), 2),
                  "speedup_mean": round(sum(times[1]) / len(times[1]) / (sum(times[c]) / len(times[c])), 2),
                  "speedup_per_round": [round(a / b, 2) for a, b in zip(times[1], times[c], strict=False)]}
    if len(lane) == 2:
        ratios["lane_speedup"] = round(lane[1]["wall_s"] / lane[0]["wall_s"], 2)
    result = {
        "benchmark": "eval_concurrency",
        "at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                    "loadavg_start": load_start, "loadavg_end": load_end},
        "model": "tiny (studio.models.tiny)" + (" + a random LoRA adapter" if args.adapter else "")
                 + ", float32, vLLM CPU, one ModelDeployment", "engine": ENGINE,
        "workload": {"rows": args.rows, "models": models, "answers_per_eval": args.rows * len(models),
                     "max_tokens": MAX_TOKENS, "temperature": 0, "scorers": ["exact_match"],
                     "concurrency": [1, c], "gateway_cache": "on, a fresh key (cache scope) per eval",
                     "path": "python -m studio.evals.run → gateway Client → /gateway/v1 → Gateway → "
                             "Router → vLLM"},
        "how": "alone on one private Ray + Serve; each eval a job queued as the API queues it and "
               "run by its Ray job's command in its own process; timed from its RUNNING to its "
               "CHECKPOINTING event; rounds alternate c=1/c=N after a warm-up eval",
        "warmup": warm, "runs": runs, "lane": lane, "profiled_run": profiled,
        "running_to_checkpointing_s": {str(k): v for k, v in times.items()},
        "greedy_identical_answers_vs_first_run": {"per_run": identical, "of": len(ref)},
        "ratios": ratios, "goal": "speedup >= 5 (issue 22, item 4)",
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
