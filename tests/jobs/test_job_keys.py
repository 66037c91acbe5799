"""Jobs spend on their submitter: every run gets a key derived from its submitter's, in its Ray
runtime_env, revoked when the run ends; revoking the submitter's key stops the running job's calls;
the admin key and the provider keys never reach a job's environment.

A real local Ray head (started as `studio up` starts it from an environment holding the admin key,
which it withholds, and a provider key, which it does not: as on a cluster whose nodes hold it, the
scheduler empties it in each job's environment), the real scheduler, the real studio API on loopback (its
/gateway/v1 checks the key, then answers 503: no gateway is deployed) and tests/jobs/fake_train.py
in its ``gateway`` mode, which calls that API through studio.gateway.Client as eval/synth jobs do.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from datetime import timedelta

import pytest
from sqlalchemy import select

from studio.serving.app_config import provider_key_envs
from studio import stack
from studio.api.app import create_app
from studio.jobs import ray_jobs
from studio.jobs.scheduler import reconcile_once
from studio.jobs.status import JobStatus, create_job
from studio.keys import create_key, revoke_key
from studio.settings import StudioSettings
from studio.store import db as store_db
from studio.store.db import session_scope
from studio.store.models import ApiKey, Job, utcnow
from tests.jobs.inputs import ingest_datasets, make_model_dir
from tests.jobs.test_scheduler import CONFIG, drive, enqueue, free_port, job, status_is
from tests.loopback import ServerThread

pytestmark = [pytest.mark.slow, pytest.mark.no_engine]

ADMIN_SECRET = "sk-studio-" + secrets.token_urlsafe(32)
PROVIDER_SECRET = "sk-openai-" + secrets.token_urlsafe(16)


@pytest.fixture(scope="module")
def keyed(tmp_path_factory) -> Iterator[dict]:
    """A head started from an environment holding the admin key and OPENAI_API_KEY (as an operator's
    shell running `studio up` would), the studio API on loopback, and a scheduler config whose jobs
    call it."""
    home = tmp_path_factory.mktemp("job-keys-home")
    settings = StudioSettings(home=home, database_url=f"sqlite:///{home / 'studio.db'}", artifacts_uri=None,
                              mlflow_uri=None, redis_url=None, admin_key=None, http_port=free_port(),
                              ray_port=free_port(), dashboard_port=free_port())
    store_db.init_db(settings.db_url)
    ingest_datasets(settings, home / "data")
    make_model_dir(home / "models" / "model")
    with session_scope(settings.db_url) as s:
        create_key(s, "root", "admin", secret=ADMIN_SECRET)
    settings.admin_key_file.write_text(ADMIN_SECRET + "\n")  # on the node, where a job could read it
    saved = {k: os.environ.get(k) for k in ("STUDIO_ADMIN_KEY", "OPENAI_API_KEY")}
    os.environ.update(STUDIO_ADMIN_KEY=ADMIN_SECRET, OPENAI_API_KEY=PROVIDER_SECRET)
    try:
        stack.start_head(settings)  # withholds STUDIO_ADMIN_KEY; OPENAI_API_KEY reaches the raylet
    finally:
        for k, v in saved.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
    api = ServerThread(create_app(settings)).start()
    env_vars = {**CONFIG.runtime_env["env_vars"], "STUDIO_GATEWAY_URL": f"{api.url}/gateway/v1",
                # Reversed: the job's own runtime_env (in its environment too) must not hold them.
                "FAKE_TRAIN_SECRETS": f"{ADMIN_SECRET[::-1]},{PROVIDER_SECRET[::-1]}"}
    withheld = list(provider_key_envs(stack.load_serve_config().get("args")))  # as build_app sets it
    assert "OPENAI_API_KEY" in withheld  # configs/gateway.yaml names it
    config = CONFIG.model_copy(update={"runtime_env": {"env_vars": env_vars}, "job_key_ttl_h": 2.0,
                                       "withheld_env": withheld})
    try:
        yield {"settings": settings, "client": ray_jobs.jobs_client(settings), "config": config}
    finally:
        api.stop()
        stack.down(settings)
        store_db.get_engine.cache_clear()


def job_keys(settings: StudioSettings, job_id: int) -> list[ApiKey]:
    with session_scope(settings.db_url) as s:
        return list(s.scalars(select(ApiKey).where(ApiKey.job_id == job_id).order_by(ApiKey.id)))


def result_has(settings: StudioSettings, job_id: int, field: str):
    return lambda: bool((job(settings, job_id).result or {}).get(field))


def test_a_job_spends_on_a_key_derived_from_its_submitter_and_stops_when_that_key_is_revoked(keyed):
    settings, client, config = keyed["settings"], keyed["client"], keyed["config"]
    with session_scope(settings.db_url) as s:
        create_key(s, "alice", "user")
        alice = s.scalars(select(ApiKey).where(ApiKey.name == "alice")).one()
        alice.rpm_limit, alice.tpm_limit, alice.budget_usd = 7, 700, 1.5
        alice_id = alice.id
    job_id = enqueue(settings, "gateway-alice")
    with session_scope(settings.db_url) as s:
        s.get(Job, job_id).owner_key_id = alice_id

    drive(settings, client, result_has(settings, job_id, "gateway"), config=config)
    [key] = job_keys(settings, job_id)
    assert (key.parent_id, key.role, key.rpm_limit, key.tpm_limit, key.budget_usd) == (alice_id, "user", 7, 700, 1.5)
    assert key.revoked_at is None and utcnow() < key.expires_at <= utcnow() + timedelta(hours=2)
    result = job(settings, job_id).result
    # The key the job holds is that one; its first call passed the key check (503: no gateway here).
    assert result["env"]["api_key_sha256"] == key.key_hash and result["env"]["studio_job_id"] == str(job_id)
    assert result["gateway"][0]["status"] == 503, result["gateway"]
    # Neither the admin key nor the provider key is anywhere in the job's environment.
    assert result["env"]["leaked"] == []
    env_vars = client.get_job_info(f"studio-job-{job_id}-a1").runtime_env["env_vars"]
    assert ADMIN_SECRET not in str(env_vars) and PROVIDER_SECRET not in str(env_vars)

    # Revoking the submitter's key while the job runs: the job's next call is refused.
    with session_scope(settings.db_url) as s:
        revoke_key(s, "alice")
    reports = drive(settings, client, status_is(settings, job_id, JobStatus.SUCCEEDED), config=config)
    last = job(settings, job_id).result["gateway"][-1]
    assert last["status"] == 401 and "invalid or revoked" in last["problem"], last

    # The run is over: its key is revoked by the scheduler (this pass or the one that saw the end).
    reports.append(reconcile_once(settings, client, config))
    assert sum(r.keys_revoked for r in reports) == 1 and job_keys(settings, job_id)[0].revoked_at is not None


def test_a_job_without_a_submitter_key_never_falls_back_to_the_admin_key(keyed):
    """Queued with a key that is gone (or none at all): the job gets no key, and its gateway client
    refuses to use the admin key it could find on the node ($STUDIO_HOME/admin.key)."""
    settings, client, config = keyed["settings"], keyed["client"], keyed["config"]
    with session_scope(settings.db_url) as s:
        job_id = create_job(s, name="gateway-nokey", spec={}, max_retries=0, submitted_by="a-deleted-key").id
    drive(settings, client, status_is(settings, job_id, JobStatus.SUCCEEDED), config=config)
    result = job(settings, job_id).result
    assert result["env"]["api_key_sha256"] is None and result["env"]["leaked"] == []
    assert result["gateway"] == [{"status": 401, "problem": "this job has no studio key for the gateway "
                                  "(it never uses the admin key)"}]
    assert job_keys(settings, job_id) == []


def test_a_job_queued_from_the_cli_spends_on_a_key_derived_from_the_operators(keyed):
    """`studio eval run` / `studio train submit` run as the operator (they hold the database): the
    job gets a key derived from the admin key — never the admin key itself."""
    settings, client, config = keyed["settings"], keyed["client"], keyed["config"]
    with session_scope(settings.db_url) as s:
        job_id = create_job(s, name="gateway-cli", spec={}, max_retries=0, submitted_by="cli:operator").id
        root = s.scalars(select(ApiKey).where(ApiKey.name == "root")).one()
    drive(settings, client, result_has(settings, job_id, "gateway"), config=config)
    [key] = job_keys(settings, job_id)
    assert (key.parent_id, key.role) == (root.id, "admin") and key.key_hash != root.key_hash
    result = job(settings, job_id).result
    assert result["env"]["api_key_sha256"] == key.key_hash and result["env"]["leaked"] == []
    assert result["gateway"][0]["status"] == 503
    with session_scope(settings.db_url) as s:
        revoke_key(s, "root")  # the job's key goes with it
    drive(settings, client, status_is(settings, job_id, JobStatus.SUCCEEDED), config=config)
    assert job(settings, job_id).result["gateway"][-1]["status"] == 401
