"""The sweep job entrypoint, a Ray Job driver running Ray Tune. Two ways in:

    python -m studio.train.sweep_run --job-id 12                                   # the scheduler
    ray job submit --working-dir . -- python -m studio.train.sweep_run --recipe configs/sweeps/X.yaml

Flow: the sweep's row (kind ``sweep``) → STARTING → RUNNING with its MLflow *parent* run → a Ray Tune
``Tuner`` (random search or Optuna's TPE, ASHA on the metric, ``max_concurrent_trials`` from the
cluster's CPUs/GPUs) whose trainable is one trial: a training job row (``parent_id`` = the sweep),
its own MLflow run under the parent, a Ray Train ``TorchTrainer`` run of the trial's recipe whose
checkpoint reports reach Tune (``TuneReportCallback``) → the best finished trial is registered (only
it, through ``run.register_result``) → SUCCEEDED. A cancel stops every trial; a retry restores the
Tune experiment (``Tuner.restore``): finished trials are kept, interrupted ones run again.
"""

from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import asdict
from types import SimpleNamespace
from typing import Any

from ray.tune import Stopper
from sqlalchemy import select

from studio import ray_connection
from studio.errors import StudioError
from studio.jobs.driver import EXIT_FAILED, EXIT_REFUSED, JobDriver, ray_submission_id
from studio.jobs.entry import FromFile, job_main
from studio.jobs.status import JobStatus, create_job, transition
from studio.settings import StudioSettings, settings_env
from studio.store.artifacts import ArtifactStore
from studio.store.db import session_scope
from studio.store.models import Job, JobMetric, utcnow
from studio.train import tracking
from studio.train.preflight import ResolvedInputs, preflight
from studio.train.sweep import SweepSpec, load_sweep
from studio.train.worker import WorkerJob

TUNE_DIR = "tune"  # jobs/<sweep id>/tune/sweep-<id>: Tune's experiment (what a retry restores)
TRIAL_CPU = 0.01  # a trial's Tune actor only drives its Ray Train run; it still counts against the CPUs
ACTIVE = (JobStatus.QUEUED, JobStatus.STARTING, JobStatus.RUNNING, JobStatus.CHECKPOINTING)  # a trial not yet ended


def say(msg: str) -> None:
    print(f"[studio.sweep] {msg}", flush=True)


def driver(settings: StudioSettings, job_id: int) -> JobDriver:
    return JobDriver(settings.db_url, job_id, kind="sweep", noun="sweep",
                     start_new="submit the sweep again (`studio train sweep FILE`)")


# ---------------------------------------------------------------- one trial (runs in a Tune actor)

def tune_report_callback(metric: str):
    """Ray Tune's ``TuneReportCallback`` forwarding only the reports that carry the sweep's metric
    (a trial's checkpoints after an evaluation): Tune requires it in every result."""
    from ray.tune.integration.ray_train import TuneReportCallback

    class ReportMetric(TuneReportCallback):
        def after_report(self, run_context, metrics, checkpoint):
            if metrics and metric in metrics[0]:
                super().after_report(run_context, metrics, checkpoint)

    return ReportMetric()


def run_trial(config: dict[str, Any], ctx: dict[str, Any]) -> None:
    """One trial: a child training job trained by Ray Train, its metric reported to Tune."""
    import ray.tune

    from studio.train.run import fail, failure_reason, start_rollout, train_on_ray

    os.environ.update(ctx["env"])  # this actor's settings are the sweep's
    settings = StudioSettings()
    sweep = SweepSpec.model_validate(ctx["sweep"])
    inputs = ResolvedInputs(**ctx["inputs"])
    trial_id = ray.tune.get_context().get_trial_id()
    done = finished_trial(settings, ctx["sweep_id"], trial_id)
    if done is not None:  # an earlier attempt trained it; Tune's experiment state had not recorded that yet
        job_id, final = done
        print(f"[studio.sweep] trial {trial_id} already finished as job {job_id} (an earlier attempt): "
              "its result is reported again, not trained twice", flush=True)
        ray.tune.report({**final, "trial_job_id": job_id, "finished": 1})
        return
    params = {field: config[field] for field in sweep.space}
    spec = sweep.trial_spec(params, trial_id)
    if sweep.metric != "exact_match":
        spec.eval_after = None  # the best trial's eval_after runs once, when it is registered
    dumped = spec.model_dump(mode="json", by_alias=True)
    with session_scope(settings.db_url) as s:
        job = create_job(s, name=spec.name, spec=dumped, max_retries=0, submitted_by=f"sweep:{ctx['sweep_id']}",
                         owner_key_id=ctx["owner_key_id"])
        job.parent_id, job.ray_submission_id = ctx["sweep_id"], ctx["submission_id"]
        job.result = {"sweep_trial": trial_id, "params": params}
        transition(s, job.id, JobStatus.STARTING, f"trial {trial_id} of sweep {ctx['sweep_id']}")
        job.attempts, job.heartbeat_at = 1, utcnow()
        job_id = job.id
    run_id = tracking.start_run(
        settings.mlflow, experiment=spec.name,
        artifact_root=tracking.artifact_location(ArtifactStore(settings.artifacts), spec.name),
        run_name=f"job-{job_id}", params=dumped,
        tags={"studio.job_id": str(job_id), "studio.sweep_job_id": str(ctx["sweep_id"]),
              "studio.sweep_trial": trial_id, "studio.dataset": inputs.dataset_ref,
              **({"mlflow.parentRunId": ctx["parent_run_id"]} if ctx["parent_run_id"] else {})})
    with session_scope(settings.db_url) as s:
        s.get(Job, job_id).mlflow_run_id = run_id
        transition(s, job_id, JobStatus.RUNNING, f"Ray Train: {spec.resources.num_workers} worker(s), "
                   f"{', '.join(f'{k}={v!r}' for k, v in params.items())}")
    trial = JobDriver(settings.db_url, job_id, kind="train")
    rollout = None
    try:
        with trial.beating(settings.job_heartbeat_s):
            rollout = start_rollout(settings, spec, job_id, inputs.base_model)  # GRPO: the trial's vLLM actor
            worker = WorkerJob(spec=dumped, base_model=inputs.base_model, snapshot_uri=inputs.snapshot_uri,
                               job_id=job_id, attempt=1, db_url=settings.db_url, mlflow_uri=settings.mlflow,
                               mlflow_run_id=run_id, rollout_actor=rollout.name if rollout else None,
                               init_adapter=inputs.init_adapter_uri, eval_snapshot_uri=inputs.eval_snapshot_uri)
            try:
                result = train_on_ray(settings, spec, job_id, asdict(worker),
                                      callbacks=[tune_report_callback(sweep.metric)])
            finally:
                if rollout:
                    rollout.stop()
            final = {k: float(v) for k, v in (result.metrics or {}).items() if isinstance(v, (int, float))}
            trial.to(JobStatus.CHECKPOINTING, "trial finished; scoring it")
            final.update(trial_score(settings, sweep, spec, inputs, job_id, result))
    except Exception as e:  # noqa: BLE001 - the trial's row ends with its reason; Tune records the error
        fail(settings, job_id, failure_reason(e), stage="train")
        tracking.end_run(settings.mlflow, run_id, "FAILED")
        raise
    tracking.log_metrics(settings.mlflow, run_id, {f"final_{k}": v for k, v in final.items()},
                         int(final.get("global_step", 0)))
    trial.succeed({"metrics": final, "sweep_trial": trial_id, "params": params},
                  f"trial done: {sweep.metric} {final[sweep.metric]:.4g} (not registered: the sweep "
                  "registers its best trial)")
    tracking.end_run(settings.mlflow, run_id, "FINISHED")
    ray.tune.report({**final, "trial_job_id": job_id, "finished": 1})


def finished_trial(settings: StudioSettings, sweep_id: int, trial_id: str) -> tuple[int, dict[str, float]] | None:
    """The SUCCEEDED trial job of this sweep that ran Tune trial ``trial_id``, and its final metrics.

    A retry restores Tune's experiment from its last saved state (written every ~10 s), so a trial
    that finished just before the sweep's process died may come back as unfinished under the same
    trial id: its job row, not Tune's state, says it is done."""
    with session_scope(settings.db_url) as s:
        for job in s.scalars(select(Job).where(Job.parent_id == sweep_id, Job.status == JobStatus.SUCCEEDED)):
            result = job.result or {}
            if result.get("sweep_trial") == trial_id and result.get("metrics"):
                return job.id, {k: float(v) for k, v in result["metrics"].items() if isinstance(v, (int, float))}
    return None


def trial_score(settings: StudioSettings, sweep: SweepSpec, spec, inputs: ResolvedInputs, job_id: int,
                result) -> dict[str, float]:
    """The trial's metric at its end: its last logged eval_loss, or eval_after's exact match."""
    if sweep.metric == "eval_loss":
        with session_scope(settings.db_url) as s:
            value = s.scalars(select(JobMetric.value).where(JobMetric.job_id == job_id, JobMetric.key == "eval_loss")
                              .order_by(JobMetric.step.desc(), JobMetric.id.desc()).limit(1)).first()
        if value is None:
            raise StudioError("the trial logged no eval_loss", "set eval.eval_steps to at most the trial's steps")
        return {"eval_loss": float(value)}
    from studio.train.evaluate import exact_match_on_dataset
    from studio.train.worker import FINAL_DIR

    ev = spec.eval_after
    with result.checkpoint.as_directory() as ckpt, session_scope(settings.db_url) as s:
        score = exact_match_on_dataset(s, ev.dataset, inputs.base_model, os.path.join(ckpt, FINAL_DIR),
                                       max_new_tokens=ev.max_new_tokens, limit=ev.limit)
    return {"exact_match": float(score["exact_match"])}


# ---------------------------------------------------------------- the Tuner

class CancelStopper(Stopper):
    """Tune's ``Stopper``: stops every trial once the sweep's cancel was asked for (read at most
    every 2 s). The scheduler also stops the sweep's Ray Job; this covers a sweep run by hand."""

    def __init__(self, db_url: str, job_id: int):
        self.db_url, self.job_id, self._at, self._cancel = db_url, job_id, 0.0, False

    def __call__(self, trial_id: str, result: dict) -> bool:
        return self._cancel

    def stop_all(self) -> bool:
        if not self._cancel and time.monotonic() - self._at > 2:
            self._at = time.monotonic()
            with session_scope(self.db_url) as s:
                self._cancel = bool(s.get(Job, self.job_id).cancel_requested)
        return self._cancel


def stopped_trials_callback(settings: StudioSettings, job_id: int, spec: SweepSpec):
    """A Tune ``Callback``: a trial the scheduler stops (ASHA) ends CANCELLED when Tune stops it,
    before its actor goes, not when the sweep ends. Its time is then its own, and the teardown of
    its Ray Train run (an ActorDiedError in the trial) does not end it FAILED (``fail`` leaves an
    ended job alone). A trial that finished, or one the sweep's cancel stopped, is left as it is."""
    from ray.tune import Callback

    class MarkStopped(Callback):
        def on_trial_complete(self, iteration, trials, trial, **info):
            last = trial.last_result or {}
            if last.get("finished"):
                return
            try:
                if cancel_requested(settings, job_id):
                    return  # end_trials says "the sweep was cancelled"
                with session_scope(settings.db_url) as s:
                    for child in s.scalars(select(Job).where(Job.parent_id == job_id, Job.status.in_(ACTIVE))):
                        if (child.result or {}).get("sweep_trial") == trial.trial_id:
                            value = last.get(spec.metric)
                            transition(s, child.id, JobStatus.CANCELLED,
                                       f"stopped early by {spec.scheduler.upper()} after "
                                       f"{last.get('training_iteration', 0)} report(s)"
                                       + (f" ({spec.metric} {value:.4g})" if _finite(value) else ""))
            except Exception as e:  # noqa: BLE001 - bookkeeping only: the sweep's end marks it otherwise
                say(f"trial {trial.trial_id} stopped; its job row was not updated: {e}")

    return MarkStopped()


def concurrent_trials(spec: SweepSpec, settings: StudioSettings, cluster: dict[str, float] | None = None) -> int:
    """Trials the cluster holds at once: for every resource a trial reserves (its Tune actor's
    CPU, its Ray Train workers' CPUs, GPUs and custom resources), the cluster's amount over the
    trial's; at most the spec's ``max_concurrent_trials`` and ``num_trials``, at least 1.
    ``cluster``: ``ray.cluster_resources()`` by default."""
    import ray

    from studio.cluster import worker_resources

    r = spec.train.resources
    total = ray.cluster_resources() if cluster is None else cluster
    per_trial = {k: v * r.num_workers for k, v in worker_resources(r, settings).items() if v > 0}
    per_trial["CPU"] = per_trial.get("CPU", 0.0) + TRIAL_CPU
    # 1e-9: 0.9 GPUs over 3 x 0.3 is 3 trials, not float division's 2.
    n = max(1, min(int(total.get(k, 0.0) / v + 1e-9) for k, v in per_trial.items()))
    return min(n, spec.num_trials, spec.max_concurrent_trials or n)


def make_tuner(settings: StudioSettings, spec: SweepSpec, job_id: int, attempt: int, ctx: dict[str, Any]):
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    store = ArtifactStore(settings.artifacts)
    storage = store.path(f"jobs/{job_id}/{TUNE_DIR}") if store.protocol == "file" else store.uri(f"jobs/{job_id}/{TUNE_DIR}")
    name = f"sweep-{job_id}"
    trainable = tune.with_resources(tune.with_parameters(run_trial, ctx=ctx), {"cpu": TRIAL_CPU})
    experiment = f"{storage.rstrip('/')}/{name}"
    if attempt > 1 and tune.Tuner.can_restore(experiment):
        say(f"restoring the Tune experiment {experiment}: finished trials are kept, unfinished ones run again")
        return tune.Tuner.restore(experiment, trainable=trainable, resume_unfinished=True, resume_errored=False,
                                  restart_errored=True)
    search = None
    if spec.search == "optuna":
        from ray.tune.search.optuna import OptunaSearch

        search = OptunaSearch(seed=spec.seed)
    scheduler = (ASHAScheduler(time_attr="training_iteration", max_t=10**6, grace_period=spec.asha.grace_period,
                               reduction_factor=spec.asha.reduction_factor)
                 if spec.scheduler == "asha" else FIFOScheduler())
    limit = concurrent_trials(spec, settings)
    say(f"{spec.num_trials} trial(s), {spec.search} search, {spec.scheduler} on {spec.metric} ({spec.best_mode}), "
        f"up to {limit} at once")
    if spec.search == "random" and spec.seed is not None:
        import random

        import numpy as np

        random.seed(spec.seed)
        np.random.seed(spec.seed)
    return tune.Tuner(
        trainable, param_space={k: d.tune() for k, d in spec.domains().items()},
        tune_config=tune.TuneConfig(metric=spec.metric, mode=spec.best_mode, search_alg=search, scheduler=scheduler,
                                    num_samples=spec.num_trials, max_concurrent_trials=limit),
        run_config=tune.RunConfig(name=name, storage_path=storage, stop=CancelStopper(settings.db_url, job_id),
                                  callbacks=[stopped_trials_callback(settings, job_id, spec)], verbose=1))


# ---------------------------------------------------------------- the sweep

def run_sweep(settings: StudioSettings, job_id: int, spec: SweepSpec) -> int:
    with driver(settings, job_id).beating(settings.job_heartbeat_s):
        return _run_sweep(settings, job_id, spec)


def _run_sweep(settings: StudioSettings, job_id: int, spec: SweepSpec) -> int:
    t0 = time.monotonic()
    try:
        spec.domains()
        with session_scope(settings.db_url) as s:
            inputs = preflight(spec.train, s)
            job = s.get(Job, job_id)
            attempt = driver(settings, job_id).claim(s, job, "sweep driver started")
            parent_run, owner, sid = job.mlflow_run_id, job.owner_key_id, job.ray_submission_id
            interrupted = list(s.scalars(select(Job).where(Job.parent_id == job_id, Job.status.in_(ACTIVE))))
            for child in interrupted:  # an earlier attempt's trials that were running when it stopped
                transition(s, child.id, JobStatus.FAILED, f"interrupted: sweep {job_id} restarted (attempt {attempt})")
            # Their MLflow runs too (also those the scheduler already FAILED: nobody ended the runs).
            stale = [c.mlflow_run_id for c in s.scalars(select(Job).where(
                Job.parent_id == job_id, Job.status == JobStatus.FAILED)) if c.mlflow_run_id] if attempt > 1 else []
    except StudioError as e:
        if driver(settings, job_id).fail(f"preflight: {e}", error={"stage": "preflight", "retryable": False}):
            say(f"sweep {job_id} FAILED: preflight: {e}")
        return EXIT_REFUSED
    try:
        ray_connection.join_or_start(settings, dashboard=True, log_to_driver=True)
    except Exception as e:  # noqa: BLE001 - the cluster is unreachable: worth a retry
        driver(settings, job_id).fail(f"cannot reach Ray: {e}", error={"stage": "ray", "retryable": True})
        return EXIT_FAILED
    for run_id in stale:
        if tracking.run_status(settings.mlflow, run_id) == "RUNNING":
            tracking.end_run(settings.mlflow, run_id, "FAILED")
    store = ArtifactStore(settings.artifacts)
    parent_run = tracking.start_run(
        settings.mlflow, experiment=spec.train.name, artifact_root=tracking.artifact_location(store, spec.train.name),
        run_name=f"sweep-{job_id}", params={k: v for k, v in spec.model_dump(mode="json").items() if k != "train"},
        tags={"studio.job_id": str(job_id), "studio.kind": "sweep", "studio.dataset": inputs.dataset_ref},
        run_id=parent_run)
    with session_scope(settings.db_url) as s:
        s.get(Job, job_id).mlflow_run_id = parent_run
        transition(s, job_id, JobStatus.RUNNING, f"Ray Tune: {spec.num_trials} trial(s), attempt {attempt}")
    ctx = {"sweep": spec.model_dump(mode="json", by_alias=True), "sweep_id": job_id, "inputs": asdict(inputs),
           "env": settings_env(settings), "owner_key_id": owner, "submission_id": sid or ray_submission_id(),
           "parent_run_id": parent_run}
    try:
        grid = make_tuner(settings, spec, job_id, attempt, ctx).fit()
        if cancel_requested(settings, job_id):
            stopped = end_trials(settings, job_id, JobStatus.CANCELLED, "the sweep was cancelled")
            driver(settings, job_id).record_cancel(f"cancelled; {stopped} running trial(s) stopped")
            tracking.end_run(settings.mlflow, parent_run, "KILLED")
            say(f"sweep {job_id} CANCELLED")
            return EXIT_FAILED
        end_trials(settings, job_id, JobStatus.CANCELLED, f"stopped by Tune ({spec.scheduler} on {spec.metric})")
        finished = [r for r in grid if (r.metrics or {}).get("finished") and _finite(r.metrics.get(spec.metric))]
        if not finished:
            errors = [str(r.error).strip().splitlines()[-1] for r in grid if r.error is not None]
            raise StudioError(f"no trial of sweep {job_id} finished" + (f": {errors[0]}" if errors else ""),
                              "see the trials' jobs (studio jobs show) and their logs")
        best = best_trial(spec, finished)
        driver(settings, job_id).to(JobStatus.CHECKPOINTING, f"best trial: job {best.metrics['trial_job_id']}; registering it")
        outcome = register_best(settings, store, spec, inputs, int(best.metrics["trial_job_id"]), best.config)
        tracking.log_metrics(settings.mlflow, parent_run, {f"best_{spec.metric}": float(best.metrics[spec.metric])}, 0)
        summary = {"model": outcome["model"], "best_trial_job_id": int(best.metrics["trial_job_id"]),
                   "best_params": {k: best.config[k] for k in spec.space}, "metric": spec.metric,
                   f"best_{spec.metric}": float(best.metrics[spec.metric]), "trials": len(list(grid)),
                   "finished_trials": len(finished), "wall_s": round(time.monotonic() - t0, 1)}
        driver(settings, job_id).succeed(summary, f"registered {outcome['model']} (trial job "
                                         f"{summary['best_trial_job_id']})", merge=False)
        tracking.end_run(settings.mlflow, parent_run, "FINISHED")
        say(f"sweep {job_id} SUCCEEDED in {summary['wall_s']:.0f} s: {outcome['model']} {summary['best_params']}")
        return 0
    except Exception as e:  # noqa: BLE001 - every failure ends the sweep row, with its reason
        from studio.train.run import failure_reason

        end_trials(settings, job_id, JobStatus.FAILED, "the sweep failed")
        if driver(settings, job_id).fail(failure_reason(e), error={"stage": "train", "retryable": True}):
            say(f"sweep {job_id} FAILED: {failure_reason(e)}")
        tracking.end_run(settings.mlflow, parent_run, "FAILED")
        return EXIT_FAILED


def best_trial(spec: SweepSpec, finished: list):
    """The finished trial (a Tune ``Result``) the sweep registers: the lowest eval_loss, the
    highest exact_match (``spec.best_mode``)."""
    pick = min if spec.best_mode == "min" else max
    return pick(finished, key=lambda r: r.metrics[spec.metric])


def cancel_requested(settings: StudioSettings, job_id: int) -> bool:
    with session_scope(settings.db_url) as s:
        return bool(s.get(Job, job_id).cancel_requested)


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


def end_trials(settings: StudioSettings, job_id: int, status: JobStatus, why: str) -> int:
    """Trials of the sweep still active (Tune stopped them: ASHA, a cancel) end as ``status``."""
    with session_scope(settings.db_url) as s:
        rows = list(s.scalars(select(Job).where(Job.parent_id == job_id, Job.status.in_(ACTIVE))))
        for child in rows:
            transition(s, child.id, status, why)
    return len(rows)


def register_best(settings: StudioSettings, store: ArtifactStore, spec: SweepSpec, inputs: ResolvedInputs,
                  trial_job_id: int, config: dict[str, Any]) -> dict[str, Any]:
    """The best trial registered as the training run it was (its job, its MLflow run, its last
    checkpoint's adapter, ``eval_after`` of the sweep's recipe)."""
    from ray.train import Checkpoint

    from studio.train.run import register_result

    with session_scope(settings.db_url) as s:
        trial = s.get(Job, trial_job_id)
        uri, run_id, metrics = trial.checkpoint_uri, trial.mlflow_run_id, dict((trial.result or {}).get("metrics") or {})
    if not uri:
        raise StudioError(f"trial job {trial_job_id} recorded no checkpoint", "see its Ray Train logs")
    spec_best = spec.trial_spec({k: config[k] for k in spec.space}, f"job {trial_job_id}")
    result = SimpleNamespace(checkpoint=Checkpoint(uri), metrics=metrics)
    outcome = register_result(settings, store, spec_best, trial_job_id, 1, inputs, run_id, result)
    with session_scope(settings.db_url) as s:
        trial = s.get(Job, trial_job_id)
        trial.result = {**(trial.result or {}), "model": outcome["model"], "uri": outcome["uri"]}
    return outcome


def _from_file(settings: StudioSettings, path: str, overrides: list[str]) -> int:
    from studio.train.run import absolute_model_path
    from studio.train.sweep import enqueue_sweep_job

    spec = load_sweep(path, overrides, home=settings.home_abs)
    spec.train.base_model = absolute_model_path(spec.train.base_model, settings)
    with session_scope(settings.db_url) as s:
        job = enqueue_sweep_job(s, spec, "ray job submit")
        job.ray_submission_id = ray_submission_id()
        job_id = job.id
    say(f"created sweep job {job_id} from {path}")
    return job_id


def main(argv: list[str] | None = None) -> int:
    return job_main(argv, "python -m studio.train.sweep_run", __doc__.splitlines()[0],
                    "run the sweep job with this id (its spec is in the jobs table)", run_sweep,
                    FromFile("--recipe", "a sweep YAML (configs/sweeps/*.yaml); creates the job row", _from_file),
                    load=lambda settings, job_id: driver(settings, job_id).load(SweepSpec)[0])


if __name__ == "__main__":
    sys.exit(main())
