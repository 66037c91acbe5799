"""A job that cannot run fails in seconds, before Ray is touched: the job row says FAILED with a
reason that names the problem and the fix, marked not retryable, and no Ray Train storage exists."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select

from studio.jobs.status import JobStatus, create_job, transition
from studio.settings import StudioSettings
from studio.store.db import session_scope
from studio.store.models import Job
from studio.train import run
from studio.train.spec import TrainSpec

from .conftest import RECIPES


@pytest.fixture
def env(home: StudioSettings, monkeypatch: pytest.MonkeyPatch) -> StudioSettings:
    """The entrypoint reads its settings from the environment, like on a Ray node."""
    for name in ("STUDIO_DATABASE_URL", "STUDIO_ARTIFACTS_URI", "STUDIO_MLFLOW_URI", "RAY_ADDRESS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("STUDIO_HOME", str(home.home_abs))
    return home


def only_job(settings: StudioSettings) -> Job:
    with session_scope(settings.db_url) as s:
        jobs = s.scalars(select(Job)).all()
        assert len(jobs) == 1
        job = jobs[0]
        job.events  # noqa: B018 - load before the session closes
        return job


def assert_refused(settings: StudioSettings, job: Job, *needles: str) -> None:
    assert job.status == JobStatus.FAILED
    assert job.error.startswith("preflight: ")
    for needle in needles:
        assert needle in job.error, job.error
    assert job.result["error"] == {"stage": "preflight", "retryable": False}
    assert [e.to_status for e in job.events][-1] == "FAILED"
    # Refused before any Ray Train run was set up for it.
    assert not (Path(settings.artifacts) / "jobs" / str(job.id)).exists()


def test_dpo_on_prompt_completion_rows_is_refused(env: StudioSettings):
    rc = run.main(["--recipe", str(RECIPES / "dpo_reverse_tiny.yaml"), "data.dataset=reverse-train"])
    assert rc == run.EXIT_REFUSED
    job = only_job(env)
    assert_refused(env, job, "holds prompt_completion rows", "DPO trains on preference rows",
                   "use a preference dataset")
    # Refused while still QUEUED: it never started, so no attempt was used.
    assert [e.to_status for e in job.events] == ["QUEUED", "FAILED"]
    assert job.attempts == 0


def test_missing_base_model_is_refused(env: StudioSettings, tmp_path: Path):
    missing = tmp_path / "no-such-model"
    rc = run.main(["--recipe", str(RECIPES / "sft_reverse_tiny.yaml"), f"base_model={missing}"])
    assert rc == run.EXIT_REFUSED
    assert_refused(env, only_job(env), f"model path {missing} does not exist", "make-tiny")


def test_gpu_job_without_gpus_is_refused(env: StudioSettings):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    rc = run.main(["--recipe", str(RECIPES / "sft_reverse_tiny.yaml"), "resources.use_gpu=true"])
    assert rc == run.EXIT_REFUSED
    assert_refused(env, only_job(env), "asks for 2 GPU(s) (use_gpu: true) but the Ray cluster has 0",
                   "resources.use_gpu=false")


def test_deepspeed_on_cpu_workers_is_refused(env: StudioSettings):
    rc = run.main(["--recipe", str(RECIPES / "sft_reverse_tiny.yaml"), "deepspeed.stage=2"])
    assert rc == run.EXIT_REFUSED
    assert_refused(env, only_job(env), "a deepspeed section needs GPU workers", "remove the deepspeed section")


def test_grpo_full_finetune_with_vllm_rollouts_is_refused(env: StudioSettings):
    rc = run.main(["--recipe", str(RECIPES / "grpo_reverse_tiny.yaml"), "adapter=full"])
    assert rc == run.EXIT_REFUSED
    assert_refused(env, only_job(env), "GRPO with vLLM rollouts trains a LoRA adapter", "grpo.rollout.engine=hf")


def test_grpo_reward_that_cannot_be_imported_is_refused(env: StudioSettings, monkeypatch):
    monkeypatch.setenv("STUDIO_REWARD_ALLOWLIST", "no_such_pkg.rewards:*")  # allowed, so the import is tried
    rc = run.main(["--recipe", str(RECIPES / "grpo_reverse_tiny.yaml"),
                   'grpo.rewards=[{type: python, callable: "no_such_pkg.rewards:score"}]'])
    assert rc == run.EXIT_REFUSED
    assert_refused(env, only_job(env), "module 'no_such_pkg.rewards' cannot be imported", "check the module path")


def test_scheduler_job_id_path_fails_a_bad_job_from_starting(env: StudioSettings):
    """The scheduler's way: the job row exists and is STARTING; the spec comes from the row."""
    spec = TrainSpec.model_validate({"name": "bad", "method": "sft", "base_model": "/nope/model",
                                     "data": {"dataset": "reverse-train"}})
    with session_scope(env.db_url) as s:
        job = create_job(s, name=spec.name, spec=spec.model_dump(mode="json", by_alias=True),
                         max_retries=2, submitted_by="test")
        transition(s, job.id, JobStatus.STARTING, "attempt 1")
        job.attempts = 1
        job_id = job.id
    assert run.main(["--job-id", str(job_id)]) == run.EXIT_REFUSED
    job = only_job(env)
    assert_refused(env, job, "model path /nope/model does not exist")
    assert [e.to_status for e in job.events] == ["QUEUED", "STARTING", "FAILED"]


def test_a_running_job_is_not_started_twice(env: StudioSettings, capsys: pytest.CaptureFixture):
    with session_scope(env.db_url) as s:
        job = create_job(s, name="x", spec={"name": "x"}, max_retries=0, submitted_by="test")
        transition(s, job.id, JobStatus.STARTING, "attempt 1")
        transition(s, job.id, JobStatus.RUNNING, "someone else runs it")
        job_id = job.id
    assert run.main(["--job-id", str(job_id)]) == run.EXIT_REFUSED
    assert f"job {job_id} is RUNNING" in capsys.readouterr().err
    assert only_job(env).status == JobStatus.RUNNING  # untouched


def test_failure_reason_is_the_workers_last_error_line():
    class WorkerGroupError(RuntimeError):
        def __init__(self, failures):
            super().__init__("Training failed due to worker errors")
            self.worker_failures = failures

    crash = RuntimeError("Traceback (most recent call last):\n  File \"x.py\", line 1\n"
                         "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2 GiB")
    reason = run.failure_reason(WorkerGroupError({1: crash}))
    assert reason == "WorkerGroupError: torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2 GiB"
    assert "\n" not in reason
