"""The eval job entrypoint (a Ray Job driver when the scheduler starts it). Two ways in:

    python -m studio.evals.run --job-id 12                                   # the scheduler
    python -m studio.evals.run --spec configs/eval/reverse_tiny.yaml models=[tiny,rev@1]   # by hand

Flow: job row (kind ``eval``) → STARTING → RUNNING: ``EvalRun`` (completions through the gateway,
scores stored per datapoint as they arrive) → CHECKPOINTING: the leaderboard is written to
``job.result`` → SUCCEEDED. An error → FAILED with the reason; a retry (the scheduler's decision)
resumes, skipping the datapoints already stored. A cancelled job stops within a second.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable
from typing import Any

from studio.errors import StudioError
from studio.evals.leaderboard import run_leaderboard
from studio.evals.queue import KIND, enqueue_eval
from studio.evals.runner import EvalRun, RunCancelled
from studio.evals.spec import EvalSpec, runs_lm_eval
from studio.jobs.driver import EXIT_FAILED, EXIT_REFUSED, JobDriver, ray_submission_id
from studio.jobs.entry import FromFile, job_main
from studio.jobs.status import IllegalTransition, JobStatus, transition
from studio.recipes import load_recipe
from studio.settings import StudioSettings
from studio.store.db import session_scope
from studio.store.models import Job


def say(msg: str) -> None:
    print(f"[studio.evals] {msg}", flush=True)


def driver(db_url: str, job_id: int) -> JobDriver:
    return JobDriver(db_url, job_id, kind=KIND, noun="eval", listing="studio eval ls",
                     start_new="start a new eval with `studio eval run`")


def claim(db_url: str, job_id: int) -> EvalSpec:
    """Check the row is a startable eval and move it to RUNNING (via STARTING when nobody claimed it)."""
    d = driver(db_url, job_id)
    with session_scope(db_url) as s:
        job = d.check(s)
        spec = EvalSpec.model_validate(job.spec)
        attempt = d.claim(s, job, "eval entrypoint started")
        transition(s, job_id, JobStatus.RUNNING,
                   f"evaluating {len(spec.models)} model(s) on "
                   f"{_tasks(spec) if runs_lm_eval(spec) else spec.dataset}, attempt {attempt}")
        return spec


def _tasks(spec: EvalSpec) -> str:
    return "lm-eval task(s) " + ", ".join(s.task for s in spec.scorers)


def create_here(db_url: str, spec: EvalSpec, by: str, models_available: Any = "gateway") -> int:
    """Queue ``spec`` and claim it for this process in one transaction (STARTING with no Ray
    submission id), so the studio's scheduler never starts it a second time."""
    kwargs = {} if models_available == "gateway" else {"models_available": models_available}
    with session_scope(db_url) as s:
        job = enqueue_eval(s, spec, submitted_by=by, **kwargs)
        transition(s, job.id, JobStatus.STARTING, f"run in-process by {by}")
        job.attempts, job.ray_submission_id = 1, ray_submission_id()
        return job.id


def fail(db_url: str, job_id: int, reason: str) -> None:
    driver(db_url, job_id).fail(reason)
    say(f"eval {job_id} FAILED: {reason}")


def run_job(settings: StudioSettings, job_id: int, client: Any = None,
            on_result: Callable[[dict[str, Any]], None] | None = None) -> int:
    """Run eval ``job_id`` to its end here, recording every transition and beating meanwhile.
    ``client``: a gateway Client (default: one for this job, capped at the spec's concurrency)."""
    with driver(settings.db_url, job_id).beating(settings.job_heartbeat_s):
        return _run_job(settings, job_id, client, on_result)


def _run_job(settings: StudioSettings, job_id: int, client: Any,
             on_result: Callable[[dict[str, Any]], None] | None) -> int:
    t0 = time.monotonic()
    if client is None:
        from studio.gateway import preload_sdk

        preload_sdk()  # the gateway client's SDK: imported at start, not in the first answer's time
    try:
        spec = claim(settings.db_url, job_id)
    except StudioError as e:
        say(f"eval {job_id} not started: {e}")
        return EXIT_REFUSED
    own_client = client is None
    if own_client:
        from studio.gateway import Client

        client = Client(service="eval", job_id=f"eval-{job_id}", max_concurrency=spec.concurrency)
    try:
        if runs_lm_eval(spec):
            from studio.evals.harness import LmEvalRun

            run = LmEvalRun(settings.db_url, job_id, spec, client)
        else:
            run = EvalRun(settings.db_url, job_id, spec, client, on_result=on_result)
        summary = asyncio.run(run.run())
        # Committed before the leaderboard is computed: the event says when answering ended.
        driver(settings.db_url, job_id).to(JobStatus.CHECKPOINTING,
                                           "all datapoints answered and scored; writing the leaderboard")
        with session_scope(settings.db_url) as s:
            job = s.get(Job, job_id)
            board = run_leaderboard(s, job)
            job.result = {**(job.result or {}), **summary, "leaderboard": board}
            what = (f"{summary['answered']} task documents answered" if runs_lm_eval(spec)
                    else f"{summary['rows']} rows × {len(spec.models)} models")
            transition(s, job_id, JobStatus.SUCCEEDED, f"{what} in {time.monotonic() - t0:.0f} s")
        say(f"eval {job_id} SUCCEEDED: {summary}")
        return 0
    except (RunCancelled, IllegalTransition) as e:
        # Run outside Ray (`--spec`, `studio eval run --here`) no scheduler stops it: record it here.
        driver(settings.db_url, job_id).record_cancel("cancelled on request while RUNNING; stored results kept")
        say(f"eval {job_id} stopped: {e}")
        return EXIT_FAILED
    except Exception as e:  # noqa: BLE001 - every failure must end the job row, with its reason
        fail(settings.db_url, job_id, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:1000])
        return EXIT_FAILED
    finally:
        if own_client:
            client.close()


def _from_spec(settings: StudioSettings, path: str, overrides: list[str]) -> int:
    job_id = create_here(settings.db_url, load_recipe(path, EvalSpec, overrides), "python -m studio.evals.run")
    say(f"created eval {job_id} from {path}")
    return job_id


def main(argv: list[str] | None = None) -> int:
    return job_main(argv, "python -m studio.evals.run", __doc__.splitlines()[0],
                    "run the eval with this id (its spec is in the jobs table)", run_job,
                    FromFile("--spec", "an EvalSpec YAML (configs/eval/*.yaml); creates the eval row", _from_spec))


if __name__ == "__main__":
    sys.exit(main())
