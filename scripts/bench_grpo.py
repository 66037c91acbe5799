"""GRPO job speed: ``grpo.rollout.engine: vllm`` vs ``hf``, each job alone, on the job's own
``train_runtime_s`` (the HF Trainer's clock: rollouts + rewards + optimizer steps; engine start-up
and registration are outside it and reported apart).

    flock /tmp/heavy.lock timeout 1500 .venv/bin/python scripts/bench_grpo.py [--rounds 2] \
        [--steps 6] [--generations 8] [--max-tokens 64] [--out bench-results/grpo_job.json] \
        [--profile-dir bench-results/grpo-profile]

Each run is the real entrypoint (``python -m studio.train.run --recipe
configs/train/grpo_reverse_tiny.yaml`` + overrides) in a fresh STUDIO_HOME, starting its own local
Ray, with nothing else of the studio running; the runs go one after the other, the engine order
alternating per round (hf, vllm, vllm, hf, ...), and the 1-minute load average is recorded before
each. The model is ``studio models make-tiny hidden_size=512 intermediate_size=1536
num_hidden_layers=8 num_attention_heads=8 num_key_value_heads=8`` (~25M parameters, float32). The
reward curve (per step) of every run is in the JSON, to compare the two engines' learning; round r
runs both engines with ``hyper.seed=r`` (vLLM samples deterministically for a seed, so rounds give
independent curves).

``--profile-dir``: one more run per ``--profile-engines`` afterwards, profiled (not timed): once
training has logged its first step, every process of the job is listed with its CPU affinity, threads,
OMP/VLLM_CPU environment and CPU seconds over ``--profile-s``, and ``py-spy record`` samples the
trainers and the engine (raw collapsed stacks, ``<label>-<pid>.txt``) over the same window, with a
CPU timeline of the same processes (cores used per half second).

The committed run is docs/bench/grpo.json (a copy of ``--out``) with its profile summarized in
docs/bench/grpo-profile.json; the figures and what they say are in docs/serving.md "GRPO rollouts".
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

MODEL_SHAPE = {"hidden_size": 512, "intermediate_size": 1536, "num_hidden_layers": 8,
               "num_attention_heads": 8, "num_key_value_heads": 8}
RECIPE = REPO / "configs" / "train" / "grpo_reverse_tiny.yaml"
ENV_KEYS = ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME", "VLLM_CPU_OMP_THREADS_BIND",
            "VLLM_CPU_NUM_OF_RESERVED_CPU", "VLLM_CPU_KVCACHE_SPACE", "LD_PRELOAD")


def make_model(work: Path) -> Path:
    from studio.models.tiny import TinyModelSpec, make_tiny

    return make_tiny(work / "model-25m", TinyModelSpec(**MODEL_SHAPE))


def overrides(args, engine: str, model_dir: Path, seed: int | str = 0) -> list[str]:
    return [f"base_model={model_dir}", f"hyper.seed={seed}", f"hyper.max_steps={args.steps}", "hyper.logging_steps=1",
            f"grpo.num_generations={args.generations}", f"grpo.max_completion_length={args.max_tokens}",
            f"grpo.rollout.engine={engine}", f"checkpoint.every_steps={args.steps}", "max_retries=0",
            *args.override]


def fresh_home(run_dir: Path):
    from studio.settings import StudioSettings
    from studio.store.db import get_engine, init_db
    from studio.train.toy_data import ingest_toy_datasets

    settings = StudioSettings(home=run_dir / ".studio", database_url=None, artifacts_uri=None, mlflow_uri=None,
                              redis_url=None, admin_key=None)
    init_db(settings.db_url)
    ingest_toy_datasets(settings, run_dir / "data")
    get_engine(settings.db_url).dispose()
    return settings


def job_env(settings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STUDIO_") and k != "RAY_ADDRESS"}
    env |= {"STUDIO_HOME": str(settings.home_abs), "PYTHONUNBUFFERED": "1"}
    return env


def read_job(settings) -> dict:
    from sqlalchemy import select

    from studio.store.db import get_engine, session_scope
    from studio.store.models import Job, JobMetric

    with session_scope(settings.db_url) as s:
        job = s.scalars(select(Job)).one()
        curve: dict[str, dict[int, float]] = {}
        for m in s.scalars(select(JobMetric).where(JobMetric.job_id == job.id)):
            curve.setdefault(m.key, {})[m.step] = m.value
        out = {"status": job.status, "error": job.error, "result_metrics": (job.result or {}).get("metrics", {}),
               "events": [(e.to_status, e.at.isoformat()) for e in job.events]}
    get_engine(settings.db_url).dispose()
    keys = ("reward", "reward_std", "rewards/exact_match/mean", "rewards/positional_overlap/mean",
            "rewards/char_f1/mean", "completions/mean_length", "rollout/tokens_per_s", "loss")
    out["per_step"] = {k: [curve[k][s] for s in sorted(curve[k])] for k in keys if k in curve}
    return out


def run_job(args, engine: str, model_dir: Path, work: Path, label: str, seed: int = 0,
            profile_dir: Path | None = None) -> dict:
    run_dir = work / label
    settings = fresh_home(run_dir)
    log = run_dir / "entrypoint.log"
    cmd = [sys.executable, "-m", "studio.train.run", "--recipe", str(RECIPE), *overrides(args, engine, model_dir, seed)]
    load = os.getloadavg()
    t0 = time.perf_counter()
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, cwd=run_dir, env=job_env(settings), stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    sampler = None
    if profile_dir is not None:
        sampler = threading.Thread(target=profile_job, args=(proc.pid, settings, profile_dir, args.profile_s),
                                   daemon=True)
        sampler.start()
    try:
        proc.wait(timeout=args.job_timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        proc.wait()
    wall = time.perf_counter() - t0
    if sampler is not None:
        sampler.join(timeout=args.profile_s + 60)
    job = read_job(settings)
    text = log.read_text(errors="replace")
    if proc.returncode != 0 or job["status"] != "SUCCEEDED":
        tail = "\n".join(text.splitlines()[-40:])
        raise SystemExit(f"{label}: the job ended {job['status']} (exit {proc.returncode}): {job['error']}\n{tail}")
    m = job["result_metrics"]
    shutil.copy(log, work / f"{label}.log")
    shutil.rmtree(run_dir, ignore_errors=True)
    rewards = job["per_step"].get("reward", [])
    return {"engine": engine, "label": label, "seed": seed, "loadavg_1m_before": load[0],
            "mean_reward": statistics.fmean(rewards) if rewards else None, "loadavg_before": list(load),
            "train_runtime_s": m.get("train_runtime_s"), "job_wall_s": wall, "global_step": m.get("global_step"),
            "per_step": job["per_step"], "engine_start_log": [ln for ln in text.splitlines()
                                                              if "rollout actor" in ln and "ready" in ln]}


def process_info(p) -> dict:
    import psutil

    try:
        env = {}
        try:
            env = {k: v for k, v in p.environ().items() if k in ENV_KEYS}
        except psutil.Error:
            pass
        return {"pid": p.pid, "name": p.name(), "cmd": " ".join(p.cmdline())[:160], "affinity": p.cpu_affinity(),
                "threads": p.num_threads(), "env": env, "cpu": p.cpu_times().user + p.cpu_times().system}
    except psutil.Error:
        return {"pid": p.pid, "gone": True}


def label_of(info: dict) -> str:
    cmd = info.get("cmd", "")
    for key in ("RayTrainWorker", "RolloutEngine", "EngineCore", "Worker", "TrainController", "raylet",
                "gcs_server", "studio.train.run", "dashboard"):
        if key in cmd:
            return key
    return info.get("name", "proc").replace("/", "_")[:24]


KEY_PROCESSES = ("RayTrainWorker", "RolloutEngine", "EngineCore", "Worker")


def profile_job(driver_pid: int, settings, out_dir: Path, seconds: float) -> None:
    """After the first logged step, over ``seconds``: every process of the job with its affinity,
    threads, OMP/VLLM_CPU environment and CPU seconds; a CPU timeline (every 0.5 s) of the trainers
    and the engine; py-spy raw stacks of those (``<label>-<pid>.txt``, 25 Hz, not pausing them)."""
    import psutil

    out_dir.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline:
        try:
            if read_job(settings)["per_step"].get("loss"):
                break
        except Exception:  # noqa: BLE001 - the job row may not exist yet
            pass
        time.sleep(1)
    try:
        procs = [psutil.Process(driver_pid), *psutil.Process(driver_pid).children(recursive=True)]
    except psutil.Error:
        return
    before = {p.pid: process_info(p) for p in procs}
    key = [p for p in procs if label_of(before[p.pid]) in KEY_PROCESSES]
    py_spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
    spies = [subprocess.Popen([py_spy, "record", "-p", str(p.pid), "-d", str(int(seconds)), "-r", "25",
                               "--nonblocking", "--format", "raw", "-o",
                               str(out_dir / f"{label_of(before[p.pid])}-{p.pid}.txt")],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for p in key if py_spy]
    timeline: dict[str, list[float]] = {f"{label_of(before[p.pid])}-{p.pid}": [] for p in key}
    t0 = time.monotonic()
    last = {p.pid: before[p.pid].get("cpu", 0.0) for p in key}
    while time.monotonic() - t0 < seconds:
        time.sleep(0.5)
        for p in key:
            try:
                cpu = p.cpu_times().user + p.cpu_times().system
            except psutil.Error:
                continue
            timeline[f"{label_of(before[p.pid])}-{p.pid}"].append(round((cpu - last[p.pid]) / 0.5, 2))
            last[p.pid] = cpu
    window = time.monotonic() - t0
    rows = []
    for p in procs:
        after, b = process_info(p), before[p.pid]
        if "cpu" in after and "cpu" in b:
            rows.append({**after, "label": label_of(after), "cpu_s": after["cpu"] - b["cpu"]})
    for spy in spies:
        spy.wait(timeout=120)
    rows.sort(key=lambda r: -r["cpu_s"])
    (out_dir / "processes.json").write_text(json.dumps(
        {"window_s": window, "processes": rows, "cpu_timeline_cores_per_0.5s": timeline}, indent=1))


def settle(max_wait_s: float, below: float) -> None:
    """Wait (at most ``max_wait_s``) for the 1-minute load average to fall below ``below``: the
    previous run's processes weigh on it for a minute after they end."""
    deadline = time.monotonic() + max_wait_s
    while os.getloadavg()[0] >= below and time.monotonic() < deadline:
        time.sleep(5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2, help="rounds; each runs both engines, order alternating")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--generations", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--engines", default="hf,vllm")
    parser.add_argument("--override", action="append", default=[],
                        help="one more recipe override for every run (repeatable), e.g. resources.num_workers=1")
    parser.add_argument("--job-timeout-s", type=float, default=900)
    parser.add_argument("--out", type=Path, default=REPO / "bench-results" / "grpo_job.json")
    parser.add_argument("--profile-dir", type=Path, default=None)
    parser.add_argument("--profile-s", type=float, default=20)
    parser.add_argument("--profile-engines", default="vllm", help="which engines get a profiled run")
    parser.add_argument("--settle-load", type=float, default=1.5,
                        help="before each run wait (up to 120 s) until the 1-minute load average is below this")
    args = parser.parse_args()
    engines = args.engines.split(",")

    runs = []
    with tempfile.TemporaryDirectory(prefix="bench-grpo-") as tmp:
        work = Path(tmp)
        model_dir = make_model(work)
        for r in range(args.rounds):
            for engine in engines if r % 2 == 0 else engines[::-1]:
                settle(120, args.settle_load)
                runs.append(run_job(args, engine, model_dir, work, f"round{r}-{engine}", seed=r))
                print(json.dumps({k: runs[-1][k] for k in ("label", "train_runtime_s", "job_wall_s",
                                                            "loadavg_1m_before")}), flush=True)
        profile = None
        if args.profile_dir is not None:
            for engine in args.profile_engines.split(","):
                settle(120, args.settle_load)
                run_job(args, engine, model_dir, work, f"profiled-{engine}", profile_dir=args.profile_dir / engine)
            profile = str(args.profile_dir)
        logs = args.out.parent / "grpo_job_logs"
        logs.mkdir(parents=True, exist_ok=True)
        for f in work.glob("*.log"):
            shutil.copy(f, logs / f.name)

    by_engine = {e: [r["train_runtime_s"] for r in runs if r["engine"] == e] for e in engines}
    result = {
        "benchmark": "grpo_job_train_runtime_s",
        "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "how": "each job alone (real entrypoint, own local Ray, fresh STUDIO_HOME), one after the other, engine "
               "order alternating per round; same recipe and overrides but grpo.rollout.engine",
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "workload": {"recipe": str(RECIPE.relative_to(REPO)), "model": {"make_tiny": MODEL_SHAPE, "dtype": "float32"},
                     "overrides": overrides(args, "<engine>", Path("<model>"), "<round>"), "steps": args.steps,
                     "generations": args.generations, "max_tokens": args.max_tokens},
        "runs": runs,
        "median_train_runtime_s": {e: statistics.median(v) for e, v in by_engine.items() if v},
        "mean_reward_by_engine": {e: [r["mean_reward"] for r in runs if r["engine"] == e] for e in engines},
        "profile_dir": profile,
    }
    med = result["median_train_runtime_s"]
    if "hf" in med and "vllm" in med:
        result["speedup_vllm_over_hf"] = med["hf"] / med["vllm"]
        result["goal_speedup"] = 2.0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({"median_train_runtime_s": med, "speedup": result.get("speedup_vllm_over_hf")}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
