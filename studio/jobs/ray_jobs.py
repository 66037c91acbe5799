"""The studio's side of the Ray Jobs API: finding the cluster's Jobs endpoint, deterministic
submission ids, and reading a job's status and logs without tripping over Ray's error shapes.

Every attempt of a studio job is one Ray job named ``studio-job-{id}-a{attempt}``. The name is what
makes the scheduler idempotent: after a restart it asks Ray about that name instead of guessing.
"""

from __future__ import annotations

import os
import re
import sys
from typing import TYPE_CHECKING

from studio import ray_connection
from studio.errors import Unavailable
from studio.settings import StudioSettings

if TYPE_CHECKING:
    from ray.job_submission import JobDetails, JobSubmissionClient

SUBMISSION_PREFIX = "studio-job-"


def submission_id(job_id: int, attempt: int) -> str:
    return f"{SUBMISSION_PREFIX}{job_id}-a{attempt}"


def jobs_address(settings: StudioSettings, address: str | None = None) -> str:
    """Where the Ray Jobs API is: ``address`` if given; else RAY_ADDRESS (the client reads it
    itself); inside a Ray worker (a Serve replica), the cluster it runs in, via its GCS address, so
    any node works; else the dashboard of the head ``studio up`` started for this STUDIO_HOME."""
    if address:
        return address
    for var in ("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS"):
        if os.environ.get(var):
            return os.environ[var]
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        return ray.get_runtime_context().gcs_address
    if ray_connection.ray_address(settings) is None:
        raise Unavailable("no Ray cluster is running for this STUDIO_HOME, so there are no Ray jobs to read",
                          "run `studio up`, or set RAY_ADDRESS to the cluster's dashboard URL")
    return f"http://127.0.0.1:{settings.dashboard_port}"


def jobs_client(settings: StudioSettings, address: str | None = None) -> JobSubmissionClient:
    """A JobSubmissionClient for the studio's cluster, or ``Unavailable`` naming the address."""
    import requests
    from ray.job_submission import JobSubmissionClient

    where = jobs_address(settings, address)
    try:
        return JobSubmissionClient(where)
    except (ConnectionError, RuntimeError, ValueError, requests.RequestException) as e:
        raise Unavailable(f"the Ray Jobs API at {where} does not answer: {str(e).splitlines()[0]}",
                          "run `studio up` (or check RAY_ADDRESS / the cluster's dashboard)") from e


def _is_not_found(err: RuntimeError) -> bool:
    # The SDK turns every HTTP error into RuntimeError("Request failed with status code N: …").
    return "status code 404" in str(err)


def job_info(client: JobSubmissionClient, sid: str) -> JobDetails | None:
    """Ray's record of a submission, or None when Ray has none (never submitted, or the cluster
    was replaced since)."""
    try:
        return client.get_job_info(sid)
    except RuntimeError as e:
        if _is_not_found(e):
            return None
        raise


def job_logs(client: JobSubmissionClient, sid: str) -> str:
    """All logs of a submission so far; empty when Ray has no such submission."""
    try:
        return client.get_job_logs(sid)
    except RuntimeError as e:
        if _is_not_found(e):
            return ""
        raise


def stop(client: JobSubmissionClient, sid: str) -> bool:
    """Ask Ray to stop a submission (SIGTERM, then SIGKILL after RAY_JOB_STOP_WAIT_TIME_S).
    False when it was not running or Ray does not know it."""
    try:
        return client.stop_job(sid)
    except RuntimeError as e:
        if _is_not_found(e):
            return False
        raise


def already_submitted(err: RuntimeError) -> bool:
    # Ray answers a duplicate submission_id with a 500 whose text says so.
    return "already exists" in str(err)


def refused(err: RuntimeError) -> bool:
    """A 4xx: Ray rejected the request itself, and the same request will be rejected again."""
    m = re.search(r"status code (\d{3})", str(err))
    return m is not None and m.group(1).startswith("4")


def tail(text: str, max_lines: int = 40, max_chars: int = 3000) -> str:
    """The end of a log, short enough for a job's error column (4096 characters)."""
    lines = text.rstrip().splitlines()[-max_lines:]
    out = "\n".join(lines)
    return out if len(out) <= max_chars else "…" + out[-max_chars:]
