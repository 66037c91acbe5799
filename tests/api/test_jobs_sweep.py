"""POST /api/jobs/sweep and the sweep spec, on a real database with the tiny model (config and
tokenizer only) and the toy reversal datasets; nothing runs (the scheduler is not up)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from studio.errors import StudioError
from studio.jobs.status import JobStatus, create_job, transition
from studio.keys import create_key
from studio.models.tiny import make_tiny
from studio.store.db import session_scope
from studio.store.models import Job
from studio.train.sweep import SweepSpec, load_sweep, recipe_fields
from studio.train.toy_data import ingest_toy_datasets
from tests.api.checks import assert_problem, bearer

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture
def body(settings, tiny_dir, tmp_path) -> dict:
    settings.models_dir.mkdir(parents=True, exist_ok=True)
    shutil.copytree(tiny_dir, settings.models_dir / "tiny")
    ingest_toy_datasets(settings, tmp_path / "data")
    train = {"name": "reverse-sweep", "method": "sft", "base_model": "tiny", "data": {"dataset": "reverse-train"},
             "hyper": {"max_steps": 4, "batch_size": 8, "max_seq_length": 64}, "eval": {"split_ratio": 0.1},
             "resources": {"num_workers": 1}}
    return {"train": train, "space": {"hyper.learning_rate": "loguniform(1e-4, 1e-2)", "lora.r": "choice([4, 8])"},
            "num_trials": 2, "search": "random"}


def sweep(client, key, body):
    return client.post("/api/jobs/sweep", headers=bearer(key), json=body)


def test_a_sweep_is_one_queued_job_of_kind_sweep(client, user_key, body):
    r = sweep(client, user_key, body)
    assert r.status_code == 201, r.text
    job = r.json()
    assert job["kind"] == "sweep" and job["status"] == "QUEUED" and job["trials"] == []
    assert job["spec"]["train"]["data"]["dataset"] == "reverse-train@1"  # pinned as a training job's
    assert Path(job["spec"]["train"]["base_model"]).is_absolute()
    assert [j["kind"] for j in client.get("/api/jobs", headers=bearer(user_key)).json()] == ["sweep"]


def test_bad_space_is_a_4xx_naming_the_field(client, user_key, body):
    bad = {**body, "space": {"hyper.learnin_rate": "loguniform(1e-4, 1e-2)"}}
    problem = assert_problem(sweep(client, user_key, bad), 400, "space.hyper.learnin_rate", "no field")
    assert "hyper.learning_rate" in problem["fix"] and "lora.r" in problem["fix"]  # the recipe's fields
    assert_problem(sweep(client, user_key, {**body, "num_trials": 0}), 422, "num_trials")
    assert_problem(sweep(client, user_key, {**body, "space": {"hyper.learning_rate": "loguniform(0, 1e-2)"}}),
                   400, "cannot be sampled", "low > 0")
    assert_problem(sweep(client, user_key, {**body, "space": {"hyper.learning_rate": "loguniform(1e-2, 1e-4)"}}),
                   400, "cannot be sampled", "not below")
    assert_problem(sweep(client, user_key, {**body, "space": {"lora.r": "choice([])"}}), 400, "cannot be sampled")
    assert_problem(sweep(client, user_key, {**body, "space": {"lora.r": "choice([0, 8])"}}), 400,
                   "space.lora.r", "0 is not a valid lora.r")
    assert_problem(sweep(client, user_key, {**body, "space": {"hyper.learning_rate": "normal(0, 1)"}}), 400,
                   "not a search domain")
    assert_problem(sweep(client, user_key, {**body, "space": {}}), 422, "space is empty")
    assert_problem(sweep(client, user_key, {**body, "metric": "exact_match"}), 422, "eval_after")
    grpo = {**body["train"], "method": "grpo", "grpo": {"num_generations": 4}}
    assert_problem(sweep(client, user_key, {**body, "train": grpo}), 422,
                   "eval_loss does not rank GRPO trials", "metric: exact_match")
    assert client.get("/api/jobs", headers=bearer(user_key)).json() == []  # nothing queued


def test_the_sweep_route_follows_post_jobs_rules(client, user_key, admin_key, body, settings, tmp_path):
    # A user key names no server path (the recipe's base model outside $STUDIO_HOME/models).
    outside = {**body, "train": {**body["train"], "base_model": str(tmp_path)}}
    assert_problem(sweep(client, user_key, outside), 403)
    assert_problem(client.post("/api/jobs/sweep?force=true", headers=bearer(user_key), json=body), 403, "force")
    # A service key (an application calling models) may not queue jobs at all.
    with session_scope(settings.db_url) as s:
        service_key = create_key(s, "app", "service")[0]
    assert sweep(client, service_key, body).status_code == 403
    assert client.post("/api/jobs/sweep", json=body).status_code == 401
    # The registry name is its first owner's: another user's sweep over it is refused.
    assert sweep(client, user_key, body).status_code == 201
    with session_scope(settings.db_url) as s:
        bob = create_key(s, "bob", "user")[0]
    assert_problem(sweep(client, bob, body), 403)


def test_cancelling_a_sweep_cancels_its_trials(settings, body, client, user_key):
    sweep_id = sweep(client, user_key, body).json()["id"]
    with session_scope(settings.db_url) as s:
        transition(s, sweep_id, JobStatus.STARTING, "test")
        transition(s, sweep_id, JobStatus.RUNNING, "test")
        trials = []
        for status in (JobStatus.RUNNING, JobStatus.SUCCEEDED):
            t = create_job(s, name="reverse-sweep", spec={}, max_retries=0, submitted_by=f"sweep:{sweep_id}",
                           owner_key_id=s.get(Job, sweep_id).owner_key_id)
            t.parent_id = sweep_id
            for to in (JobStatus.STARTING, JobStatus.RUNNING) + ((JobStatus.CHECKPOINTING, status)
                                                                 if status is JobStatus.SUCCEEDED else ()):
                transition(s, t.id, to, "test")
            trials.append(t.id)
    # A trial alone is not cancelled: its Ray Job is the sweep's.
    assert_problem(client.post(f"/api/jobs/{trials[0]}/cancel", headers=bearer(user_key)), 409,
                   f"trial of sweep {sweep_id}")
    r = client.post(f"/api/jobs/{sweep_id}/cancel", headers=bearer(user_key))
    assert r.status_code == 202, r.text
    with session_scope(settings.db_url) as s:
        running, done = (s.get(Job, i) for i in trials)
        assert s.get(Job, sweep_id).cancel_requested and running.cancel_requested
        assert not done.cancel_requested  # an ended trial is left as it is
    detail = client.get(f"/api/jobs/{sweep_id}", headers=bearer(user_key)).json()
    assert [(t["job_id"], t["status"]) for t in detail["trials"]] == [(trials[0], "RUNNING"), (trials[1], "SUCCEEDED")]
    assert client.get(f"/api/jobs/{trials[0]}", headers=bearer(user_key)).json()["parent_id"] == sweep_id


def test_the_shipped_sweep_loads_over_its_training_recipe(settings):
    spec = load_sweep(REPO / "configs" / "sweeps" / "reverse_tiny_lr.yaml", home=settings.home_abs)
    assert spec.train.method == "sft" and spec.num_trials >= 4 and "hyper.learning_rate" in spec.space
    assert spec.train.base_model == str(settings.home_abs / "models" / "tiny")
    with pytest.raises(StudioError, match="no field 'hyper.lr'") as e:
        SweepSpec.model_validate({**spec.model_dump(by_alias=True), "space": {"hyper.lr": "uniform(0, 1)"}}).domains()
    assert "hyper.learning_rate" in e.value.fix and set(recipe_fields()) >= {"lora.r", "eval.split_ratio"}
