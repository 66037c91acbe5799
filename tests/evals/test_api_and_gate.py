"""/api/evals (queue, show with the live leaderboard, paginated results, SSE, refusals) and the
promotion gate (first champion, better candidate promoted, worse refused and recorded, --force
recorded), on SQLite and PostgreSQL, through the real gateway to the scripted provider."""

from __future__ import annotations

import json

import httpx
from sqlalchemy import select

from studio.evals.gate import GateConfig, gated_promote, promotion_history, set_gate
from studio.evals.run import run_job
from studio.jobs.status import JobStatus, transition
from studio.registry.versions import get_version, register_version
from studio.store.db import session_scope
from studio.store.models import Job
from tests.api.checks import assert_problem


def claim_and_run(settings, gateway, eval_id: int) -> None:
    """What the scheduler does with a QUEUED eval: STARTING, then the entrypoint runs it."""
    with session_scope(settings.db_url) as s:
        transition(s, eval_id, JobStatus.STARTING, "test: as the scheduler")
        s.get(Job, eval_id).attempts = 1
    with gateway.client() as client:
        assert run_job(settings, eval_id, client=client) == 0


def test_evals_api(settings, gateway, reverse_data):
    api = httpx.Client(base_url=gateway.api_url, headers=gateway.headers(), timeout=30)
    body = {"name": "api-run", "dataset": reverse_data, "models": ["good", "bad"], "limit": 6,
            "generation": {"max_tokens": 16}, "scorers": [{"type": "exact_match"}]}
    r = api.post("/api/evals", json=body)
    assert r.status_code == 201, r.text
    created = r.json()
    eval_id = created["id"]
    assert created["status"] == "QUEUED" and created["dataset"] == f"{reverse_data}@1"
    progress = created["progress"]
    assert (progress["unit"], progress["done"], progress["total"], progress["eta_s"]) == ("row", 0, 12, None)
    assert progress["text"].startswith("rows 0/12"), progress

    claim_and_run(settings, gateway, eval_id)
    detail = api.get(f"/api/evals/{eval_id}").json()
    assert detail["status"] == "SUCCEEDED" and detail["progress"]["done"] == 12
    means = {(x["model"], x["scorer"]): x["mean"] for x in detail["leaderboard"]["scores"]}
    assert means == {("good", "exact_match"): 1.0, ("bad", "exact_match"): 0.0}
    assert [e["to"] for e in detail["events"]] == ["QUEUED", "STARTING", "RUNNING", "CHECKPOINTING", "SUCCEEDED"]

    page1 = api.get(f"/api/evals/{eval_id}/results", params={"limit": 5}).json()["results"]
    page2 = api.get(f"/api/evals/{eval_id}/results", params={"limit": 5, "offset": 5}).json()["results"]
    assert len(page1) == 5 and len(page2) == 5 and not {r["id"] for r in page1} & {r["id"] for r in page2}
    first = page1[0]
    assert first["scores"]["exact_match"]["score"] in (0.0, 1.0) and first["reference"]
    only_good = api.get(f"/api/evals/{eval_id}/results", params={"model": "good", "limit": 100}).json()["results"]
    assert len(only_good) == 6 and all(r["model"] == "good" for r in only_good)

    events = []
    with api.stream("GET", f"/api/evals/{eval_id}/events") as resp:
        assert resp.headers["content-type"].startswith("text/event-stream")
        kind = None
        for line in resp.iter_lines():
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: "):
                events.append((kind, json.loads(line[6:])))
    kinds = [k for k, _ in events]
    assert kinds.count("result") == 12 and kinds[-1] == "end" and "leaderboard" in kinds
    assert events[-1][1]["status"] == "SUCCEEDED"

    listed = api.get("/api/evals").json()
    assert [e["id"] for e in listed] == [eval_id]
    pooled = api.get("/api/evals/leaderboard", params={"dataset": reverse_data}).json()
    assert pooled["runs"] == [eval_id]

    # refusals name the problem; no job is created
    assert_problem(api.post("/api/evals", json={**body, "models": ["nope"]}), 404, "no model named 'nope'")
    assert_problem(api.post("/api/evals", json={**body, "split": "validation"}), 400, "0 rows")
    assert api.post("/api/evals", json={**body, "typo": 1}).status_code == 422
    assert len(api.get("/api/evals").json()) == 1
    assert_problem(api.get("/api/evals/999"), 404, "eval 999 does not exist")


def _register(settings, n: int) -> None:
    with session_scope(settings.db_url) as s:
        for _ in range(n):
            register_version(s, name="rev", base_model="tiny", method="sft", adapter_type="lora", uri="file:///x")


def test_promotion_gate(settings, gateway, reverse_data):
    _register(settings, 3)  # served by the gateway as: rev@1 bad, rev@2 good, rev@3 bad
    with session_scope(settings.db_url) as s:
        # without a gate nothing changes: promotion as before, recorded
        assert gated_promote(s, "rev@1", by="t").outcome == "promoted"
        set_gate(s, "rev", GateConfig(dataset=reverse_data, margin=0.1, limit=8, generation={"max_tokens": 16}))
    with session_scope(settings.db_url) as s:  # as the CLI does: nothing written before the gateway is asked
        o = gated_promote(s, "rev@2", by="t")
        assert o.outcome == "evaluating" and o.champion == "rev@1"
        eval_id = o.eval_id
    with session_scope(settings.db_url) as s:  # asked again while it runs: the same eval, not a second one
        assert gated_promote(s, "rev@2", by="t").eval_id == eval_id
    claim_and_run(settings, gateway, eval_id)
    with session_scope(settings.db_url) as s:
        o = gated_promote(s, "rev@2", by="t")  # reuses the finished eval
        assert (o.outcome, o.eval_id, o.candidate_score, o.champion_score) == ("promoted", eval_id, 1.0, 0.0)
        assert get_version(s, "rev").version == 2

    # a worse candidate, through the API: 202 evaluating, then 409 refused (and recorded)
    api = httpx.Client(base_url=gateway.api_url, headers=gateway.headers(), timeout=30)
    r = api.post("/api/models/rev@3/promote", json={})
    assert r.status_code == 202, r.text
    claim_and_run(settings, gateway, r.json()["promotion"]["eval_id"])
    assert_problem(api.post("/api/models/rev@3/promote", json={}), 409, "rev@3 was not promoted", "does not beat")
    with session_scope(settings.db_url) as s:
        assert get_version(s, "rev").version == 2  # the champion stays
    assert_problem(api.post("/api/models/rev@3/promote", json={"force": True}), 400, "needs a reason")
    r = api.post("/api/models/rev@3/promote", json={"force": True, "reason": "rollback drill"})
    assert r.status_code == 200 and r.json()["stage"] == "champion" and r.json()["promotion"]["outcome"] == "forced"

    with session_scope(settings.db_url) as s:
        history = promotion_history(s, "rev")
        n_evals = len(list(s.scalars(select(Job.id).where(Job.kind == "eval"))))
    assert [(h["version"], h["outcome"]) for h in history] == [(1, "promoted"), (2, "promoted"), (3, "refused"),
                                                               (3, "forced")]
    assert history[3]["forced"] and "forced by eval-tests (reason: rollback drill)" in history[3]["reason"]
    assert n_evals == 2  # the refusal and the forced promotion reused the eval
    assert api.get("/api/models/rev/gate").json()["gate"]["margin"] == 0.1
    assert len(api.get("/api/models/rev/promotions").json()) == 4


def test_the_leaderboard_is_live_while_the_run_goes(settings, gateway, reverse_data):
    from studio.evals.run import create_here
    from studio.evals.spec import EvalSpec

    api = httpx.Client(base_url=gateway.api_url, headers=gateway.headers(), timeout=30)
    s = EvalSpec.model_validate({"dataset": reverse_data, "models": ["good", "bad"], "limit": 4, "concurrency": 1,
                                 "generation": {"max_tokens": 16}, "scorers": [{"type": "exact_match"}]})
    eval_id = create_here(settings.db_url, s, "test")
    snapshots = []

    def look(event):  # called by the runner after each answer is stored: what a client sees right now
        snapshots.append(api.get(f"/api/evals/{eval_id}").raise_for_status().json())

    with gateway.client() as client:
        assert run_job(settings, eval_id, client=client, on_result=look) == 0
    assert [d["status"] for d in snapshots] == ["RUNNING"] * 8
    done = [d["progress"]["done"] for d in snapshots]
    assert done == sorted(done) and done[0] < 8 and all(n >= i + 1 for i, n in enumerate(done)), done
    # the scores of every answer stored so far (an answer and its scores are one transaction)
    assert [sum(r["n"] for r in d["leaderboard"]["scores"]) for d in snapshots] == done


def test_evals_api_preflight_asks_the_gateway_handle_not_http(settings, gateway, reverse_data, monkeypatch):
    """The ingress holds no admin key: POST /api/evals checks model names with the Gateway
    deployment's handle (app.state.gateway), so it works with no key and no gateway URL to call."""
    from tests.loopback import free_port

    for var in ("STUDIO_API_KEY", "STUDIO_ADMIN_KEY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("STUDIO_GATEWAY_URL", f"http://127.0.0.1:{free_port()}/gateway/v1")  # nothing listens
    api = httpx.Client(base_url=gateway.api_url, headers=gateway.headers(), timeout=30)
    body = {"name": "via-handle", "dataset": reverse_data, "models": ["good"], "limit": 2,
            "scorers": [{"type": "exact_match"}]}
    r = api.post("/api/evals", json=body)
    assert r.status_code == 201, r.text
    assert r.json()["status"] == "QUEUED"
    problem = assert_problem(api.post("/api/evals", json={**body, "models": ["no-such-model"]}), 404,
                             "the gateway serves no model named 'no-such-model'")
    assert "good" in json.dumps(problem)  # the fix lists what the gateway's handle answered
