"""Training throughput: the studio's SFT job vs a plain TRL script on the same model, data and
hyperparameters, in one run; and the latency from submit to the first optimizer step.

    .venv/bin/python scripts/bench_train.py [--steps 60] [--out bench-results/train.json]

Both sides train the tiny model on digit reversal (LoRA r=8 on all linear layers, lr 3e-3, 64 rows
per optimizer step, 64-token rows) for ``--steps`` steps:
- studio: the real path, ``python -m studio.train.run --recipe configs/train/sft_reverse_tiny.yaml``
  (job row, preflight, a private local Ray, 2 Ray Train workers × 32 rows with 1 CPU each, gloo DDP,
  metrics to SQLite and MLflow, final checkpoint, registry);
- plain: one ``SFTTrainer`` process, 64 rows per step, in a fresh subprocess, twice: with torch's
  default threads (all cores) and with 1 thread (what a 1-CPU Ray worker gets: Ray sets OMP_NUM_THREADS).
tokens/s counts non-padding input tokens (the Trainer's ``num_input_tokens_seen``) over the
trainer's own runtime, and also as the median of per-step rates once warm. Takes ~3 min on 2 idle
cores. On a shared machine multi-threaded torch collapses when other processes compete for the
cores (OpenMP threads wait on each other), so the JSON records the load average around each side.
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
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "configs" / "train" / "sft_reverse_tiny.yaml"


def prepare_home(home: Path):
    from studio.train.toy_data import write_reversal_files
    from studio.data.ingest import ingest_file
    from studio.models.tiny import make_tiny
    from studio.settings import StudioSettings
    from studio.store.db import init_db

    settings = StudioSettings(home=home, database_url=None, artifacts_uri=None, mlflow_uri=None)
    init_db(settings.db_url)
    make_tiny(settings.models_dir / "tiny")
    train, _ = write_reversal_files(home / "data")
    ingest_file(train, "reverse-train", settings)
    return settings, train


def bench_studio(settings, steps: int) -> dict:
    from sqlalchemy import select

    from studio.store.db import session_scope
    from studio.store.models import Job, JobEvent, JobMetric

    env = {k: v for k, v in os.environ.items() if not k.startswith("STUDIO_") and k != "RAY_ADDRESS"}
    env["STUDIO_HOME"] = str(settings.home_abs)
    submitted = datetime.now(timezone.utc)
    t0 = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "studio.train.run", "--recipe", str(RECIPE), f"hyper.max_steps={steps}",
         "hyper.logging_steps=1", "eval_after=null", f"base_model={settings.models_dir / 'tiny'}"],
        env=env, cwd=settings.home_abs, capture_output=True, text=True)
    wall = time.monotonic() - t0
    if proc.returncode != 0:
        raise SystemExit(f"the studio job failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    with session_scope(settings.db_url) as s:
        job = s.scalars(select(Job)).one()
        running = s.scalars(select(JobEvent.at).where(JobEvent.job_id == job.id, JobEvent.to_status == "RUNNING")).one()
        first = s.scalars(select(JobMetric.at).where(JobMetric.job_id == job.id, JobMetric.key == "loss")
                          .order_by(JobMetric.step)).first()
        rates = list(s.scalars(select(JobMetric.value).where(JobMetric.job_id == job.id,
                                                             JobMetric.key == "tokens_per_s").order_by(JobMetric.step)))
        metrics = job.result["metrics"]
    return {
        "tokens_per_s": metrics["tokens_per_s"],
        "tokens_per_s_median_warm": statistics.median(rates[len(rates) // 5 + 1:]),
        "train_runtime_s": metrics["train_runtime_s"],
        "submit_to_running_s": (running - submitted).total_seconds(),
        "submit_to_first_step_s": (first - submitted).total_seconds(),
        "job_wall_s": wall,
        "workers": 2, "rows_per_worker_step": 32,
    }


def bench_plain_trl(model_dir: Path, train_file: Path, steps: int, out_dir: Path, threads: int | None) -> dict:
    """Run the plain TRL side in a fresh process (its own thread pool, nothing else imported)."""
    env = {**os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {})}
    load = os.getloadavg()[0]
    proc = subprocess.run([sys.executable, __file__, "--plain-only", str(model_dir), str(train_file), str(steps),
                           str(out_dir)], env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"the plain TRL run failed:\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    return {**result, "threads": threads or "torch default", "load_avg_1m_before": load}


def plain_trl(model_dir: Path, train_file: Path, steps: int, out_dir: Path) -> dict:
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    rows = [json.loads(line) for line in train_file.read_text().splitlines()]
    data = Dataset.from_list([{"prompt": [{"role": "user", "content": r["prompt"]}],
                               "completion": [{"role": "assistant", "content": r["completion"]}]} for r in rows])

    class Rates(TrainerCallback):
        def __init__(self):
            self.points: list[tuple[float, int]] = []

        def on_log(self, args, state, control, **kwargs):
            self.points.append((time.monotonic(), state.num_input_tokens_seen))

    rates_cb = Rates()
    args = SFTConfig(output_dir=str(out_dir), per_device_train_batch_size=64, learning_rate=3e-3, max_steps=steps,
                     lr_scheduler_type="linear", logging_steps=1, max_length=64, bf16=False, use_cpu=True,
                     gradient_checkpointing=False, save_strategy="no", report_to="none", disable_tqdm=True,
                     include_num_input_tokens_seen="non_padding", completion_only_loss=True, seed=0)
    trainer = SFTTrainer(model=str(model_dir), args=args, train_dataset=data,
                         processing_class=AutoTokenizer.from_pretrained(model_dir),
                         peft_config=LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", task_type="CAUSAL_LM"),
                         callbacks=[rates_cb])
    out = trainer.train()
    runtime = out.metrics["train_runtime"]
    p = rates_cb.points
    per_step = [(b[1] - a[1]) / (b[0] - a[0]) for a, b in zip(p, p[1:]) if b[0] > a[0]]
    import torch

    return {
        "tokens_per_s": trainer.state.num_input_tokens_seen / runtime,
        "torch_threads": torch.get_num_threads(),
        "tokens_per_s_median_warm": statistics.median(per_step[len(per_step) // 5:]),
        "train_runtime_s": runtime,
        "workers": 1, "rows_per_worker_step": 64,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40, help="optimizer steps on each side")
    parser.add_argument("--out", type=Path, default=REPO / "bench-results" / "train.json")
    parser.add_argument("--keep", action="store_true", help="keep the temporary STUDIO_HOME")
    parser.add_argument("--plain-only", nargs=4, metavar=("MODEL", "DATA", "STEPS", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.plain_only:  # the subprocess of bench_plain_trl
        model, data, steps, out = args.plain_only
        print(json.dumps(plain_trl(Path(model), Path(data), int(steps), Path(out))))
        return

    home = Path(tempfile.mkdtemp(prefix="studio-bench-train-")) / ".studio"
    try:
        settings, train_file = prepare_home(home)
        load = os.getloadavg()[0]
        studio = {**bench_studio(settings, args.steps), "load_avg_1m_before": load}
        plain = bench_plain_trl(settings.models_dir / "tiny", train_file, args.steps, home / "plain-trl", None)
        plain_1t = bench_plain_trl(settings.models_dir / "tiny", train_file, args.steps, home / "plain-trl-1", 1)
    finally:
        if not args.keep:
            shutil.rmtree(home.parent, ignore_errors=True)
    import torch
    import trl

    result = {
        "benchmark": "train_sft_tiny_reversal",
        "at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "gpu": torch.cuda.is_available()},
        "versions": {"torch": torch.__version__, "trl": trl.__version__},
        "steps": args.steps, "rows_per_step": 64, "max_length": 64, "lora": {"r": 8, "target_modules": "all-linear"},
        "studio": studio,
        "plain_trl": plain,
        "plain_trl_1_thread": plain_1t,
        "ratio_tokens_per_s": studio["tokens_per_s"] / plain["tokens_per_s"],
        "ratio_tokens_per_s_warm": studio["tokens_per_s_median_warm"] / plain["tokens_per_s_median_warm"],
        "ratio_tokens_per_s_vs_1_thread": studio["tokens_per_s"] / plain_1t["tokens_per_s"],
        "load_avg_1m_after": os.getloadavg()[0],
        "grpo": "measured by scripts/bench_grpo.py (bench-results/grpo_rollout.json)",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
