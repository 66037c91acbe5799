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


# --- DELETE /api/loops/{name} -------------------------------------------------------------------

TO_GATE = ((State.WATCHING, State.TRIGGERED, Reason.TRIGGER_MANUAL), (State.TRIGGERED, State.SNAPSHOT, Reason.STEP_DONE),
           (State.SNAPSHOT, State.TRAINING, Reason.STEP_DONE), (State.TRAINING, State.GATE, Reason.STEP_DONE))
LOOP_TABLES = {"loops", "loop_generations", "loop_transitions", "loop_looks", "shadow_pairs"}


def _generation(settings, moves, loop_name: str = "loop-a", candidate: str | None = None) -> int:
    """A new generation of ``loop_name`` moved along ``moves`` (the candidate set on entering GATE,
    the served name recorded as its canary alias on entering CANARY)."""
    with session_scope(settings.db_url) as s:
        loop = repo.get_loop(s, loop_name)
        gen = repo.start_generation(s, loop, repo.frozen_config(repo.LoopSpec.model_validate(loop.spec), loop.train),
                                    actor="scheduler", champion="served-a@1")
        for frm, to, why in moves:
            values = {"candidate": candidate} if to is State.GATE and candidate else (
                {"canary_alias": loop.served_name} if to is State.CANARY and frm is State.GATE else None)
            repo.move(s, gen.id, frm, to, why, actor="scheduler", values=values)
        return gen.id


def _row_counts(settings) -> dict[str, int]:
    from sqlalchemy import func, select

    from studio.store.base import Base

    with session_scope(settings.db_url) as s:
        return {t.name: s.scalar(select(func.count()).select_from(t)) for t in Base.metadata.sorted_tables}


def _refused_generation_with_history(settings, owner_id: int) -> None:
    """loop-a's generation 1: trained served-a@2 (a version with its training job, keyed as the
    runner keys it), refused at the gate, with a stored look and a judged shadow pair."""
    from studio.jobs.status import create_job
    from studio.store.log_models import ShadowPair

    with session_scope(settings.db_url) as s:
        job = create_job(s, name="served-a", spec={"method": "dpo"}, max_retries=0,
                         submitted_by="loop:loop-a:g1:train:a1", owner_key_id=owner_id)
        s.add(ModelVersion(name="served-a", version=2, base_model=BASE, method="dpo", adapter_type="lora",
                           uri="file:///nowhere", stage="candidate", metrics={}, job_id=job.id))
    gen_id = _generation(settings, TO_GATE, candidate="served-a@2")
    with session_scope(settings.db_url) as s:
        rule = repo.LoopSpec.model_validate(repo.get_loop(s, "loop-a").spec).decision
        look = Look(at_s=60.0, weight=0.1, champion=ArmCounts(completions=9, rated=9, thumbs_up=5),
                    candidate=ArmCounts(completions=1, rated=1, thumbs_up=1),
                    step_assigned_champion=9, step_assigned_candidate=1)
        repo.record_look(s, gen_id, look, decide(look, rule))
        s.add(ShadowPair(id="pair-1", generation_id=gen_id, endpoint="chat", champion="served-a@1",
                         candidate="served-a@2", prompt=[{"role": "user", "content": "hi"}], prompt_text="hi",
                         champion_response="a", candidate_response="b", verdict="win"))
        repo.move(s, gen_id, State.GATE, State.REFUSED, Reason.GATE_REFUSED, actor="scheduler", detail="worse")


@pytest.mark.both_databases
def test_the_owner_deletes_a_loop_with_its_history_and_nothing_else(api, settings):
    assert api("POST", "/api/loops", "alice", json=_body()).status_code == 201
    _refused_generation_with_history(settings, api.alice_id)
    lineage = api("GET", "/api/models/served-a@2/lineage", "bob").json()
    assert lineage["loop_generation"]["loop"] == "loop-a" and lineage["loop_generation"]["state"] == "REFUSED"
    before = _row_counts(settings)
    for who in ("bob", "svc"):  # another user's key, a service key
        r = api("DELETE", "/api/loops/loop-a", who)
        assert r.status_code == 403, r.text
    assert _row_counts(settings) == before
    r = api("DELETE", "/api/loops/loop-a", "alice")
    assert r.status_code == 200, r.text
    assert r.json() == {"name": "loop-a", "served_name": "served-a", "generations": 1, "transitions": 6, "looks": 1,
                        "shadow_pairs": 1, "kept": r.json()["kept"]}
    r = api("GET", "/api/loops/loop-a", "alice")
    assert r.status_code == 404 and "loop 'loop-a' does not exist" in r.json()["detail"]
    after = _row_counts(settings)
    assert {t for t in before if before[t] != after[t]} == LOOP_TABLES  # versions, jobs, keys, ... untouched
    assert all(after[t] == 0 for t in LOOP_TABLES)
    # The version the generation trained keeps its lineage: the generation is gone, its job's key
    # still names the loop and generation.
    lineage = api("GET", "/api/models/served-a@2/lineage", "bob")
    assert lineage.status_code == 200, lineage.text
    assert lineage.json()["loop_generation"] is None
    assert lineage.json()["job"]["submitted_by"] == "loop:loop-a:g1:train:a1"
    assert lineage.json()["model"]["stage"] == "candidate"
    # The name and the served name are free: a new loop of the same name starts from nothing.
    r = api("POST", "/api/loops", "alice", json=_body())
    assert r.status_code == 201, r.text
    assert r.json()["generations"] == 0 and r.json()["last_ended"] is None


def test_an_admin_deletes_another_users_loop_and_an_unknown_name_is_a_404(api):
    assert api("POST", "/api/loops", "alice", json=_body()).status_code == 201
    r = api("DELETE", "/api/loops/loop-a", "root")
    assert r.status_code == 200 and r.json()["generations"] == 0
    assert api("GET", "/api/loops", "bob").json() == []
    r = api("DELETE", "/api/loops/loop-a", "root")
    assert r.status_code == 404
    assert r.json()["detail"] == "loop 'loop-a' does not exist" and "studio loop ls" in r.json()["fix"]
    responses = api("GET", "/api/openapi.json", "bob").json()["paths"]["/api/loops/{name}"]["delete"]["responses"]
    assert {"200", "403", "404", "409"} <= set(responses)


@pytest.mark.both_databases
def test_delete_is_refused_while_a_generation_is_active_and_deletes_nothing(api, settings):
    assert api("POST", "/api/loops", "alice", json=_body()).status_code == 201
    gen_id = _generation(settings, TO_GATE[:3])  # TRAINING

    def refused(state: str, also: str = "") -> None:
        before = _row_counts(settings)
        r = api("DELETE", "/api/loops/loop-a", "root")
        assert r.status_code == 409, r.text
        assert f"generation 1 is {state}{also}" in r.json()["detail"], r.json()
        assert "studio loop cancel loop-a" in r.json()["fix"] and "wait" in r.json()["fix"]
        assert _row_counts(settings) == before

    refused("TRAINING")
    with session_scope(settings.db_url) as s:
        for frm, to, why in ((State.TRAINING, State.GATE, Reason.STEP_DONE), (State.GATE, State.CANARY, Reason.SHADOW_SKIPPED)):
            repo.move(s, gen_id, frm, to, why, actor="scheduler")
    refused("CANARY")
    assert api("POST", "/api/loops/loop-a/pause", "alice").status_code == 200
    refused("PAUSED", ", paused in CANARY")
    # Cancelling unwinds the split through ROLLING_BACK: still refused until the runner ends it.
    assert api("POST", "/api/loops/loop-a/cancel", "alice").json()["active_generation"]["state"] == "ROLLING_BACK"
    refused("ROLLING_BACK")
    with session_scope(settings.db_url) as s:
        repo.move(s, gen_id, State.ROLLING_BACK, State.CANCELLED, Reason.CANCEL, actor="scheduler")
    r = api("DELETE", "/api/loops/loop-a", "alice")
    assert r.status_code == 200 and r.json()["generations"] == 1, r.text


def test_delete_is_refused_while_a_failed_generations_split_is_live(api, settings):
    """A generation that failed while rolling back (or promoting) may leave its canary split on the
    served name; once the loop is gone nothing would say the split was the loop's."""
    from studio.experiments.ab import stop_experiment
    from studio.loops.actions import ServiceActions

    assert api("POST", "/api/loops", "alice", json=_body()).status_code == 201
    with session_scope(settings.db_url) as s:
        s.add(ModelVersion(name="served-a", version=2, base_model=BASE, method="dpo", adapter_type="lora",
                           uri="file:///nowhere", stage="candidate", metrics={}))
    gen_id = _generation(settings, (*TO_GATE, (State.GATE, State.CANARY, Reason.SHADOW_SKIPPED)), candidate="served-a@2")
    with session_scope(settings.db_url) as s:
        ServiceActions().set_split(s, "served-a", {"served-a@1": 90, "served-a@2": 10})  # as the runner sets it
        repo.move(s, gen_id, State.CANARY, State.ROLLING_BACK, Reason.GUARDRAIL, actor="scheduler")
        repo.move(s, gen_id, State.ROLLING_BACK, State.FAILED, Reason.INFRA_FAILURE, actor="scheduler",
                  detail="the router's table was away")
    r = api("DELETE", "/api/loops/loop-a", "alice")
    assert r.status_code == 409, r.text
    assert "generation 1 ended FAILED with its canary split still on 'served-a'" in r.json()["detail"]
    assert "served-a@2 weight 10" in r.json()["detail"]
    assert "studio experiments stop served-a" in r.json()["fix"]
    assert api("GET", "/api/loops/loop-a", "alice").status_code == 200
    with session_scope(settings.db_url) as s:
        stop_experiment(s, "served-a")  # the served name is its champion's alone again
    assert api("DELETE", "/api/loops/loop-a", "alice").status_code == 200


@pytest.mark.both_databases
def test_a_new_loop_of_a_deleted_loops_name_does_not_take_its_jobs(api, settings):
    """The runner finds a generation's jobs by key (``loop:NAME:gN:train:aK``): a new loop of the
    same name must not take the deleted loop's generation 1 training job (and its version) as its
    own, nor cancel it."""
    from datetime import UTC, datetime

    from sqlalchemy import select

    from studio.loops.control import cancel_jobs
    from studio.loops.step import Ctx, RunnerConfig
    from studio.store.loop_models import LoopGeneration
    from studio.store.models import Job

    assert api("POST", "/api/loops", "alice", json=_body()).status_code == 201
    _refused_generation_with_history(settings, api.alice_id)
    with session_scope(settings.db_url) as s:  # the old job is still on its way (a cancel did not reach it yet)
        s.scalars(select(Job)).one().status = "RUNNING"
    assert api("DELETE", "/api/loops/loop-a", "alice").status_code == 200
    assert api("POST", "/api/loops", "alice", json=_body()).status_code == 201
    gen_id = _generation(settings, TO_GATE[:3])  # the new loop's generation 1, TRAINING
    with session_scope(settings.db_url) as s:
        gen, loop = s.get(LoopGeneration, gen_id), repo.get_loop(s, "loop-a")
        ctx = Ctx(s, gen, loop, repo.LoopSpec.model_validate(loop.spec), datetime.now(UTC), actions=None,
                  settings=settings, config=RunnerConfig())
        assert ctx.key("train") == "loop:loop-a:g1:train:a1"  # the same key as the deleted loop's job
        assert ctx.job("train", "train") is None  # the runner queues its own
        assert cancel_jobs(s, gen, by="alice") == []
        assert not s.scalars(select(Job)).one().cancel_requested


def test_the_gates_must_pass_dataset_must_exist_and_its_guards_be_sound(api, settings, write_rows):
    from studio.data.ingest import ingest_file

    body = _body()
    body["loop"]["gate"]["must_pass"] = {"dataset": "never-lose-these"}
    r = api("POST", "/api/loops", "root", json=body)
    assert r.status_code == 400, r.text
    assert "gate.must_pass.dataset 'never-lose-these' does not exist" in r.json()["detail"]
    assert "ingest the must-pass items first" in r.json()["fix"]
    bad_guard = _body()
    bad_guard["loop"]["gate"]["guards"][0]["margin"] = 1.0
    r = api("POST", "/api/loops", "root", json=bad_guard)
    assert r.status_code == 422 and "loop.gate.guards.0.margin" in r.json()["detail"]
    assert "must lie in [0, 1)" in r.json()["detail"]
    ingest_file(write_rows("mp.jsonl", [{"prompt": "reverse: 1 2", "completion": "2 1"}]), "never-lose-these", settings)
    r = api("POST", "/api/loops", "root", json=body)
    assert r.status_code == 201, r.text
    assert r.json()["spec"]["gate"]["must_pass"] == {"dataset": "never-lose-these", "min_score": 1.0}
    # a replaced recipe is checked the same way
    body["loop"]["gate"]["must_pass"] = {"dataset": "gone"}
    r = api("PUT", "/api/loops/loop-a", "root", json=body)
    assert r.status_code == 400 and "gate.must_pass.dataset 'gone' does not exist" in r.json()["detail"]
