"""The contract between the driver (``run.py``) and Ray Train workers: the config every worker gets
(``WorkerJob``), which runner module trains which method, and the function the workers run.

Ray pickles ``train_loop_per_worker`` by reference; keeping it in this module, which imports no ML
library, spares the driver and the Ray Train controller from importing transformers (≈10 s of CPU
on a small machine) just to hand the function over. Only the workers import the runner.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

from studio.train.spec import TrainSpec

RUNNERS = {"sft": "studio.train.sft", "cpt": "studio.train.cpt", "dpo": "studio.train.dpo",
           "grpo": "studio.train.grpo"}

# In the last checkpoint of a run: the finished adapter (plain PEFT dir, or the full model) and its metrics.
FINAL_DIR = "final"
FINAL_METRICS = "final_metrics.json"
FINAL_PARITY = "parity_answers.json"  # rank 0's PEFT answers to the parity prompts (studio.train.parity)


@dataclass
class WorkerJob:
    """``train_loop_config`` of every worker: plain values and absolute paths (workers run in
    another cwd, maybe on another node)."""

    spec: dict[str, Any]  # the TrainSpec as JSON
    base_model: str  # absolute directory or hub id
    snapshot_uri: str
    job_id: int
    attempt: int
    db_url: str
    mlflow_uri: str
    mlflow_run_id: str | None = None
    rollout_actor: str | None = None  # GRPO: name of the job's vLLM rollout actor; None: HF generate
    init_adapter: str | None = None  # the adapter training starts from (absolute path or artifact URI)
    eval_snapshot_uri: str | None = None  # eval.dataset's rows; None: no eval, or eval.split_ratio of the data
    tracking_dir: str | None = None  # where tensorboard / wandb write (tracking.report_to), an absolute path

    @property
    def train_spec(self) -> TrainSpec:
        return TrainSpec.model_validate(self.spec)


def train_loop_per_worker(config: dict[str, Any]) -> None:
    importlib.import_module(RUNNERS[config["spec"]["method"]]).train_loop_per_worker(config)
