"""/api/models: the registry — list, versions, lineage, promote (roles, champion archiving)."""

from __future__ import annotations

import pytest

from sqlalchemy import select

from studio.access import claim_name
from studio.data.snapshots import resolve_snapshot
from studio.jobs.status import create_job
from studio.keys import create_key
from studio.registry.versions import register_version
from studio.store.db import session_scope
from studio.store.models import ApiKey
from tests.api.checks import assert_problem, bearer
from tests.jobs.inputs import ingest_datasets


def key_id(settings, name: str) -> int:
    with session_scope(settings.db_url) as s:
        return s.scalars(select(ApiKey.id).where(ApiKey.name == name)).one()


@pytest.fixture
def registered(settings, tmp_path, user_key) -> dict:
    """``rev`` v1 and v2 (v2 from a job on digits@1), ``other`` v1; both names alice's."""
    ingest_datasets(settings, tmp_path / "data")
    alice = key_id(settings, "alice")
    with session_scope(settings.db_url) as s:
        claim_name(s, "model", "rev", alice)
        claim_name(s, "model", "other", alice)
        snap = resolve_snapshot(s, "digits").snapshot
        job = create_job(s, name="rev", spec={"method": "sft"}, max_retries=0, submitted_by="alice")
        common = {"base_model": "/models/tiny", "method": "sft", "adapter_type": "lora"}
        register_version(s, name="rev", uri="/a/rev-1", **common)
        register_version(s, name="rev", uri="/a/rev-2", dataset_snapshot_id=snap.id, job_id=job.id,
                         metrics={"exact_match": 1.0}, **common)
        register_version(s, name="other", uri="/a/other-1", **common)
        return {"job_id": job.id, "snapshot_id": snap.id}


def test_list_and_versions(client, user_key, registered):
    models = client.get("/api/models", headers=bearer(user_key)).json()
    assert [(m["name"], m["versions"], m["latest_version"], m["champion_version"]) for m in models] == [
        ("other", 1, 1, None), ("rev", 2, 2, None)]
    versions = client.get("/api/models/rev", headers=bearer(user_key)).json()["versions"]
    assert [(v["ref"], v["stage"], v["uri"]) for v in versions] == [
        ("rev@1", "candidate", "/a/rev-1"), ("rev@2", "candidate", "/a/rev-2")]
    assert_problem(client.get("/api/models/nope", headers=bearer(user_key)), 404, "'nope'")


def test_lineage_names_the_dataset_and_the_job(client, user_key, registered):
    body = client.get("/api/models/rev@2/lineage", headers=bearer(user_key)).json()
    assert body["model"]["ref"] == "rev@2" and body["model"]["metrics"] == {"exact_match": 1.0}
    assert (body["dataset"]["snapshot_id"], body["dataset"]["kind"], body["dataset"]["rows"]) == (
        registered["snapshot_id"], "prompt_completion", 20)
    assert (body["job"]["id"], body["job"]["submitted_by"]) == (registered["job_id"], "alice")
    bare = client.get("/api/models/rev@1/lineage", headers=bearer(user_key)).json()
    assert bare["dataset"] is None and bare["job"] is None


def test_promote_archives_the_previous_champion(client, user_key, registered):
    def promote(ref, **body):
        return client.post(f"/api/models/{ref}/promote", headers=bearer(user_key), json=body)

    assert promote("rev@1").json()["stage"] == "champion"
    assert promote("rev@2", stage="champion").status_code == 200
    stages = {v["ref"]: v["stage"] for v in client.get("/api/models/rev", headers=bearer(user_key)).json()["versions"]}
    assert stages == {"rev@1": "archived", "rev@2": "champion"}
    # The bare name now resolves to the champion; the other name is untouched.
    assert client.get("/api/models/rev/lineage", headers=bearer(user_key)).json()["model"]["ref"] == "rev@2"
    assert client.get("/api/models", headers=bearer(user_key)).json()[1]["champion_version"] == 2
    assert_problem(promote("rev"), 400, "pinned version")
    assert_problem(promote("rev@9"), 404, "no version 9")
    assert_problem(promote("rev@1", stage="gold"), 422, "stage:")


def test_promote_needs_a_user_or_admin_key(client, settings, admin_key, registered):
    with session_scope(settings.db_url) as s:
        service = create_key(s, "bot", "service")[0]
    r = client.post("/api/models/rev@1/promote", headers=bearer(service), json={})
    assert_problem(r, 403, "role admin or user", "'service'")
    assert client.post("/api/models/rev@1/promote", headers=bearer(admin_key), json={}).status_code == 200
    # Service keys only call models: the catalog is the team's.
    assert_problem(client.get("/api/models", headers=bearer(service)), 403, "role admin or user")


def test_only_the_names_owner_or_an_admin_promotes_or_sets_its_gate(client, settings, admin_key, registered):
    with session_scope(settings.db_url) as s:
        bob = create_key(s, "bob", "user")[0]
    r = client.post("/api/models/rev@1/promote", headers=bearer(bob), json={})
    assert_problem(r, 403, "registry name 'rev' belongs to another key", "'bob'")
    gate = {"dataset": "digits", "scorer": {"type": "exact_match"}}
    assert_problem(client.put("/api/models/rev/gate", headers=bearer(bob), json=gate), 403, "'rev'")
    versions = client.get("/api/models/rev", headers=bearer(bob)).json()["versions"]
    assert {v["stage"] for v in versions} == {"candidate"}  # nothing changed
    assert client.get("/api/models/rev/gate", headers=bearer(bob)).json()["gate"] is None
    assert client.post("/api/models/rev@1/promote", headers=bearer(admin_key), json={}).status_code == 200
    # A name nobody registered yet becomes the gate-setter's; then only it (or an admin) may.
    assert client.put("/api/models/bobs/gate", headers=bearer(bob), json=gate).status_code == 200
    assert client.get("/api/me", headers=bearer(bob)).json()["id"] == key_id(settings, "bob")


def test_forcing_or_overriding_the_gate_is_an_admins_with_a_reason(client, settings, user_key, admin_key,
                                                                   registered):
    def promote(key, **body):
        return client.post("/api/models/rev@2/promote", headers=bearer(key), json=body)

    assert_problem(promote(user_key, force=True), 403, "admin key", "'alice'")
    assert_problem(promote(user_key, margin=-1.0), 403, "admin key")
    assert_problem(promote(user_key, dataset="digits"), 403, "admin key")
    assert_problem(promote(admin_key, force=True), 400, "needs a reason")
    r = promote(admin_key, force=True, reason="hotfix for ticket 42")
    assert r.status_code == 200 and r.json()["stage"] == "champion"
    history = client.get("/api/models/rev/promotions", headers=bearer(user_key)).json()
    assert history[-1]["by"] == "root (reason: hotfix for ticket 42)", history


def test_a_gate_margin_outside_0_1_is_a_400_naming_it(client, user_key, admin_key, registered):
    for margin in (1.5, -0.1):
        r = client.put("/api/models/rev/gate", headers=bearer(user_key), json={"dataset": "digits", "margin": margin})
        assert "from 0 to 1" in assert_problem(r, 400, f"margin {margin:g} is outside [0, 1]")["fix"]
    assert client.get("/api/models/rev/gate", headers=bearer(user_key)).json()["gate"] is None  # nothing stored
    ok = client.put("/api/models/rev/gate", headers=bearer(user_key), json={"dataset": "digits", "margin": 0.05})
    assert ok.status_code == 200 and ok.json()["gate"]["margin"] == 0.05
    r = client.post("/api/models/rev@2/promote", headers=bearer(admin_key), json={"margin": 2, "reason": "try"})
    assert_problem(r, 400, "margin 2 is outside [0, 1]")
