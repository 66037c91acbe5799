"""/api/loops on the real app and database (SQLite and PostgreSQL), with real keys: who may create
and change a loop, the registry checks, pause/resume/cancel moving the active generation, and a
generation's timeline and explain read back."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from studio.api.app import create_app
from studio.keys import create_key
from studio.loops import repository as repo
from studio.loops.spec import load_loop_recipe
from studio.loops.states import Reason, State
from studio.loops.stats import ArmCounts, Look, decide
from studio.store.db import session_scope
from studio.store.models import ModelVersion, OwnedName

SHIPPED = Path(__file__).resolve().parents[2] / "configs" / "loops" / "reverse_tiny.yaml"
BASE = "studio-test/tiny-base"  # the champion's base model (a hub id: a key names no server path); the training recipe is set to it


@pytest.fixture
def api(settings):
    """The app, three keys (admin root, users alice and bob), and served-a: alice's registry name
    with a champion."""
    with session_scope(settings.db_url) as s:
        keys = {name: create_key(s, name, role) for name, role in
                (("root", "admin"), ("alice", "user"), ("bob", "user"), ("svc", "service"))}
        alice_id = keys["alice"][1].id
        s.add(OwnedName(kind="model", name="served-a", owner_key_id=alice_id))
        s.add(ModelVersion(name="served-a", version=1, base_model=BASE, method="sft", adapter_type="lora",
                           uri="file:///nowhere", stage="champion", metrics={}))
        s.add(ModelVersion(name="no-champion", version=1, base_model=BASE, method="sft", adapter_type="lora",
                           uri="file:///nowhere", stage="candidate", metrics={}))
    with TestClient(create_app(settings)) as client:
        def call(method: str, path: str, who: str, **kw):
            return client.request(method, path, headers={"Authorization": f"Bearer {keys[who][0]}"}, **kw)
        call.alice_id = alice_id
        yield call


def _body(name: str = "loop-a", served: str = "served-a", **loop_changes) -> dict:
    spec, train = load_loop_recipe(SHIPPED)
    loop = {**spec.model_dump(mode="json"), "name": name, "served_name": served}
    for k, v in loop_changes.items():
        section, _, field = k.partition("__")
        loop[section] = {**loop[section], field: v} if field else v
    return {"loop": loop, "train": {**train.model_dump(mode="json"), "base_model": BASE}}


def test_the_name_owner_creates_a_loop_and_the_team_reads_it(api):
    r = api("POST", "/api/loops", "alice", json=_body())
    assert r.status_code == 201, r.text
    out = r.json()
    assert (out["name"], out["served_name"], out["status"]) == ("loop-a", "served-a", "active")
    assert out["owner_key_id"] == api.alice_id and out["created_by"] == "alice"
    assert out["train"]["method"] == "dpo" and out["spec"]["decision"]["alpha"] == 0.05
    assert [lp["name"] for lp in api("GET", "/api/loops", "bob").json()] == ["loop-a"]
    assert api("GET", "/api/loops/loop-a", "bob").json()["generations"] == 0
    assert api("GET", "/api/loops", "bob").json()[0]["last_ended"] is None
    assert api("GET", "/api/loops/nope", "bob").status_code == 404


def test_only_the_served_names_owner_or_an_admin_may_create_one(api):
    r = api("POST", "/api/loops", "bob", json=_body())
    assert r.status_code == 403 and "registry name 'served-a' belongs to another key" in r.json()["detail"]
    assert api("POST", "/api/loops", "svc", json=_body()).status_code == 403
    assert api("POST", "/api/loops", "root", json=_body()).status_code == 201


def test_bad_loops_are_refused_naming_the_problem(api):
    r = api("POST", "/api/loops", "root", json=_body(served="no-champion"))
    assert r.status_code == 409 and "has no champion" in r.json()["detail"]
    other_base = _body()
    other_base["train"]["base_model"] = "studio-test/another"
    r = api("POST", "/api/loops", "root", json=other_base)
    assert r.status_code == 400 and "is for base model studio-test/another" in r.json()["detail"]
    r = api("POST", "/api/loops", "root", json=_body(decision__alpha=1.5))
    assert r.status_code == 422 and "loop.decision.alpha" in r.json()["detail"]
    assert "strictly between 0 and 1" in r.json()["detail"]
    r = api("POST", "/api/loops", "root", json=_body(canary__steps=[25, 10]))
    assert r.status_code == 422 and "10 follows 25" in r.json()["detail"]
    assert api("POST", "/api/loops", "root", json=_body()).status_code == 201
    r = api("POST", "/api/loops", "root", json=_body(name="loop-b"))
    assert r.status_code == 409 and "one loop per served name" in r.json()["fix"]


def _active_canary(settings) -> int:
    with session_scope(settings.db_url) as s:
        loop = repo.get_loop(s, "loop-a")
        gen = repo.start_generation(s, loop, repo.frozen_config(repo.LoopSpec.model_validate(loop.spec), loop.train),
                                    actor="scheduler", champion="served-a@1")
        for frm, to, why in ((State.WATCHING, State.TRIGGERED, Reason.TRIGGER_MANUAL),
                             (State.TRIGGERED, State.SNAPSHOT, Reason.STEP_DONE),
                             (State.SNAPSHOT, State.TRAINING, Reason.STEP_DONE),
                             (State.TRAINING, State.GATE, Reason.STEP_DONE),
                             (State.GATE, State.CANARY, Reason.SHADOW_SKIPPED)):
            repo.move(s, gen.id, frm, to, why, actor="scheduler")
        return gen.id


def test_pause_resume_and_cancel_move_the_active_generation_and_only_the_owner_may(api, settings):
    assert api("POST", "/api/loops", "alice", json=_body()).status_code == 201
    _active_canary(settings)
    for action in ("pause", "resume", "cancel"):
        r = api("POST", f"/api/loops/loop-a/{action}", "bob")
        assert r.status_code == 403 and "loop 'loop-a' belongs to another key" in r.json()["detail"]
    r = api("POST", "/api/loops/loop-a/pause", "alice", json={"reason": "holiday"})
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "paused" and r.json()["active_generation"]["state"] == "PAUSED"
    r = api("POST", "/api/loops/loop-a/resume", "alice")
    assert r.json()["status"] == "active" and r.json()["active_generation"]["state"] == "CANARY"
    r = api("POST", "/api/loops/loop-a/cancel", "root", json={"reason": "wrong base"})
    assert r.json()["status"] == "cancelled"
    assert r.json()["active_generation"]["state"] == "ROLLING_BACK"  # the split is unwound first
    timeline = api("GET", "/api/loops/loop-a/generations/1", "bob").json()
    assert [(t["to_state"], t["reason"], t["actor"]) for t in timeline["transitions"][-3:]] == [
        ("PAUSED", "hold", "alice"), ("CANARY", "resume", "alice"), ("ROLLING_BACK", "cancel", "root")]
    assert timeline["transitions"][-3]["detail"] == "holiday"
    assert api("POST", "/api/loops/loop-a/pause", "alice").status_code == 409  # cancelled: resume first
    assert api("GET", "/api/loops/loop-a/generations/2", "bob").status_code == 404


def test_explain_recomputes_the_stored_looks(api, settings):
    assert api("POST", "/api/loops", "alice", json=_body()).status_code == 201
    gen_id = _active_canary(settings)
    with session_scope(settings.db_url) as s:
        rule = repo.LoopSpec.model_validate(repo.get_loop(s, "loop-a").spec).decision
        for i in (1, 10):
            look = Look(at_s=60.0 * i, weight=0.5,
                        champion=ArmCounts(completions=40 * i, rated=30 * i, thumbs_up=15 * i,
                                           latency_p95_ms=90, tokens_per_answer=8),
                        candidate=ArmCounts(completions=40 * i, rated=30 * i, thumbs_up=21 * i,
                                            latency_p95_ms=95, tokens_per_answer=8),
                        step_assigned_champion=40 * i, step_assigned_candidate=40 * i)
            repo.record_look(s, gen_id, look, decide(look, rule))
    out = api("GET", "/api/loops/loop-a/generations/1/explain", "bob").json()
    assert out["all_agree"] is True
    assert [x["recomputed_action"] for x in out["looks"]] == ["wait", "promote"]
    assert out["looks"][1]["lower"] > 0
    looks = api("GET", "/api/loops/loop-a/generations/1", "bob").json()["looks"]
    assert looks[1]["look"]["candidate"]["thumbs_up"] == 210
    assert api("GET", "/api/loops/loop-a/generations/1", "bob").json()["decision"]["alpha"] == 0.05  # the frozen rule


def test_put_replaces_the_recipe_for_the_owner_only(api):
    assert api("POST", "/api/loops", "alice", json=_body()).status_code == 201
    assert api("PUT", "/api/loops/loop-a", "bob", json=_body(cooldown_s=5)).status_code == 403
    r = api("PUT", "/api/loops/loop-a", "alice", json=_body(cooldown_s=5))
    assert r.status_code == 200 and r.json()["spec"]["cooldown_s"] == 5
    r = api("PUT", "/api/loops/loop-a", "alice", json=_body(served="no-champion"))
    assert r.status_code == 400 and "keep name: loop-a and served_name: served-a" in r.json()["fix"]


def test_an_admin_promotes_rolls_back_or_aborts_a_generation_with_a_reason(api, settings):
    assert api("POST", "/api/loops", "alice", json=_body()).status_code == 201
    _active_canary(settings)
    gen = "/api/loops/loop-a/generations/1"
    r = api("POST", f"{gen}/promote", "alice", json={"reason": "I own it"})
    assert r.status_code == 403 and "needs an admin key" in r.json()["detail"]  # the owner is not enough
    r = api("POST", f"{gen}/promote", "root", json={"reason": ""})
    assert r.status_code == 422 and "reason" in r.json()["detail"]
    r = api("POST", f"{gen}/rollback", "root", json={"reason": "users complain about format"})
    assert r.status_code == 200, r.text
    assert r.json()["state"] == "ROLLING_BACK"
    assert r.json()["transitions"][-1] == {**r.json()["transitions"][-1], "reason": "human_rollback",
                                           "actor": "root", "detail": "users complain about format"}
    r = api("POST", f"{gen}/promote", "root", json={"reason": "changed my mind"})
    assert r.status_code == 409 and "cannot go from ROLLING_BACK to PROMOTING" in r.json()["detail"]
    assert "allowed from ROLLING_BACK" in r.json()["fix"]


def test_an_aborted_generation_leaves_the_loop_active(api, settings):
    assert api("POST", "/api/loops", "alice", json=_body()).status_code == 201
    with session_scope(settings.db_url) as s:
        loop = repo.get_loop(s, "loop-a")
        gen = repo.start_generation(s, loop, {}, actor="scheduler")
        repo.move(s, gen.id, State.WATCHING, State.TRIGGERED, Reason.TRIGGER_MANUAL, actor="scheduler")
    r = api("POST", "/api/loops/loop-a/generations/1/abort", "root", json={"reason": "bad snapshot"})
    assert r.status_code == 200 and r.json()["state"] == "CANCELLED" and r.json()["ended_at"]
    loop = api("GET", "/api/loops/loop-a", "bob").json()
    assert loop["status"] == "active" and loop["active_generation"] is None
    # The list's last verdict: the newest generation that ended.
    listed = api("GET", "/api/loops", "bob").json()[0]
    assert (listed["last_ended"]["number"], listed["last_ended"]["state"]) == (1, "CANCELLED")


def test_a_loops_training_recipe_names_no_server_path(api, tmp_path):
    """The training recipe posted with a loop is checked as /api/jobs checks a job (docs/security.md,
    "Server paths"): a user key's base_model or init_adapter outside $STUDIO_HOME/models and the
    artifact store is 403, also on PUT; nothing is stored."""
    for field, value in (("base_model", str(tmp_path)), ("init_adapter", "/etc")):
        body = _body()
        body["train"][field] = value
        r = api("POST", "/api/loops", "alice", json=body)
        assert r.status_code == 403 and f"{field} {value!r} names a server path outside" in r.json()["detail"], r.text
    assert api("GET", "/api/loops", "alice").json() == []
    assert api("POST", "/api/loops", "alice", json=_body()).status_code == 201
    body = _body()
    body["train"]["base_model"] = str(tmp_path)
    r = api("PUT", "/api/loops/loop-a", "alice", json=body)
    assert r.status_code == 403, r.text
    assert api("GET", "/api/loops/loop-a", "alice").json()["train"]["base_model"] == BASE


def test_the_owner_triggers_a_generation_by_hand_once(api):
    assert api("POST", "/api/loops", "alice", json=_body()).status_code == 201
    r = api("POST", "/api/loops/loop-a/trigger", "bob")
    assert r.status_code == 403 and "belongs to another key" in r.json()["detail"]
    r = api("POST", "/api/loops/loop-a/trigger", "alice", json={"reason": "new data is in"})
    assert r.status_code == 201, r.text
    out = r.json()
    assert (out["number"], out["state"]) == (1, "TRIGGERED")
    assert [(t["to_state"], t["reason"], t["actor"]) for t in out["transitions"]] == [
        ("WATCHING", "step_done", "alice"), ("TRIGGERED", "trigger_manual", "alice")]
    assert out["transitions"][-1]["detail"] == "run by hand by alice: new data is in"
    r = api("POST", "/api/loops/loop-a/trigger", "root")
    assert r.status_code == 409 and "already has an active generation" in r.json()["detail"]
    assert api("POST", "/api/loops/nope/trigger", "root").status_code == 404
