"""Owners: a user key changes only what it created (an admin anything); job specs, job logs and the
prompts logged under an experiment are its owner's; feedback only on the key's own completions; a
registry name belongs to the key that registered it first. Each rule: the other user refused and
nothing changed, the owner (and an admin) allowed."""

from __future__ import annotations

import asyncio
from datetime import datetime, timezone

import pytest
from sqlalchemy import select

from studio.experiments.completions import CompletionRecorder, prompt_text
from studio.jobs.status import create_job
from studio.keys import create_key
from studio.registry.versions import register_version
from studio.store.db import session_scope
from studio.store.models import ApiKey, Feedback, Job
from tests.api.checks import assert_problem, bearer
from tests.jobs.inputs import ingest_datasets, make_model_dir, train_spec


def key_id(settings, name: str) -> int:
    with session_scope(settings.db_url) as s:
        return s.scalars(select(ApiKey.id).where(ApiKey.name == name)).one()


@pytest.fixture
def bob(settings) -> str:
    with session_scope(settings.db_url) as s:
        return create_key(s, "bob", "user")[0]


@pytest.fixture
def alices_job(settings, user_key) -> int:
    with session_scope(settings.db_url) as s:
        job = create_job(s, name="rev", spec={"method": "sft", "data": {"dataset": "secret-prompts@1"}},
                         max_retries=0, submitted_by="alice", owner_key_id=key_id(settings, "alice"))
        return job.id


def test_a_jobs_spec_and_logs_are_its_owners_and_only_they_cancel_it(client, settings, user_key, bob,
                                                                      admin_key, alices_job):
    url = f"/api/jobs/{alices_job}"
    seen = client.get(url, headers=bearer(bob)).json()
    assert seen["spec"] is None and "owner and admins" in seen["spec_hidden"] and seen["status"] == "QUEUED"
    assert client.get(url, headers=bearer(user_key)).json()["spec"]["data"]["dataset"] == "secret-prompts@1"
    assert client.get(url, headers=bearer(admin_key)).json()["spec"] is not None
    assert_problem(client.get(f"{url}/logs", headers=bearer(bob)), 403, "job", "'bob'", "read its logs")
    assert client.get(f"{url}/logs", headers=bearer(user_key)).status_code == 200
    assert_problem(client.post(f"{url}/cancel", headers=bearer(bob)), 403, "'bob'", "cancel it")
    with session_scope(settings.db_url) as s:
        assert s.get(Job, alices_job).status == "QUEUED" and not s.get(Job, alices_job).cancel_requested
    assert client.post(f"{url}/cancel", headers=bearer(user_key)).json()["status"] == "CANCELLED"


def test_an_admin_cancels_any_job_and_a_job_without_an_owner_is_an_admins(client, settings, bob, admin_key):
    with session_scope(settings.db_url) as s:
        legacy = create_job(s, name="old", spec={}, max_retries=0, submitted_by="ray job submit").id
    assert_problem(client.post(f"/api/jobs/{legacy}/cancel", headers=bearer(bob)), 403, "predates owners")
    assert client.post(f"/api/jobs/{legacy}/cancel", headers=bearer(admin_key)).status_code == 202


def test_a_registry_name_is_its_first_registrants(client, settings, user_key, bob, admin_key, tmp_path):
    ingest_datasets(settings, tmp_path / "data")
    spec = train_spec(make_model_dir(settings.models_dir / "model"))
    r = client.post("/api/jobs", headers=bearer(user_key), json=spec)
    assert r.status_code == 201 and r.json()["owner_key_id"] == key_id(settings, "alice")
    taken = client.post("/api/jobs", headers=bearer(bob), json=spec)
    assert_problem(taken, 403, f"registry name {spec['name']!r} belongs to another key")
    assert [j["submitted_by"] for j in client.get("/api/jobs", headers=bearer(bob)).json()] == ["alice"]
    # An admin may add to any name; a version registered for bob under alice's name is refused.
    assert client.post("/api/jobs", headers=bearer(admin_key), json=spec).status_code == 201
    with session_scope(settings.db_url) as s:
        with pytest.raises(Exception, match="belongs to another key"):
            register_version(s, name=spec["name"], base_model="/m", method="sft", adapter_type="lora",
                             uri="/a", owner_key_id=key_id(settings, "bob"))


@pytest.fixture
def experiment(client, settings, user_key) -> str:
    with session_scope(settings.db_url) as s:
        for i in (1, 2):
            register_version(s, name="rev", base_model="/models/tiny", method="sft", adapter_type="lora",
                             uri=f"/a/{i}", owner_key_id=key_id(settings, "alice"))
    body = {"alias": "rev-ab", "arms": [{"model": "rev@1", "weight": 1}, {"model": "rev@2", "weight": 1}]}
    r = client.post("/api/experiments", headers=bearer(user_key), json=body)
    assert r.status_code == 201, r.text
    return "rev-ab"


def log(settings, rows: list[tuple[str, str, int | None]]) -> None:
    """Completions ``(id, prompt, owner key id)`` written by the Router's own recorder."""
    async def run():
        recorder = CompletionRecorder(settings.db_url)
        for cid, prompt, owner in rows:
            messages = [{"role": "user", "content": prompt}]
            recorder.record({"id": cid, "endpoint": "chat", "requested_model": "rev-ab", "experiment": "rev-ab",
                             "arm": "rev@1", "model_version": "rev@1", "prompt": messages,
                             "prompt_text": prompt_text("chat", messages), "response": "x", "latency_ms": 1.0,
                             "ttft_ms": 1.0, "output_tokens": 1, "user": None, "owner_key_id": owner,
                             "created_at": datetime.now(timezone.utc)})
        await recorder.flush()
    asyncio.run(run())


def test_an_experiment_is_changed_and_its_log_read_by_its_owner(client, settings, user_key, bob, admin_key,
                                                                experiment):
    log(settings, [("c1", "alice's question", key_id(settings, "alice")), ("c2", "bob's", key_id(settings, "bob"))])
    url = f"/api/experiments/{experiment}"
    assert_problem(client.patch(url, headers=bearer(bob), json={"status": "stopped"}), 403, "'rev-ab'", "'bob'")
    assert_problem(client.post(f"{url}/stop", headers=bearer(bob)), 403, "'rev-ab'")
    assert_problem(client.get(f"{url}/completions", headers=bearer(bob)), 403, "prompts")
    assert_problem(client.post(f"{url}/export", headers=bearer(bob), json={"name": "prefs"}), 403, "export")
    assert client.get(url, headers=bearer(bob)).json()["status"] == "active"  # the counts are the team's
    logged = client.get(f"{url}/completions", headers=bearer(user_key)).json()
    assert {c["id"] for c in logged} == {"c1", "c2"}
    assert client.get(f"{url}/completions", headers=bearer(admin_key)).status_code == 200
    assert client.post(f"{url}/stop", headers=bearer(user_key)).json()["status"] == "stopped"


def test_feedback_only_on_the_keys_own_completions(client, settings, user_key, bob, admin_key, experiment):
    with session_scope(settings.db_url) as s:
        service = create_key(s, "app", "service")[0]
    log(settings, [("a1", "q", key_id(settings, "alice")), ("a2", "q", key_id(settings, "alice")),
                   ("b1", "q", key_id(settings, "bob")), ("s1", "q", key_id(settings, "app"))])
    poison = client.post("/v1/feedback", headers=bearer(bob), json={"completion_id": "a1", "rating": -1})
    assert poison.status_code == 404 and "a1" in poison.json()["error"]["message"]
    mixed = client.post("/v1/feedback", headers=bearer(bob), json={"completion_id": "b1",
                                                                   "preferred_completion_id": "a1"})
    assert mixed.status_code == 404
    with session_scope(settings.db_url) as s:
        assert s.scalars(select(Feedback)).all() == []
    assert client.post("/v1/feedback", headers=bearer(user_key), json={"completion_id": "a1",
                                                                       "preferred_completion_id": "a2"}).status_code == 200
    assert client.post("/v1/feedback", headers=bearer(service), json={"completion_id": "s1", "rating": 1}).status_code == 200
    assert client.post("/v1/feedback", headers=bearer(admin_key), json={"completion_id": "b1", "rating": 1}).status_code == 200
    with session_scope(settings.db_url) as s:
        owners = sorted((f.completion_id, f.owner_key_id) for f in s.scalars(select(Feedback)))
    assert owners == [("a1", key_id(settings, "alice")), ("b1", key_id(settings, "root")),
                      ("s1", key_id(settings, "app"))]


def test_only_an_evals_owner_cancels_it(client, settings, user_key, bob):
    with session_scope(settings.db_url) as s:
        ev = create_job(s, name="e", spec={"dataset": "d", "models": ["m"], "scorers": [{"type": "exact_match"}]}, max_retries=0,
                        submitted_by="alice", kind="eval", owner_key_id=key_id(settings, "alice")).id
    assert_problem(client.post(f"/api/evals/{ev}/cancel", headers=bearer(bob)), 403, "eval job", "cancel it")
    assert client.get(f"/api/evals/{ev}", headers=bearer(bob)).json()["owner_key_id"] == key_id(settings, "alice")
    assert client.post(f"/api/evals/{ev}/cancel", headers=bearer(user_key)).status_code == 202


def test_an_evals_spec_is_its_owners(client, settings, user_key, bob, admin_key):
    with session_scope(settings.db_url) as s:
        ev = create_job(s, name="e", spec={"dataset": "d", "models": ["m"], "scorers": [{"type": "exact_match"}]}, max_retries=0,
                        submitted_by="alice", kind="eval", owner_key_id=key_id(settings, "alice")).id
    seen = client.get(f"/api/evals/{ev}", headers=bearer(bob)).json()
    assert seen["spec"] is None and "owner" in seen["spec_hidden"] and seen["dataset"] == "d"
    assert client.get(f"/api/evals/{ev}", headers=bearer(user_key)).json()["spec"]["models"] == ["m"]
    assert client.get(f"/api/evals/{ev}", headers=bearer(admin_key)).json()["spec"] is not None
