"""POST /api/jobs/plan and submit's fit check, on a real database with the tiny model (config and
tokenizer; no weights are loaded) and the toy reversal datasets, Ray not up (the machine's resources)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from studio.jobs.status import create_job
from studio.keys import create_key
from studio.models.tiny import make_tiny
from studio.store.db import session_scope
from studio.train.toy_data import ingest_toy_datasets
from tests.api.checks import assert_problem, bearer

# Far past any machine's memory: 200k rows × 32 tokens of activations per step.
HUGE_BATCH = {"batch_size": 200_000, "max_steps": 5}


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture
def spec(settings, tiny_dir, tmp_path) -> dict:
    settings.models_dir.mkdir(parents=True, exist_ok=True)
    shutil.copytree(tiny_dir, settings.models_dir / "tiny")  # a link would resolve outside: 403
    ingest_toy_datasets(settings, tmp_path / "data")
    return {"name": "reverse-plan", "method": "sft", "base_model": "tiny", "data": {"dataset": "reverse-train"},
            "lora": {"r": 8}, "hyper": {"epochs": 2, "batch_size": 32, "max_seq_length": 64},
            "resources": {"num_workers": 2}}


def plan(client, key, body):
    return client.post("/api/jobs/plan", headers=bearer(key), json=body)


def test_plan_of_the_tiny_recipe(client, user_key, spec, settings):
    r = plan(client, user_key, spec)
    assert r.status_code == 200, r.text
    p = r.json()
    assert p["params_trained"] == 81_920 and p["model"]["params_total"] == 918_656  # 4 layers × 20,480 LoRA
    assert (p["rows"], p["steps"], p["num_workers"]) == (2000, 2 * 32, 2)  # ceil(1000 / 32) per epoch
    assert 0 < p["seq_length"] <= 64 and p["tokens"] > 2000 and not p["tokens_estimated"]
    assert p["tokens_to_train"] == 2 * p["tokens"]
    assert p["memory"]["device"] == "cpu" and p["memory"]["total_mb"] > p["memory"]["runtime_mb"]
    assert p["fit"]["fits"] and p["fit"]["resources"]["source"] == "machine"
    assert p["tokens_per_s"] is None and p["wall_s"] is None  # no earlier job measured this model
    assert client.get("/api/jobs", headers=bearer(user_key)).json() == []  # nothing queued

    # An earlier job on the same base model recorded its throughput: the plan's wall time uses it.
    with session_scope(settings.db_url) as s:
        job = create_job(s, name="earlier", spec={"method": "sft", "base_model": p["base_model"]},
                         max_retries=0, submitted_by="test")
        job.status, job.result = "SUCCEEDED", {"metrics": {"tokens_per_s": 500.0}}
        job_id = job.id
    p = plan(client, user_key, spec).json()
    assert p["tokens_per_s"] == 500.0 and p["throughput_from"] == [job_id]
    assert p["wall_s"] == pytest.approx(p["tokens_to_train"] / 500.0)


def test_bad_input_is_4xx_naming_the_field(client, user_key, spec, settings):
    assert_problem(plan(client, user_key, {**spec, "base_model": str(settings.models_dir / "nope")}), 400,
                   "base_model", "does not exist")
    problem = assert_problem(plan(client, user_key, {**spec, "hyper": {"batch_size": 0}}), 422, "hyper.batch_size:")
    assert "hyper.batch_size" in [e["field"] for e in problem["errors"]]
    assert_problem(plan(client, user_key, {**spec, "data": {"dataset": "reverse-pref"}}), 400,
                   "preference rows", "SFT trains on")


def test_submit_refuses_what_cannot_fit_naming_the_knob(client, user_key, admin_key, spec):
    body = {**spec, "hyper": {**spec["hyper"], **HUGE_BATCH}}
    p = plan(client, user_key, body).json()
    assert not p["fit"]["fits"] and any(k.startswith("hyper.batch_size=") for k in p["fit"]["knobs"])
    problem = assert_problem(client.post("/api/jobs", headers=bearer(user_key), json=body), 400, "cannot fit")
    assert "hyper.batch_size=" in problem["fix"] and "--force" in problem["fix"]
    assert client.get("/api/jobs", headers=bearer(user_key)).json() == []
    # force: an admin's escape hatch only.
    assert_problem(client.post("/api/jobs?force=true", headers=bearer(user_key), json=body), 403, "force")
    r = client.post("/api/jobs?force=true", headers=bearer(admin_key), json=body)
    assert r.status_code == 201, r.text
    # A recipe that fits is queued as before.
    assert client.post("/api/jobs", headers=bearer(user_key), json={**spec, "name": "fits"}).status_code == 201


def test_a_service_key_may_not_plan(client, spec, settings):
    with session_scope(settings.db_url) as s:
        secret = create_key(s, "app", "service")[0]
    assert_problem(plan(client, secret, spec), 403)
