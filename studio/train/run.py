"""The training job entrypoint, a Ray Job driver. Two ways in:

    python -m studio.train.run --job-id 12                                  # the scheduler
    python -m studio.train.run --recipe configs/train/sft_reverse_tiny.yaml lora.r=16   # by hand /
    ray job submit --working-dir . -- python -m studio.train.run --recipe configs/train/X.yaml

Flow: job row (read, or created for a recipe) → preflight (a bad job fails here, before Ray) →
STARTING → RUNNING: Ray Train ``TorchTrainer`` running the method's runner (``sft.py``, ``cpt.py``,
``dpo.py``, ``grpo.py`` with its vLLM rollout actor from ``rollout.py``) → CHECKPOINTING: copy the
final adapter into the artifact store, log it to MLflow, evaluate (``eval_after``), register a model
version with lineage → SUCCEEDED. Any error → FAILED with a one-line reason; retries are the
scheduler's decision, and a retry resumes from the job's latest Ray Train checkpoint (same storage
path and run name).
"""

from __future__ import annotations

import json
import re
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from studio import ray_connection
from studio.cluster import cluster_gpu_capacity, worker_resources
from studio.errors import StudioError
from studio.jobs.driver import EXIT_FAILED, EXIT_REFUSED, JobDriver, ray_submission_id
from studio.jobs.entry import FromFile, job_main
from studio.jobs.status import IllegalTransition, JobStatus, create_job, transition
from studio.recipes import load_recipe
from studio.registry.mlflow_mirror import mirror_best_effort
from studio.registry.versions import register_version
from studio.settings import StudioSettings
from studio.store.artifacts import ArtifactStore
from studio.store.db import session_scope
from studio.store.models import Job
from studio.train import tracking
from studio.train.preflight import ResolvedInputs, preflight
from studio.train.spec import TrainSpec
from studio.train.worker import FINAL_DIR, FINAL_PARITY, RUNNERS, WorkerJob, train_loop_per_worker


def say(msg: str) -> None:
    print(f"[studio.train] {msg}", flush=True)  # a Ray Job's log is its driver's stdout


# ---------------------------------------------------------------- the job row

def absolute_model_path(name: str, settings: StudioSettings) -> str:
    """Ray workers run in another cwd, so a relative model path is made absolute here: against the
    cwd, else against the directory holding STUDIO_HOME (a ``ray job submit --working-dir .`` driver
    runs in a copy of the repo that lacks the git-ignored ``.studio/``). Hub ids pass unchanged."""
    path = Path(name).expanduser()
    if path.is_absolute() or not (name.startswith(".") or path.exists()):
        return name
    for root in (Path.cwd(), settings.home_abs.parent):
        if (root / path).exists():
            return str((root / path).resolve())
    return str((Path.cwd() / path).resolve())  # preflight names the missing path


def job_from_recipe(settings: StudioSettings, recipe: str, overrides: list[str]) -> int:
    spec = load_recipe(recipe, TrainSpec, overrides, home=settings.home_abs)
    spec.base_model = absolute_model_path(spec.base_model, settings)
    with session_scope(settings.db_url) as s:
        job = create_job(s, name=spec.name, spec=spec.model_dump(mode="json", by_alias=True),
                         max_retries=spec.max_retries, submitted_by="ray job submit")
        job.ray_submission_id = ray_submission_id()
        return job.id


def driver(settings: StudioSettings, job_id: int) -> JobDriver:
    return JobDriver(settings.db_url, job_id, kind="train")


def load_job(settings: StudioSettings, job_id: int) -> tuple[TrainSpec, JobStatus]:
    spec, status = driver(settings, job_id).load(TrainSpec)
    spec.base_model = absolute_model_path(spec.base_model, settings)
    return spec, status


def fail(settings: StudioSettings, job_id: int, reason: str, *, stage: str) -> None:
    """FAILED with the reason, unless the job already ended (e.g. CANCELLED while we ran).
    ``stage`` tells the scheduler whether a retry can help: a preflight failure never does."""
    if driver(settings, job_id).fail(reason, error={"stage": stage, "retryable": stage != "preflight"}):
        say(f"job {job_id} FAILED: {reason}")


def failure_reason(exc: BaseException) -> str:
    """One line: a StudioError as is; for a worker's crash, the last ``SomeError: message`` line of
    its traceback (Ray wraps it in TrainingFailedError / WorkerGroupError)."""
    inner = exc
    failures = getattr(exc, "worker_failures", None)
    if isinstance(failures, dict) and failures:
        inner = next(iter(failures.values()))
    if isinstance(inner, StudioError):
        return str(inner)
    lines = [ln.strip() for ln in str(inner).splitlines() if ln.strip()]
    pattern = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Interrupt|Exit)\b")
    last = next((ln for ln in reversed(lines) if pattern.match(ln)), lines[-1] if lines else "")
    return f"{type(exc).__name__}: {last or type(inner).__name__}"[:1000]


# ---------------------------------------------------------------- Ray

def cluster_gpus_before_ray(spec: TrainSpec, settings: StudioSettings) -> float | None:
    """GPUs known without connecting: a local Ray started here sees this machine's GPUs."""
    if not spec.resources.use_gpu or ray_connection.ray_address(settings):
        return None
    import torch

    return float(torch.cuda.device_count())


def make_checkpoint_recorder(db_url: str, job_id: int):
    from ray.train.v2.api.callback import UserCallback

    class RecordCheckpoint(UserCallback):
        """Runs on the Ray Train controller: each persisted checkpoint becomes ``job.checkpoint_uri``."""

        def after_report(self, run_context, metrics, checkpoint):
            if checkpoint is None:
                return
            kind = checkpoint.filesystem.type_name if checkpoint.filesystem is not None else "local"
            uri = checkpoint.path if kind == "local" else f"{kind}://{checkpoint.path}"
            with session_scope(db_url) as s:
                s.get(Job, job_id).checkpoint_uri = uri

    return RecordCheckpoint()


def train_on_ray(settings: StudioSettings, spec: TrainSpec, job_id: int, worker_config: dict[str, Any],
                 callbacks: list | None = None):
    """Run the job's Ray Train ``TorchTrainer``; ``callbacks``: more Ray Train callbacks (a sweep's
    trial adds the one that reports to Ray Tune)."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    r = spec.resources
    # Waits (does not fail) while the cluster cannot place the workers: studio/cluster.py.
    resources = worker_resources(r, settings)
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=worker_config,
        scaling_config=ScalingConfig(num_workers=r.num_workers, use_gpu=r.use_gpu, resources_per_worker=resources,
                                     accelerator_type=r.accelerator_type if r.use_gpu else None),
        torch_config=TorchConfig(backend="nccl" if r.use_gpu else "gloo"),
        run_config=RunConfig(
            # Same name and storage path on every attempt: Ray restores the run's checkpoints.
            name=f"job-{job_id}",
            storage_path=ray_storage_path(settings, job_id),
            failure_config=FailureConfig(max_failures=r.max_worker_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=spec.checkpoint.keep),
            callbacks=[make_checkpoint_recorder(settings.db_url, job_id), *(callbacks or [])],
            # Train V2 patches print() into its logger, which defeats dill's stdout capture: the
            # datasets fingerprinting would dump function bytecode into every worker's log.
            worker_runtime_env={"env_vars": {"RAY_TRAIN_ENABLE_PRINT_PATCH": "0"}},
        ),
    )
    return trainer.fit()


def start_rollout(settings: StudioSettings, spec: TrainSpec, job_id: int, base_model: str):
    """GRPO: the job's vLLM rollout actor (None: HF generate, which ``start_rollout_actor`` announces)."""
    if spec.method != "grpo":
        return None
    from studio.train.rollout import actor_name, start_rollout_actor

    return start_rollout_actor(spec, base_model, actor_name(settings.db_url, job_id), say)


def tracking_dir(settings: StudioSettings, spec: TrainSpec, job_id: int) -> str | None:
    """Where tensorboard event files and offline wandb runs go (``tracking.report_to``):
    ``$STUDIO_HOME/tracking/<name>/job-<id>`` on the node running rank 0."""
    if not set(spec.tracking.report_to) - {"mlflow"}:
        return None
    return str(settings.home_abs / "tracking" / spec.name / f"job-{job_id}")


def ray_storage_path(settings: StudioSettings, job_id: int) -> str:
    store = ArtifactStore(settings.artifacts)
    key = f"jobs/{job_id}/ray"
    return store.path(key) if store.protocol == "file" else store.uri(key)


# ---------------------------------------------------------------- the run

def run_job(settings: StudioSettings, job_id: int, spec: TrainSpec) -> int:
    """Train job ``job_id`` here, beating all along (from before the claim: a beat touches only an
    active row) so the scheduler can tell this process from a dead one when it runs outside Ray."""
    with driver(settings, job_id).beating(settings.job_heartbeat_s):
        return _run_job(settings, job_id, spec)


def _run_job(settings: StudioSettings, job_id: int, spec: TrainSpec) -> int:
    t0 = time.monotonic()
    # 1. preflight, before any Ray Train worker exists
    try:
        if spec.method not in RUNNERS:
            raise StudioError(f"the {spec.method} runner is not available yet",
                              f"use one of {', '.join(sorted(RUNNERS))}")
        with session_scope(settings.db_url) as s:
            inputs = preflight(spec, s, cluster_gpus=cluster_gpus_before_ray(spec, settings))
            job = s.get(Job, job_id)
            # By hand or from a recipe nobody claimed it: STARTING here, one more attempt.
            driver(settings, job_id).claim(s, job, "training entrypoint started")
            if inputs.init_adapter_ref and job.spec.get("init_adapter") != inputs.init_adapter_ref:
                job.spec = {**job.spec, "init_adapter": inputs.init_adapter_ref}  # lineage names name@N
            attempt, mlflow_run_id = job.attempts, job.mlflow_run_id
    except StudioError as e:
        fail(settings, job_id, f"preflight: {e}", stage="preflight")
        return EXIT_REFUSED
    say(f"job {job_id} attempt {attempt}: {spec.method} {spec.adapter} on {inputs.base_model}, "
        f"data {inputs.dataset_ref} ({inputs.snapshot_kind})"
        + (f", starting from adapter {inputs.init_adapter_ref}" if inputs.init_adapter_ref else ""))

    try:
        ray_connection.join_or_start(settings, dashboard=True, log_to_driver=True)
        if spec.resources.use_gpu and ray_connection.ray_address(settings):
            import ray

            with session_scope(settings.db_url) as s:
                preflight(spec, s, cluster_gpus=cluster_gpu_capacity(ray.cluster_resources().get("GPU", 0.0),
                                                                     settings))
    except StudioError as e:
        fail(settings, job_id, f"preflight: {e}", stage="preflight")
        return EXIT_REFUSED
    except Exception as e:  # noqa: BLE001 - e.g. the cluster is unreachable: worth a retry
        fail(settings, job_id, f"cannot reach Ray: {failure_reason(e)}", stage="ray")
        return EXIT_FAILED

    store = ArtifactStore(settings.artifacts)
    try:
        # 2. train
        mlflow_run_id = tracking.start_run(
            settings.mlflow, experiment=spec.name, artifact_root=tracking.artifact_location(store, spec.name),
            run_name=f"job-{job_id}", params=spec.model_dump(mode="json", by_alias=True),
            tags={"studio.job_id": str(job_id), "studio.dataset": inputs.dataset_ref,
                  "studio.snapshot_id": inputs.snapshot_id, "studio.base_model": inputs.base_model,
                  **({"studio.init_adapter": inputs.init_adapter_ref, "studio.init_adapter_uri": inputs.init_adapter_uri}
                     if inputs.init_adapter_uri else {}),
                  **({"studio.eval_dataset": inputs.eval_dataset_ref} if inputs.eval_dataset_ref else {})},
            run_id=mlflow_run_id)
        with session_scope(settings.db_url) as s:
            s.get(Job, job_id).mlflow_run_id = mlflow_run_id
            transition(s, job_id, JobStatus.RUNNING,
                       f"Ray Train: {spec.resources.num_workers} worker(s), attempt {attempt}")
        rollout = start_rollout(settings, spec, job_id, inputs.base_model)
        worker = WorkerJob(spec=spec.model_dump(mode="json", by_alias=True), base_model=inputs.base_model,
                           snapshot_uri=inputs.snapshot_uri, job_id=job_id, attempt=attempt,
                           db_url=settings.db_url, mlflow_uri=settings.mlflow, mlflow_run_id=mlflow_run_id,
                           rollout_actor=rollout.name if rollout else None, init_adapter=inputs.init_adapter_uri,
                           eval_snapshot_uri=inputs.eval_snapshot_uri,
                           tracking_dir=tracking_dir(settings, spec, job_id))
        try:
            result = train_on_ray(settings, spec, job_id, asdict(worker))
        finally:
            if rollout:
                rollout.stop()

        # 3. register
        driver(settings, job_id).to(JobStatus.CHECKPOINTING, "training finished; registering the result")
        outcome = register_result(settings, store, spec, job_id, attempt, inputs, mlflow_run_id, result)
        with session_scope(settings.db_url) as s:  # what progress counts to outlives the attempt's other keys
            totals = {k: v for k, v in (s.get(Job, job_id).result or {}).items() if k in ("total_steps", "epochs")}
        driver(settings, job_id).succeed({**totals, **outcome}, f"registered {outcome['model']}", merge=False)
        tracking.end_run(settings.mlflow, mlflow_run_id, "FINISHED")
        mirror_best_effort(settings, spec.name, say)  # MLflow down: said here, the scheduler catches up
        say(f"job {job_id} SUCCEEDED in {time.monotonic() - t0:.0f} s: {outcome['model']} {outcome['metrics']}")
        return 0
    except IllegalTransition as e:  # e.g. cancelled while training: the job's status is not ours
        say(f"job {job_id} stopped: {e}")
        if mlflow_run_id:
            tracking.end_run(settings.mlflow, mlflow_run_id, "KILLED")
        return EXIT_FAILED
    except Exception as e:  # noqa: BLE001 - every failure must end the job row, with its reason
        fail(settings, job_id, failure_reason(e), stage="train")
        if mlflow_run_id:
            tracking.end_run(settings.mlflow, mlflow_run_id, "FAILED")
        return EXIT_FAILED


def register_result(settings: StudioSettings, store: ArtifactStore, spec: TrainSpec, job_id: int, attempt: int,
                    inputs: ResolvedInputs, mlflow_run_id: str, result) -> dict[str, Any]:
    """Copy the final adapter to ``models/<name>/<job>-<attempt>/``, log it, evaluate, register."""
    if result.checkpoint is None:
        raise StudioError("training ended without reporting a checkpoint", "see the Ray Train worker logs")
    metrics = {k: v for k, v in (result.metrics or {}).items() if isinstance(v, (int, float))}
    with result.checkpoint.as_directory() as ckpt_dir:
        final = Path(ckpt_dir) / FINAL_DIR
        if not final.is_dir():
            raise StudioError(f"the last checkpoint {result.checkpoint.path} holds no final adapter",
                              "see the Ray Train worker logs")
        uri = store.put_dir(final, f"models/{spec.name}/{job_id}-{attempt}")
        tracking.log_artifacts(settings.mlflow, mlflow_run_id, final, "adapter")
        if spec.eval_after is not None:
            from studio.train.evaluate import exact_match_on_dataset

            ev = spec.eval_after
            with session_scope(settings.db_url) as s:
                score = exact_match_on_dataset(s, ev.dataset, inputs.base_model, str(final),
                                               max_new_tokens=ev.max_new_tokens, limit=ev.limit)
            metrics["exact_match"] = score["exact_match"]
            say(f"eval_after {ev.dataset}: exact match {score['exact_match']:.3f} on {score['n']} rows")
        answers = Path(ckpt_dir) / FINAL_PARITY  # computed by rank 0 beside the adapter, when it could
        parity = record_parity(inputs, final, job_id, json.loads(answers.read_text()) if answers.is_file() else None)
    tracking.log_metrics(settings.mlflow, mlflow_run_id, {f"final_{k}": float(v) for k, v in metrics.items()},
                         int(metrics.get("global_step", 0)))
    with session_scope(settings.db_url) as s:
        job = s.get(Job, job_id)
        mv = register_version(s, name=spec.name, base_model=inputs.base_model, method=spec.method,
                              adapter_type=spec.adapter, uri=uri, dataset_snapshot_id=inputs.snapshot_id,
                              job_id=job_id, mlflow_run_id=mlflow_run_id, metrics=metrics,
                              owner_key_id=job.owner_key_id if job is not None else None, parity=parity)
        ref = f"{mv.name}@{mv.version}"
    return {"model": ref, "uri": uri, "metrics": metrics}


def record_parity(inputs: ResolvedInputs, final: Path, job_id: int,
                  answers: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """The adapter's answers to the gate's parity prompts, recorded with the version so the gate
    only asks ``/v1`` (studio.train.parity): ``answers`` from the worker, else computed here. Not
    recorded (the gate then loads the folder itself) when the snapshot has no prompts or generating
    fails; the job does not fail for it."""
    from studio.train.parity import training_record

    try:
        return training_record(inputs.snapshot_uri, inputs.snapshot_id, inputs.base_model, final, job_id, answers)
    except Exception as e:  # noqa: BLE001 - an optimisation for the gate, which can check without it
        say(f"parity answers not recorded ({type(e).__name__}: {e}); the gate will check the folder itself")
        return None


def _from_recipe(settings: StudioSettings, path: str, overrides: list[str]) -> int:
    job_id = job_from_recipe(settings, path, overrides)
    say(f"created job {job_id} from {path}")
    return job_id


def main(argv: list[str] | None = None) -> int:
    return job_main(argv, "python -m studio.train.run", __doc__.splitlines()[0],
                    "train the job with this id (its spec is in the jobs table)", run_job,
                    FromFile("--recipe", "a TrainSpec YAML (configs/train/*.yaml); creates the job row",
                             _from_recipe),
                    load=lambda settings, job_id: load_job(settings, job_id)[0])


if __name__ == "__main__":
    sys.exit(main())
