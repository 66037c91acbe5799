"""/api/jobs on a real database: validation (422 naming the field), preflight (400 naming the
problem), queueing, listing, cancel, metrics, logs before Ray. Runs on Ray: tests/jobs/test_scheduler.py."""

from __future__ import annotations

import pytest

from studio.jobs.status import JobStatus, transition
from studio.store.db import session_scope
from studio.store.models import JobMetric
from tests.api.checks import assert_problem, bearer
from tests.jobs.inputs import ingest_datasets, make_model_dir, train_spec


@pytest.fixture
def spec(settings, tmp_path) -> dict:
    ingest_datasets(settings, tmp_path / "data")
    return train_spec(make_model_dir(settings.models_dir / "model"))


def post(client, key, body):
    return client.post("/api/jobs", headers=bearer(key), json=body)


@pytest.mark.parametrize("change, field", [
    ({"lora": {"rr": 8}}, "lora.rr"),
    ({"learning_rate": 0.1}, "learning_rate"),
    ({"hyper": {"epochs": "lots"}}, "hyper.epochs"),
    ({"method": "ppo"}, "method"),
])
def test_bad_fields_are_422_naming_the_field(client, user_key, spec, change, field):
    problem = assert_problem(post(client, user_key, {**spec, **change}), 422, f"{field}:")
    assert field in [e["field"] for e in problem["errors"]]


def test_missing_field_is_422(client, user_key, spec):
    body = {k: v for k, v in spec.items() if k != "base_model"}
    problem = assert_problem(post(client, user_key, body), 422, "base_model:")
    assert problem["errors"][0]["message"] == "Field required"


def test_wrong_dataset_kind_is_400_naming_the_kinds_and_creates_nothing(client, user_key, spec):
    problem = assert_problem(post(client, user_key, {**spec, "data": {"dataset": "prose"}}), 400,
                             "'prose' holds text rows", "SFT trains on chat or prompt_completion rows")
    assert "method sft" in problem["fix"]
    assert client.get("/api/jobs", headers=bearer(user_key)).json() == []


def test_missing_model_and_dataset_are_400(client, user_key, spec, settings):
    assert_problem(post(client, user_key, {**spec, "base_model": str(settings.models_dir / "nope")}), 400,
                   "does not exist")
    assert_problem(post(client, user_key, {**spec, "data": {"dataset": "nope"}}), 404, "'nope'")


def test_a_user_key_names_no_server_path_outside_the_models_folder(client, user_key, admin_key, spec, settings,
                                                                  tmp_path):
    """docs/security.md, "Server paths": a model or adapter folder outside $STUDIO_HOME/models and
    the artifact store is 403 for a user key whether or not it exists, so the answer tells nothing
    about the server's files; a folder name under the models folder is that folder."""
    outside = make_model_dir(tmp_path / "outside")
    answers = []
    for field, value in [("base_model", str(outside)), ("base_model", str(tmp_path / "missing")),
                         ("base_model", "/etc"), ("base_model", f"file://{outside}"), ("base_model", "./configs"),
                         ("init_adapter", str(outside)), ("init_adapter", str(tmp_path / "missing"))]:
        problem = assert_problem(post(client, user_key, {**spec, field: value}), 403,
                                 f"{field} ", "outside", "and the artifact store")
        assert "$STUDIO_HOME/models" in problem["fix"]
        answers.append(problem["detail"].replace(value, "X"))
    assert answers[0] == answers[1]  # an existing and a missing folder read the same
    # A link under the models folder that points outside is outside.
    (settings.models_dir / "link").symlink_to(outside)
    assert_problem(post(client, user_key, {**spec, "base_model": str(settings.models_dir / "link")}), 403, "outside")
    # The models folder's own names, by path or folder name.
    r = post(client, user_key, {**spec, "base_model": "model"})
    assert r.status_code == 201, r.text
    assert r.json()["spec"]["base_model"] == str(settings.models_dir / "model")
    assert client.get("/api/jobs", headers=bearer(user_key)).json()[0]["name"] == "ok-job"
    # An admin may name folders under the data roots ($STUDIO_HOME and the artifact store by
    # default), still not elsewhere.
    assert_problem(post(client, admin_key, {**spec, "name": "admin-job", "base_model": str(outside)}), 403,
                   "outside the allowed data roots")
    in_home = make_model_dir(settings.home_abs / "staging" / "model")
    r = post(client, admin_key, {**spec, "name": "admin-job", "base_model": str(in_home)})
    assert r.status_code == 201, r.text
    assert_problem(post(client, user_key, {**spec, "name": "user-job", "base_model": str(in_home)}), 403, "outside")


def test_studio_home_in_a_path_is_the_servers_home(client, user_key, spec, settings):
    """`${STUDIO_HOME}/...` from a user key reads the API's home (not its cwd), as a recipe file
    does; any other variable is a 400 naming the field, never a path with a literal `$FOO`."""
    model = make_model_dir(settings.home_abs / "models" / "tiny")
    r = post(client, user_key, {**spec, "base_model": "${STUDIO_HOME}/models/tiny"})
    assert r.status_code == 201, r.text
    assert r.json()["spec"]["base_model"] == str(model)
    problem = assert_problem(post(client, user_key, {**spec, "name": "other", "base_model": "$HOME/models/tiny"}),
                             400, "base_model: ", "names the variable $HOME")
    assert "${STUDIO_HOME}/" in problem["fix"]
    missing = {**spec, "name": "other", "base_model": "${STUDIO_HOME}/models/none"}
    problem = assert_problem(post(client, user_key, missing),
                             400, f"base_model: model path {settings.home_abs}/models/none does not exist")
    assert "make-tiny" in problem["fix"]
    assert_problem(post(client, user_key, {**spec, "name": "other",
                                           "init_adapter": "${STUDIO_HOME}/models/no-adapter"}),
                   400, f"{settings.models_dir}/no-adapter does not exist")


def test_good_spec_is_201_queued_and_listed(client, user_key, spec):
    r = post(client, user_key, spec)
    assert r.status_code == 201, r.text
    job = r.json()
    assert (job["status"], job["attempts"], job["submitted_by"], job["method"]) == ("QUEUED", 0, "alice", "sft")
    assert job["spec"]["data"]["dataset"] == "digits@1"
    assert [(e["from"], e["to"]) for e in job["events"]] == [(None, "QUEUED")]

    listed = client.get("/api/jobs", headers=bearer(user_key), params={"status": "QUEUED"}).json()
    assert [j["id"] for j in listed] == [job["id"]]
    assert client.get("/api/jobs", headers=bearer(user_key), params={"status": "RUNNING"}).json() == []
    assert_problem(client.get("/api/jobs", headers=bearer(user_key), params={"status": "DONE"}), 422, "query.status")

    shown = client.get(f"/api/jobs/{job['id']}", headers=bearer(user_key)).json()
    assert shown["spec"] == job["spec"] and shown["total_steps"] == 5 and shown["step"] is None


def test_unknown_job_is_404(client, user_key):
    for path in ("/api/jobs/99", "/api/jobs/99/metrics", "/api/jobs/99/logs"):
        assert_problem(client.get(path, headers=bearer(user_key)), 404, "job 99 does not exist")
    assert_problem(client.post("/api/jobs/99/cancel", headers=bearer(user_key)), 404)


def test_cancel_a_queued_job_then_again_is_409(client, user_key, spec):
    job_id = post(client, user_key, spec).json()["id"]
    r = client.post(f"/api/jobs/{job_id}/cancel", headers=bearer(user_key))
    assert r.status_code == 202 and r.json()["status"] == "CANCELLED"
    assert_problem(client.post(f"/api/jobs/{job_id}/cancel", headers=bearer(user_key)), 409, "already CANCELLED")


def test_cancel_a_running_job_marks_it_for_the_scheduler(client, user_key, spec, settings):
    job_id = post(client, user_key, spec).json()["id"]
    with session_scope(settings.db_url) as s:
        transition(s, job_id, JobStatus.STARTING, "test")
    r = client.post(f"/api/jobs/{job_id}/cancel", headers=bearer(user_key))
    assert r.status_code == 202
    assert (r.json()["status"], r.json()["cancel_requested"]) == ("STARTING", True)


def test_metrics_are_grouped_by_key(client, user_key, spec, settings):
    job_id = post(client, user_key, spec).json()["id"]
    with session_scope(settings.db_url) as s:
        for step in (2, 1):
            s.add(JobMetric(job_id=job_id, attempt=1, step=step, key="loss", value=1.0 / step))
        s.add(JobMetric(job_id=job_id, attempt=1, step=1, key="learning_rate", value=3e-3))
    body = client.get(f"/api/jobs/{job_id}/metrics", headers=bearer(user_key)).json()
    assert sorted(body["metrics"]) == ["learning_rate", "loss"]
    assert [(p["step"], p["value"], p["attempt"]) for p in body["metrics"]["loss"]] == [(1, 1.0, 1), (2, 0.5, 1)]
    assert client.get(f"/api/jobs/{job_id}", headers=bearer(user_key)).json()["step"] == 2


def test_logs_of_a_job_not_on_ray_yet(client, user_key, spec):
    job_id = post(client, user_key, spec).json()["id"]
    body = client.get(f"/api/jobs/{job_id}/logs", headers=bearer(user_key)).json()
    assert (body["logs"], body["submission_id"]) == ("", None)
    assert "has not been submitted to Ray yet" in body["note"]


def test_scheduler_status_without_serve_is_503(client, user_key):
    assert_problem(client.get("/api/scheduler", headers=bearer(user_key)), 503, "studio up")


def test_jobs_need_a_key(client, spec):
    assert_problem(client.post("/api/jobs", json=spec), 401)
    assert_problem(client.get("/api/jobs"), 401)
