"""A stand-in for ``python -m studio.train.run --job-id N`` for scheduler tests: it keeps the
entrypoint's contract (STARTING → RUNNING ⇄ CHECKPOINTING → SUCCEEDED with a registered version,
FAILED with a reason on a Python error, resume from ``job.checkpoint_uri``) and trains nothing.

What it does comes from the first word of the job's name:
``ok`` succeeds · ``crashonce``/``crashalways`` raise after a checkpoint (recording FAILED) ·
``dieonce`` exits with code 3 on attempt 1 without recording anything · ``hang`` runs until stopped ·
``slowstart`` sleeps before it records RUNNING (so the job sits in STARTING on a live Ray job) ·
``gateway`` calls the gateway with the key its environment gives it until it is refused (401), and
records each answer and which secrets its environment holds (``result.gateway``, ``result.env``).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import time

from studio.data.snapshots import resolve_snapshot
from studio.jobs.status import JobStatus, transition
from studio.registry.versions import register_version
from studio.settings import StudioSettings
from studio.store.db import session_scope
from studio.store.models import Job, JobMetric


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--job-id", type=int, required=True)
    job_id = parser.parse_args().job_id
    settings = StudioSettings()
    with session_scope(settings.db_url) as s:
        job = s.get(Job, job_id)
        mode, attempt, resume_from, spec = job.name.split("-")[0], job.attempts, job.checkpoint_uri, job.spec
    print(f"fake-train job {job_id} attempt {attempt} mode {mode}"
          + (f" resuming from {resume_from}" if resume_from else ""), flush=True)
    if mode == "slowstart":
        time.sleep(120)
    if mode == "dieonce" and attempt == 1:
        print("boom: the process dies without a word to the database", flush=True)
        os._exit(3)
    try:
        train(settings, job_id, mode, attempt, resume_from, spec)
    except Exception as e:
        with session_scope(settings.db_url) as s:
            transition(s, job_id, JobStatus.FAILED, f"{type(e).__name__}: {e}")
        raise


def train(settings: StudioSettings, job_id: int, mode: str, attempt: int, resume_from: str | None,
          spec: dict) -> None:
    with session_scope(settings.db_url) as s:
        transition(s, job_id, JobStatus.RUNNING, f"attempt {attempt}: fake workers up")
    if mode == "hang":
        while True:
            time.sleep(0.2)
    if mode == "gateway":
        call_gateway_until_refused(settings, job_id)
        with session_scope(settings.db_url) as s:
            transition(s, job_id, JobStatus.CHECKPOINTING, "nothing to save")
            transition(s, job_id, JobStatus.SUCCEEDED, "the gateway refused this job's key")
        return
    steps = spec["hyper"]["max_steps"]
    for step in range(1, steps + 1):
        with session_scope(settings.db_url) as s:
            s.add(JobMetric(job_id=job_id, attempt=attempt, step=step, key="loss", value=1.0 / step))
    ckpt = f"fake://job-{job_id}/a{attempt}/step-{steps}"
    with session_scope(settings.db_url) as s:
        transition(s, job_id, JobStatus.CHECKPOINTING, f"saving {ckpt}")
        s.get(Job, job_id).checkpoint_uri = ckpt
        transition(s, job_id, JobStatus.RUNNING, "checkpoint saved")
    if mode == "crashalways" or (mode == "crashonce" and attempt == 1):
        raise RuntimeError("fake training diverged")
    with session_scope(settings.db_url) as s:
        transition(s, job_id, JobStatus.CHECKPOINTING, "registering the adapter")
        snapshot = resolve_snapshot(s, spec["data"]["dataset"]).snapshot
        mv = register_version(s, name=spec["name"], base_model=spec["base_model"], method=spec["method"],
                              adapter_type=spec["adapter"], uri=f"fake://job-{job_id}/adapter",
                              dataset_snapshot_id=snapshot.id, job_id=job_id, metrics={"exact_match": 1.0})
        job = s.get(Job, job_id)
        job.result = {"model": f"{mv.name}@{mv.version}", "total_steps": steps, "resumed_from": resume_from}
        transition(s, job_id, JobStatus.SUCCEEDED, f"registered {mv.name}@{mv.version}")
    print(f"fake-train job {job_id} done", flush=True)


def call_gateway_until_refused(settings: StudioSettings, job_id: int, timeout_s: float = 90) -> None:
    """Record the environment's secrets (by name and hash, never the values), then call the
    gateway as a job does (studio.gateway.Client) until it answers 401."""
    from studio.gateway import Client, GatewayError

    watched = [v[::-1] for v in os.environ.get("FAKE_TRAIN_SECRETS", "").split(",") if v]  # sent reversed
    env = {"leaked": sorted(k for k, v in os.environ.items() for s in watched if s in v),
           "api_key_sha256": hashlib.sha256(os.environ["STUDIO_API_KEY"].encode()).hexdigest()
           if os.environ.get("STUDIO_API_KEY") else None,
           "studio_job_id": os.environ.get("STUDIO_JOB_ID")}
    answers: list[dict] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with Client(service="fake-train", job_id=str(job_id), max_retries=0) as client:
                client.models()
            answers.append({"status": 200})
        except GatewayError as e:
            answers.append({"status": e.status, "problem": e.problem})
        with session_scope(settings.db_url) as s:
            s.get(Job, job_id).result = {"gateway": answers[-20:], "env": env}
        if answers[-1]["status"] == 401:
            return
        time.sleep(0.3)
    raise RuntimeError(f"the gateway never refused this job's key: {answers[-3:]}")


if __name__ == "__main__":
    main()
