"""Fault tolerance within an attempt: a Ray Train worker killed mid-training is replaced and the run
resumes from the latest reported checkpoint — the step counter continues, it does not restart — and
the job still ends SUCCEEDED with the result of the resumed run."""

from __future__ import annotations

import signal
import time

import pytest
from sqlalchemy import select

from studio.registry.versions import get_version
from studio.settings import StudioSettings
from studio.store.db import session_scope
from studio.store.models import Job, JobMetric

from .conftest import RECIPES, Entrypoint, tail

pytestmark = pytest.mark.slow

MAX_STEPS = 160
EVERY = 20


def first_checkpoint(home: StudioSettings, proc, deadline_s: float) -> str:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline and proc.poll() is None:
        with session_scope(home.db_url) as s:
            job = s.scalars(select(Job)).first()
            if job is not None and job.checkpoint_uri:
                return job.checkpoint_uri
        time.sleep(0.3)
    raise AssertionError("no checkpoint was reported in time")


def test_killed_worker_resumes_from_checkpoint(home: StudioSettings, entrypoint: Entrypoint):
    proc, log = entrypoint.start(
        "--recipe", str(RECIPES / "sft_reverse_tiny.yaml"), f"hyper.max_steps={MAX_STEPS}",
        f"checkpoint.every_steps={EVERY}", "checkpoint.keep=2", "hyper.logging_steps=5",
        "resources.max_worker_failures=2", "eval_after=null")
    first_checkpoint(home, proc, deadline_s=180)
    victims = entrypoint.ray_head.train_workers(proc.pid)  # this run's, on the package's Ray head
    assert len(victims) == 2, f"expected 2 Ray Train workers, found {len(victims)}"
    assert all("RayTrainWorker" in " ".join(v.cmdline()) for v in victims)  # Ray's process title
    victims[-1].send_signal(signal.SIGKILL)

    try:
        proc.wait(timeout=420)
    except Exception:
        pytest.fail(f"the job did not finish after the kill:\n{tail(log)}")
    output = log.read_text(errors="replace")
    assert proc.returncode == 0, tail(output)

    with session_scope(home.db_url) as s:
        job = s.scalars(select(Job)).one()
        mv = get_version(s, job.result["model"])
        resumed = s.scalars(select(JobMetric).where(JobMetric.job_id == job.id,
                                                    JobMetric.key == "resumed_from_step")).all()
        losses = s.execute(select(JobMetric.id, JobMetric.step).where(JobMetric.job_id == job.id,
                                                                      JobMetric.key == "loss")).all()
    assert job.status == "SUCCEEDED", job.error
    assert job.attempts == 1  # recovered inside the attempt, by Ray Train, not by a job retry

    # Resumed from a reported checkpoint, not from step 0.
    assert len(resumed) == 1, output[-3000:]
    step = int(resumed[0].value)
    assert step > 0 and step % EVERY == 0 and step < MAX_STEPS
    assert mv.metrics["resumed_from_step"] == step
    # The step counter continued: after the resume, logging picks up right after the checkpoint.
    after = sorted(st for i, st in losses if i > resumed[0].id)
    assert after[0] == step + 5 and after[-1] == MAX_STEPS
    # The registered result is the resumed run's: its final step is the planned one.
    assert mv.metrics["global_step"] == MAX_STEPS
