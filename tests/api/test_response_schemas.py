"""The job, eval and synth routes declare typed responses: /api/openapi.json names their schemas,
and what the routes return for real rows validates against them (JSON Schema 2020-12, formats
checked), with times as before (``isoformat()`` of aware UTC: "+00:00")."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest
from jsonschema import Draft202012Validator, FormatChecker

from sqlalchemy import select

from studio.jobs.status import JobStatus, create_job, transition
from studio.keys import create_key
from studio.store.db import session_scope
from studio.store.models import ApiKey, EvalOutput, EvalScore, JobMetric
from tests.api.checks import bearer

# route → the component its 200 response names (a list route: its items)
ROUTES = {
    ("/api/jobs", "get"): "JobSummary",
    ("/api/jobs", "post"): "JobDetail",
    ("/api/jobs/{job_id}", "get"): "JobDetail",
    ("/api/jobs/{job_id}/cancel", "post"): "JobSummary",
    ("/api/jobs/{job_id}/metrics", "get"): "JobMetrics",
    ("/api/evals", "get"): "EvalSummary",
    ("/api/evals/{eval_id}", "get"): "EvalDetail",
    ("/api/evals/{eval_id}/results", "get"): "EvalResultsPage",
    ("/api/evals/leaderboard", "get"): "DatasetLeaderboard",
    ("/api/synth/{job_id}", "get"): "SynthStatus",
    ("/api/synth/{job_id}/rows", "get"): "SynthDraftRows",
}


@pytest.fixture
def openapi(client) -> dict:
    return client.get("/api/openapi.json").json()


def response_schema(openapi: dict, path: str, method: str) -> dict:
    responses = openapi["paths"][path][method]["responses"]
    ok = next(v for k, v in responses.items() if k.startswith("2"))
    return ok["content"]["application/json"]["schema"]


def assert_valid(openapi: dict, component: str, body) -> None:
    """``body`` validates against the component, and every key it has is one the schema declares."""
    schema = {"$ref": f"#/components/schemas/{component}", "components": openapi["components"]}
    errors = sorted(Draft202012Validator(schema, format_checker=FormatChecker()).iter_errors(body), key=str)
    assert not errors, [f"{list(e.absolute_path)}: {e.message}" for e in errors]
    declared = openapi["components"]["schemas"][component]["properties"]
    assert set(body) <= set(declared), set(body) - set(declared)


def assert_iso_utc(value: str) -> None:
    assert value.endswith("+00:00") and datetime.fromisoformat(value).utcoffset().total_seconds() == 0, value


def test_openapi_names_the_response_schemas(openapi):
    for (path, method), component in ROUTES.items():
        schema = response_schema(openapi, path, method)
        ref = schema["items"]["$ref"] if schema.get("type") == "array" else schema["$ref"]
        assert ref == f"#/components/schemas/{component}", (path, method, schema)
    job = openapi["components"]["schemas"]["JobDetail"]["properties"]
    assert job["created_at"]["format"] == "date-time" and job["status"]["$ref"].endswith("/JobStatus")
    assert job["events"]["items"]["$ref"].endswith("/JobEventView") and job["spec_hidden"]["description"]
    assert openapi["components"]["schemas"]["EvalDetail"]["properties"]["result"]["$ref"].endswith("/EvalResult")
    assert openapi["components"]["schemas"]["SynthStatus"]["properties"]["result"]["$ref"].endswith("/SynthResult")


@pytest.fixture
def bob(settings) -> str:
    with session_scope(settings.db_url) as s:
        return create_key(s, "bob", "user")[0]


@pytest.fixture
def rows(settings, user_key) -> dict[str, int]:
    """Alice's: a training job that ran two steps, an eval with one scored answer, a synth job
    a third done."""
    with session_scope(settings.db_url) as s:
        alice = s.scalars(select(ApiKey.id).where(ApiKey.name == "alice")).one()
        train = create_job(s, name="rev", spec={"method": "sft", "data": {"dataset": "d@1"}, "base_model": "m"},
                           max_retries=1, submitted_by="alice", owner_key_id=alice)
        train.result = {"total_steps": 4, "model": "rev@1", "kept": {"by": "a later writer"}}
        train.heartbeat_at = datetime.now(timezone.utc)
        for to in (JobStatus.STARTING, JobStatus.RUNNING):
            transition(s, train.id, to, f"to {to}")
        s.add_all([JobMetric(job_id=train.id, attempt=1, step=n, key="loss", value=1.0 / n) for n in (1, 2)])
        ev = create_job(s, name="e", kind="eval", max_retries=0, submitted_by="alice", owner_key_id=alice,
                        spec={"dataset": "d", "models": ["m"], "scorers": [{"type": "exact_match"}]})
        ev.result = {"snapshot_id": "abc", "rows": 1, "done": 0, "total": 1}
        s.flush()
        out = EvalOutput(job_id=ev.id, datapoint=0, model="m", model_version="m", input=[{"role": "user",
                         "content": "hi"}], reference="a", output="a", latency_ms=12.5, cost_usd=0.0)
        s.add_all([out, EvalScore(job_id=ev.id, datapoint=0, model="m", scorer="exact_match", score=1.0)])
        synth = create_job(s, name="docs-qa", kind="synth", max_retries=2, submitted_by="alice",
                           owner_key_id=alice,
                           spec={"source": "docs", "name": "docs-qa", "mode": "qa", "model": "tiny"})
        synth.result = {"progress": {"chunks_done": 1, "chunks_total": 3, "rows": 2, "parse_failures": 0,
                                     "tokens": 40, "cost_usd": 0.0}}
        return {"train": train.id, "eval": ev.id, "synth": synth.id}


def test_responses_validate_against_their_schemas(client, openapi, user_key, admin_key, bob, rows):
    def get(path: str, key: str = user_key, **params):
        r = client.get(path, headers=bearer(key), params=params)
        assert r.status_code == 200, r.text
        return r.json()

    listed = get("/api/jobs")
    assert {j["id"] for j in listed} == set(rows.values())
    for j in listed:
        assert_valid(openapi, "JobSummary", j)
        assert_iso_utc(j["created_at"])

    job = get(f"/api/jobs/{rows['train']}")
    assert_valid(openapi, "JobDetail", job)
    assert [(e["from"], e["to"]) for e in job["events"]] == [(None, "QUEUED"), ("QUEUED", "STARTING"),
                                                              ("STARTING", "RUNNING")]
    assert_iso_utc(job["events"][0]["at"])
    # the result as stored: unknown keys kept, no defaults of the typed model added
    assert job["result"] == {"total_steps": 4, "model": "rev@1", "kept": {"by": "a later writer"}}
    assert (job["step"], job["total_steps"], job["method"]) == (2, 4, "sft") and "spec_hidden" not in job
    assert_iso_utc(job["heartbeat_at"])

    metrics = get(f"/api/jobs/{rows['train']}/metrics")
    assert_valid(openapi, "JobMetrics", metrics)
    assert [p["value"] for p in metrics["metrics"]["loss"]] == [1.0, 0.5]

    ev = get(f"/api/evals/{rows['eval']}", admin_key)
    assert_valid(openapi, "EvalDetail", ev)
    assert ev["result"] == {"snapshot_id": "abc", "rows": 1, "done": 0, "total": 1}
    assert (ev["progress"]["done"], ev["progress"]["total"], ev["progress"]["unit"]) == (1, 1, "row")
    assert ev["progress"]["text"].startswith("rows 1/1") and ev["heartbeat_at"] is None
    assert ev["leaderboard"]["scores"][0] == {
        "model": "m", "scorer": "exact_match", "n": 1, "mean": 1.0, "ci95": None, "unscored": 0}
    for e in get("/api/evals"):
        assert_valid(openapi, "EvalSummary", e)
    page = get(f"/api/evals/{rows['eval']}/results")
    assert_valid(openapi, "EvalResultsPage", page)
    assert page["results"][0]["scores"] == {"exact_match": {"score": 1.0, "status": "scored", "reason": None,
                                                            "raw": None}}

    synth = get(f"/api/synth/{rows['synth']}")
    assert_valid(openapi, "SynthStatus", synth)
    assert synth["progress"]["chunks_total"] == 3 and synth["result"] == {} and synth["spec"]["mode"] == "qa"
    assert_iso_utc(synth["updated_at"])
    for path, component in ((f"/api/synth/{rows['synth']}", "SynthStatus"),
                            (f"/api/jobs/{rows['train']}", "JobDetail"), (f"/api/evals/{rows['eval']}", "EvalDetail")):
        hidden = get(path, bob)  # not bob's: the spec is withheld, and the note says why
        assert_valid(openapi, component, hidden)
        assert hidden["spec"] is None and "owner" in hidden["spec_hidden"], path
