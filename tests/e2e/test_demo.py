"""The loop end to end (issue 8): ``run_demo`` — the function behind ``make demo`` — with the
``small`` profile (fewer test rows, A/B requests and DPO steps; the same SFT recipe, with its
in-job held-out eval), on the suite's shared tiny-model stack (its step 0 starts it; tests/stacks.py),
which the last test here stops.

One run per session (``demo_run``, tests/demo_run.py; the evaluation e2e uses its SFT adapter): the
first test checks the outcomes the demo printed as done, the second the SFT step's training job as
the studio recorded it — the recipe as written (2 Ray Train workers, LoRA r=32, 6 epochs of digit
reversal) taking the tiny random-init model from ~0 to ≥ 0.9 held-out exact match, with its
metrics, MLflow run and registered adapter."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from sqlalchemy import func, select

from studio.data.snapshots import load_split, resolve_snapshot
from studio.registry.versions import get_version
from studio.store.db import session_scope
from studio.store.models import Job, JobMetric
from studio.train.evaluate import exact_match
from studio.train.parity import N_PROMPTS
from studio.train.worker import FINAL_DIR, FINAL_PARITY
from tests.e2e.test_stack import processes_of
from tests.train.conftest import load_adapter, lora_b_norms

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def test_demo_small_profile_runs_the_whole_loop(demo_run, capsys):
    from studio.cli.demo import PROFILES

    with capsys.disabled():  # where the suite's longest fixture spends its time, in the run's output
        print("\ndemo (small) steps, s: " + ", ".join(
            f"{k.split('.')[0]}={v}" for k, v in demo_run.result.step_seconds.items()))

    result, home = demo_run.result, demo_run.home
    p = PROFILES["small"]
    assert result.base_em is not None and result.base_em <= p.max_base_em
    assert result.sft_version == "reverse-tiny@1" and result.sft_em >= p.min_adapter_em
    assert result.promotion["outcome"] == "promoted"
    arms = {a["model"]: a for a in result.experiment["arms"]}
    assert set(arms) == {"tiny", "reverse-tiny@1"} and all(a["requests"] > 0 for a in arms.values())
    assert result.feedback["positive"] > 0 and result.feedback["negative"] > 0
    assert result.preference_dataset["kind"] == "preference" and result.preference_dataset["rows"] > 0
    assert result.dpo_version == "reverse-tiny@2" and result.dpo_em >= p.min_adapter_em
    assert result.dpo_gate["outcome"] in ("promoted", "refused")
    board = {(r["model"], r["scorer"]): r["mean"] for r in result.leaderboard["scores"]}
    assert board[("reverse-tiny@1", "exact_match")] >= p.min_adapter_em
    assert ("reverse-tiny@2", "exact_match") in board
    assert any(r["service"] == "eval" and r["calls"] > 0 for r in result.usage)
    assert len(result.step_seconds) == 10  # steps 0-9, each printed as done only after it happened
    assert (home / "ray-head.json").exists()  # the stack keeps running (no --exit)


def test_the_sft_step_trains_registers_and_tracks(demo_run):
    settings = demo_run.settings
    with session_scope(settings.db_url) as s:
        job = s.scalars(select(Job).where(Job.kind == "train").order_by(Job.id)).first()
        events = [e.to_status for e in job.events]
        metric_counts = dict(s.execute(select(JobMetric.key, func.count()).where(JobMetric.job_id == job.id)
                                       .group_by(JobMetric.key)).all())
        mv = get_version(s, job.result["model"])
        test_rows = load_split(resolve_snapshot(s, "reverse-test").snapshot.uri).to_pylist()
        train_snapshot = resolve_snapshot(s, "reverse-train").snapshot.id
        run_id, base_model, parity = job.mlflow_run_id, mv.base_model, mv.parity
        dpo_parity = get_version(s, "reverse-tiny@2").parity  # the DPO job's answers, on its pairs' prompts

    assert job.status == "SUCCEEDED", job.error
    assert events == ["QUEUED", "STARTING", "RUNNING", "CHECKPOINTING", "SUCCEEDED"]
    assert job.attempts == 1 and job.submitted_by  # the demo's key, through POST /api/jobs
    assert job.checkpoint_uri and job.checkpoint_uri.startswith(str(settings.home_abs / "artifacts" / "jobs"))
    assert job.result["model"] == "reverse-tiny@1" == demo_run.result.sft_version
    assert job.result["uri"] == mv.uri

    # The registered version: a plain PEFT directory with lineage.
    assert (mv.method, mv.adapter_type, mv.job_id, mv.mlflow_run_id) == ("sft", "lora", job.id, run_id)
    assert mv.dataset_snapshot_id == train_snapshot
    assert mv.uri.endswith(f"models/reverse-tiny/{job.id}-1")
    assert mv.metrics["global_step"] == 192  # 6 epochs x ceil(2000 / 64)
    assert mv.metrics["exact_match"] >= 0.9  # the recipe's eval_after on reverse-test
    # Training time is reported, not asserted (speed belongs to scripts/bench_train.py).
    print(f"training took {mv.metrics['train_runtime_s']:.0f} s")
    load_adapter(base_model, mv.uri)  # loads with PeftModel.from_pretrained
    # The gate's parity answers, recorded by the job (its rank-0 worker, from the saved folder), then
    # checked by the demo's gate: /v1 serving reverse-tiny@1 answered the first prompts the same.
    assert (parity["status"], parity["peft_by"], parity["source"]) == ("ok", f"job {job.id}", f"snapshot {train_snapshot}")
    assert parity["prompts"] == N_PROMPTS and parity["first_mismatch"] is None
    assert dpo_parity["status"] == "ok" and dpo_parity["peft_by"].startswith("job "), dpo_parity
    last = Path(job.checkpoint_uri)  # the final checkpoint: the adapter and the worker's answers beside it
    assert (last / FINAL_DIR / "adapter_config.json").is_file()
    assert len(json.loads((last / FINAL_PARITY).read_text())["peft"]) == N_PROMPTS
    norms = lora_b_norms(mv.uri)
    assert norms and all(n > 0 for n in norms.values()), "LoRA B starts at zero; training must move it"

    # Held-out exact match, scored here in this process (transformers + PEFT), independently of the
    # job and of the demo's evals (vLLM through the eval service): adapter ≥ 0.9, base ≈ 0.
    assert exact_match(base_model, mv.uri, test_rows)["exact_match"] >= 0.9
    assert exact_match(base_model, None, test_rows, limit=50)["exact_match"] <= 0.05

    # Per-step metrics, from rank 0 only (192 steps / logging_steps 10 = 19 rows per key).
    assert metric_counts["loss"] == 19 and metric_counts["lr"] == 19 and metric_counts["tokens_per_s"] == 19

    # MLflow: the run, with params, per-step metrics, final metrics and the adapter artifact.
    client = MlflowClient(tracking_uri=settings.mlflow)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert client.get_experiment(run.info.experiment_id).name == "reverse-tiny"
    assert run.data.params["hyper.learning_rate"] == "0.002"
    assert len(client.get_metric_history(run_id, "loss")) == 19
    assert run.data.metrics["final_exact_match"] >= 0.9
    assert {f.path for f in client.list_artifacts(run_id, "adapter")} >= {
        "adapter/adapter_config.json", "adapter/adapter_model.safetensors"}
    assert run.info.artifact_uri.startswith((settings.home_abs / "artifacts" / "mlflow").as_uri())



def test_the_stack_stops_and_leaves_nothing(demo_run, tiny_stack):
    """The last check of the shared stack the demo started (tests/stacks.py): `studio down` (what
    ``make demo ARGS=--exit`` runs at the end) leaves no process of it; they all carry its
    STUDIO_HOME."""
    home = demo_run.home
    assert tiny_stack.home == home
    tiny_stack.close()
    assert not (home / "ray-head.json").exists()
    assert [f"{p.pid} {p.name()}" for p in processes_of(str(home))] == []
