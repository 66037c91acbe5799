"""``tracking.report_to`` (no Ray): studio.train.common.report_to hands transformers its own
integrations (mlflow is the studio's, never transformers'), with tensorboard's folder and an offline
wandb run under the job's tracking folder; a real SFTTrainer run on the tiny model writes both there.
wandb is not in the studio's environment (docs/training.md, *Tracking*): that run skips without it."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from studio.train.common import report_to
from studio.train.worker import WorkerJob

WANDB_ENV = ("WANDB_MODE", "WANDB_DIR", "WANDB_PROJECT", "TENSORBOARD_LOGGING_DIR")


def job(trackers: list[str], tracking_dir: Path) -> WorkerJob:
    spec = {"name": "tracked", "method": "sft", "base_model": "tiny", "data": {"dataset": "rows"},
            "hyper": {"max_steps": 2, "batch_size": 4, "logging_steps": 1}, "tracking": {"report_to": trackers}}
    return WorkerJob(spec=spec, base_model="tiny", snapshot_uri="", job_id=7, attempt=1, db_url="sqlite://",
                     mlflow_uri="", tracking_dir=str(tracking_dir))


@pytest.fixture
def clean_env(monkeypatch):
    for name in WANDB_ENV:
        monkeypatch.delenv(name, raising=False)  # restored (removed) after the test: report_to sets them
    return monkeypatch


def test_mlflow_alone_uses_no_transformers_integration_and_others_go_under_the_job(clean_env, tmp_path):
    import os

    assert report_to(job(["mlflow"], tmp_path / "a")) == ["none"]
    assert not any(name in os.environ for name in WANDB_ENV) and not (tmp_path / "a").exists()
    where = tmp_path / "b"
    assert report_to(job(["mlflow", "tensorboard", "wandb"], where)) == ["tensorboard", "wandb"]
    assert os.environ["WANDB_MODE"] == "offline" and os.environ["WANDB_DIR"] == str(where)
    assert os.environ["WANDB_PROJECT"] == "tracked"
    assert os.environ["TENSORBOARD_LOGGING_DIR"] == str(where / "tensorboard")
    clean_env.setenv("WANDB_MODE", "online")  # the workers' environment decides when it says
    assert report_to(job(["wandb"], where)) == ["wandb"] and os.environ["WANDB_MODE"] == "online"


@pytest.mark.skipif(importlib.util.find_spec("wandb") is None, reason="wandb is not installed (pip install wandb)")
def test_tensorboard_and_offline_wandb_runs_land_in_the_jobs_folder(clean_env, tiny_model_dir, tmp_path):
    from transformers import AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from studio.train import sft

    clean_env.setenv("WANDB_SILENT", "true")
    where = tmp_path / "tracking"
    trackers = report_to(job(["mlflow", "tensorboard", "wandb"], where))
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    rows = [{"prompt": f"reverse: {a} {a + 1}", "completion": f"{a + 1} {a}"} for a in range(8)]
    train, _ = sft.build_dataset(rows, tokenizer)
    args = SFTConfig(output_dir=str(tmp_path / "out"), use_cpu=True, bf16=False, report_to=trackers, max_length=32,
                     max_steps=2, per_device_train_batch_size=4, logging_steps=1, save_strategy="no",
                     run_name="job-7")
    SFTTrainer(model=str(tiny_model_dir), args=args, train_dataset=train, processing_class=tokenizer).train()
    events = list((where / "tensorboard").rglob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0, "no tensorboard event file"
    runs = list((where / "wandb").glob("offline-run-*"))
    assert runs and list(runs[0].glob("*.wandb")), f"no offline wandb run under {where}"
