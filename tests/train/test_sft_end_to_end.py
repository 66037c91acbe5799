"""SFT end to end through the real entrypoint, as `ray job submit` runs it: the recipe as written
(2 Ray Train workers, LoRA r=8, 15 epochs of digit reversal), a private local Ray, SQLite, MLflow.
The tiny random-init model goes from ~0 to ≥ 0.9 held-out exact match."""

from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient
from sqlalchemy import func, select

from studio.data.snapshots import load_split, resolve_snapshot
from studio.registry.versions import get_version
from studio.settings import StudioSettings
from studio.store.db import session_scope
from studio.store.models import Job, JobMetric
from studio.train.evaluate import exact_match

from .conftest import RECIPES, Entrypoint, lora_b_norms, load_adapter, tail

pytestmark = pytest.mark.slow


def test_sft_recipe_trains_registers_and_tracks(home: StudioSettings, entrypoint: Entrypoint):
    # base_model stays relative (.studio/models/tiny) and the cwd is elsewhere: the entrypoint
    # resolves it against STUDIO_HOME's parent, as for a `ray job submit --working-dir .` driver.
    result = entrypoint.run("--recipe", str(RECIPES / "sft_reverse_tiny.yaml"), timeout_s=1200)  # a hang guard, not a speed check
    assert result.returncode == 0, tail(result.output)

    with session_scope(home.db_url) as s:
        job = s.scalars(select(Job)).one()
        events = [e.to_status for e in job.events]
        metric_counts = dict(s.execute(select(JobMetric.key, func.count()).where(JobMetric.job_id == job.id)
                                       .group_by(JobMetric.key)).all())
        mv = get_version(s, job.result["model"])
        test_rows = load_split(resolve_snapshot(s, "reverse-test").snapshot.uri).to_pylist()
        run_id, base_model = job.mlflow_run_id, mv.base_model

    assert job.status == "SUCCEEDED", job.error
    assert events == ["QUEUED", "STARTING", "RUNNING", "CHECKPOINTING", "SUCCEEDED"]
    assert job.attempts == 1 and job.submitted_by == "ray job submit"
    assert job.checkpoint_uri and job.checkpoint_uri.startswith(str(home.home_abs / "artifacts" / "jobs"))
    assert job.result["model"] == "reverse-tiny@1" and job.result["uri"] == mv.uri

    # The registered version: a plain PEFT directory with lineage.
    assert (mv.method, mv.adapter_type, mv.job_id, mv.mlflow_run_id) == ("sft", "lora", job.id, run_id)
    assert mv.dataset_snapshot_id == resolve_snapshot_id(home, "reverse-train")
    assert mv.uri.endswith(f"models/reverse-tiny/{job.id}-1")
    assert mv.metrics["global_step"] == 480  # 15 epochs x ceil(2000 / 64)
    assert mv.metrics["exact_match"] >= 0.9  # eval_after on reverse-test
    # Training time is reported, not asserted (speed belongs to scripts/bench_train.py): a loaded
    # machine stretches it. On 2 idle cores it is ~2 min.
    print(f"training took {mv.metrics['train_runtime_s']:.0f} s (job: {result.seconds:.0f} s)")
    load_adapter(base_model, mv.uri)  # loads with PeftModel.from_pretrained
    norms = lora_b_norms(mv.uri)
    assert norms and all(n > 0 for n in norms.values()), "LoRA B starts at zero; training must move it"

    # Held-out exact match, scored here independently of the job: adapter ≥ 0.9, base ≈ 0.
    assert exact_match(base_model, mv.uri, test_rows)["exact_match"] >= 0.9
    assert exact_match(base_model, None, test_rows, limit=50)["exact_match"] <= 0.05

    # Per-step metrics, from rank 0 only (480 steps / logging_steps 10 = 48 rows per key).
    assert metric_counts["loss"] == 48 and metric_counts["lr"] == 48 and metric_counts["tokens_per_s"] == 48

    # MLflow: the run, with params, per-step metrics, final metrics and the adapter artifact.
    client = MlflowClient(tracking_uri=home.mlflow)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert client.get_experiment(run.info.experiment_id).name == "reverse-tiny"
    assert run.data.params["hyper.learning_rate"] == "0.003"
    assert len(client.get_metric_history(run_id, "loss")) == 48
    assert run.data.metrics["final_exact_match"] >= 0.9
    assert {f.path for f in client.list_artifacts(run_id, "adapter")} >= {
        "adapter/adapter_config.json", "adapter/adapter_model.safetensors"}
    assert run.info.artifact_uri.startswith((home.home_abs / "artifacts" / "mlflow").as_uri())


def resolve_snapshot_id(settings: StudioSettings, name: str) -> str:
    with session_scope(settings.db_url) as s:
        return resolve_snapshot(s, name).snapshot.id
