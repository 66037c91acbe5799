"""GET /api/jobs/compare and `studio jobs compare` on a real database (SQLite and PostgreSQL), with
training runs, their metrics, registered versions and an eval stored directly (no training needed):
recipes side by side with the differing fields marked, curves, final metrics, wall time, tokens/s,
peak memory ("—" when absent), eval scores; who may see which recipe; bad ids named."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from studio.jobs.status import JobStatus, create_job
from studio.keys import create_key
from studio.registry.versions import register_version
from studio.store.db import session_scope
from studio.store.models import EvalOutput, EvalScore, JobEvent, JobMetric
from tests.api.checks import assert_problem, bearer
from tests.cli_invoke import invoke

T0 = datetime(2026, 12, 6, 12, 0, tzinfo=timezone.utc)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def recipe(lr: float, *, r: int = 8) -> dict:
    return {"name": "rev", "method": "sft", "base_model": "tiny", "data": {"dataset": "digits@1"},
            "hyper": {"learning_rate": lr, "epochs": 2}, "lora": {"r": r, "target_modules": ["q_proj", "v_proj"]}}


def _run(s, owner, spec: dict, *, start: float, end: float, losses: list[float], result: dict) -> int:
    job = create_job(s, name="rev", spec=spec, max_retries=1, submitted_by=owner.name, owner_key_id=owner.id)
    s.add(JobEvent(job_id=job.id, at=at(start), from_status="QUEUED", to_status="STARTING", reason="test"))
    s.add(JobEvent(job_id=job.id, at=at(end), from_status="RUNNING", to_status="SUCCEEDED", reason="test"))
    for i, loss in enumerate(losses, start=1):
        s.add(JobMetric(job_id=job.id, attempt=1, step=10 * i, key="loss", value=loss, at=at(start + i)))
        s.add(JobMetric(job_id=job.id, attempt=1, step=10 * i, key="tokens_per_s", value=100.0 * i, at=at(start + i)))
    s.add(JobMetric(job_id=job.id, attempt=1, step=10 * len(losses), key="eval_loss", value=losses[-1] + 0.1,
                    at=at(end)))
    job.status, job.attempts, job.result = JobStatus.SUCCEEDED, 1, result
    s.flush()
    return job.id


def store_runs(settings) -> dict:
    """alice's two runs (lr 3e-3 and 1e-3; the second registered rev@2 and was evaluated), an eval
    job, and the secrets of alice, bob (another user), an admin and a service key. The UI test reuses it."""
    with session_scope(settings.db_url) as s:
        alice_secret, alice = create_key(s, "alice", "user")
        bob_secret, _ = create_key(s, "bob", "user")
        admin_secret, _ = create_key(s, "root", "admin")
        svc_secret, _ = create_key(s, "svc", "service")
        first = _run(s, alice, recipe(3e-3), start=0, end=130, losses=[2.0, 1.0, 0.5],
                     result={"metrics": {"train_loss": 1.1, "tokens_per_s": 250.0, "peak_memory_mb": 812.0}})
        second = _run(s, alice, recipe(1e-3), start=200, end=260, losses=[2.0, 1.5],
                      result={"model": "rev@2", "metrics": {"train_loss": 1.7}})
        # A retry of the second run's last step: the curve keeps the later attempt's value.
        s.add(JobMetric(job_id=second, attempt=2, step=20, key="loss", value=1.4, at=at(250)))
        register_version(s, name="rev", base_model="tiny", method="sft", adapter_type="lora", uri="file:///a",
                         job_id=first, owner_key_id=alice.id, metrics={"exact_match": 0.25})
        register_version(s, name="rev", base_model="tiny", method="sft", adapter_type="lora", uri="file:///b",
                         job_id=second, owner_key_id=alice.id, metrics={"exact_match": 0.5})
        ev = create_job(s, name="ev", kind="eval", max_retries=0, submitted_by="alice", owner_key_id=alice.id,
                        spec={"dataset": "digits@1", "models": ["rev"], "scorers": [{"type": "exact_match"}]})
        ev.result, ev.status = {"snapshot_id": "snap-1", "total": 4}, JobStatus.SUCCEEDED
        # The eval asked for "rev" (the champion name); rev@2 answered: the scores are rev@2's.
        for dp, score in enumerate([1.0, 0.0, 1.0, 1.0]):
            s.add(EvalOutput(job_id=ev.id, datapoint=dp, model="rev", model_version="rev@2", input=[], output="x"))
            s.add(EvalScore(job_id=ev.id, datapoint=dp, model="rev", scorer="exact_match", score=score))
        s.flush()
        return {"first": first, "second": second, "eval": ev.id, "alice": alice_secret, "bob": bob_secret,
                "admin": admin_secret, "service": svc_secret}


@pytest.fixture
def stored(settings) -> dict:
    return store_runs(settings)


def compare(client, secret, ids) -> object:
    return client.get("/api/jobs/compare", headers=bearer(secret), params={"ids": ",".join(map(str, ids))})


def test_runs_side_by_side(client, stored):
    r = compare(client, stored["alice"], [stored["first"], stored["second"]])
    assert r.status_code == 200, r.text
    body = r.json()
    first, second = body["runs"]
    assert (first["id"], second["id"]) == (stored["first"], stored["second"])
    fields = {f["key"]: f for f in body["recipe"]}
    assert fields["hyper.learning_rate"] == {"key": "hyper.learning_rate", "values": [3e-3, 1e-3], "differs": True}
    assert fields["lora.r"]["differs"] is False and fields["lora.target_modules"]["values"][0] == ["q_proj", "v_proj"]
    assert [f["key"] for f in body["recipe"] if f["differs"]] == ["hyper.learning_rate"]

    assert body["curve_keys"] == ["loss", "eval_loss"]
    assert [(p["step"], p["value"]) for p in first["curves"]["loss"]] == [(10, 2.0), (20, 1.0), (30, 0.5)]
    assert [(p["step"], p["value"], p["attempt"]) for p in second["curves"]["loss"]] == [(10, 2.0, 1), (20, 1.4, 2)]
    assert second["curves"]["eval_loss"][0]["value"] == pytest.approx(1.6)

    assert (first["wall_s"], second["wall_s"]) == (130.0, 60.0)
    assert first["tokens_per_s"] == 250.0  # the final figure it recorded
    assert second["tokens_per_s"] == pytest.approx(150.0)  # else the mean of the logged ones
    assert first["peak_memory"] == {"key": "peak_memory_mb", "value": 812.0} and second["peak_memory"] is None
    assert first["final_metrics"]["train_loss"] == 1.1 and first["final_metrics"]["eval_loss"] == pytest.approx(0.6)
    assert second["final_metrics"]["loss"] == 1.4  # the latest attempt's last value

    assert [(v["ref"], v["metrics"], v["scores"]) for v in first["versions"]] == [("rev@1", {"exact_match": 0.25}, [])]
    (v2,) = second["versions"]
    assert v2["ref"] == "rev@2" and [(s["eval_id"], s["dataset"], s["snapshot_id"], s["scorer"], s["mean"], s["n"])
                                     for s in v2["scores"]] == [(stored["eval"], "digits@1", "snap-1", "exact_match",
                                                                 0.75, 4)]
    assert all(r["recipe_hidden"] is None for r in body["runs"])


def test_bad_ids_are_4xx_naming_the_problem(client, stored):
    a, b, ev = stored["first"], stored["second"], stored["eval"]
    key = stored["alice"]
    assert_problem(compare(client, key, [a]), 400, "at least 2 jobs, got 1")
    assert_problem(client.get("/api/jobs/compare", headers=bearer(key)), 400, "at least 2 jobs, got 0")
    assert_problem(compare(client, key, list(range(1, 10))), 400, "at most 8 jobs, got 9")
    assert_problem(compare(client, key, [a, "x"]), 400, "'x' is not a job id")
    assert_problem(compare(client, key, [a, 2**40]), 400, "is not a job id")
    assert_problem(compare(client, key, [a, a]), 400, f"job {a} is listed twice")
    assert_problem(compare(client, key, [a, 99999]), 404, "job 99999 does not exist")
    body = assert_problem(compare(client, key, [a, ev]), 400, f"job {ev} is not a training job (its kind is eval)")
    assert str(ev) in body["fix"]
    # Repeated ids= work as well as a comma list.
    r = client.get("/api/jobs/compare", headers=bearer(key), params=[("ids", a), ("ids", b)])
    assert r.status_code == 200 and [x["id"] for x in r.json()["runs"]] == [a, b]


def test_who_may_compare(client, stored):
    """As GET /api/jobs/{id}: team keys read any job, the recipe only its owner's and admins';
    a service key is refused for its role, no key is 401."""
    ids = [stored["first"], stored["second"]]
    assert_problem(client.get("/api/jobs/compare", params={"ids": f"{ids[0]},{ids[1]}"}), 401)
    refused = assert_problem(compare(client, stored["service"], ids), 403, "role")
    assert "recipe" not in refused["detail"]
    bob = compare(client, stored["bob"], ids).json()
    single = client.get(f"/api/jobs/{ids[0]}", headers=bearer(stored["bob"])).json()
    assert single["spec"] is None and all(r["recipe_hidden"] == single["spec_hidden"] for r in bob["runs"])
    assert all(f["values"] == [None, None] and f["differs"] is False for f in bob["recipe"])
    assert bob["runs"][0]["final_metrics"]["train_loss"] == 1.1  # the numbers are the team's, as /metrics
    admin = compare(client, stored["admin"], ids).json()
    assert [f["key"] for f in admin["recipe"] if f["differs"]] == ["hyper.learning_rate"]


def test_cli_prints_the_comparison(settings, stored, monkeypatch):
    monkeypatch.setenv("STUDIO_HOME", str(settings.home))
    monkeypatch.setenv("STUDIO_DATABASE_URL", settings.db_url)
    monkeypatch.setenv("COLUMNS", "200")
    a, b = str(stored["first"]), str(stored["second"])
    code, out = invoke("jobs", "compare", a, b)
    assert code == 0, out
    for part in ("hyper.learning_rate", "0.003", "0.001", "2m10s", "1m00s", "812 (peak_memory_mb)",
                 "2 → 0.5 (0.5 @ 30)", "eval_loss", "rev@2", "exact_match", "0.75", "digits@1"):
        assert part in out, (part, out)
    peak_row = next(line for line in out.splitlines() if "peak memory" in line)
    assert "—" in peak_row  # the second run recorded none
    assert "lora.r" not in out  # the same in both: shown with --all only
    code, out = invoke("jobs", "compare", a, b, "--all")
    assert code == 0 and "lora.r" in out
    code, out = invoke("jobs", "compare", a, b, "--json")
    assert code == 0 and '"curve_keys"' in out
    code, out = invoke("jobs", "compare", a)
    assert code == 1 and "at least 2 jobs, got 1" in out
    code, out = invoke("jobs", "compare", a, str(stored["eval"]))
    assert code == 1 and "compare takes training jobs" in out


def test_jobs_show_prints_eval_loss_beside_loss(settings, stored, monkeypatch):
    """`studio jobs show ID`'s metrics line carries the validation loss at its step (issue 25 item 1)."""
    monkeypatch.setenv("STUDIO_HOME", str(settings.home))
    monkeypatch.setenv("STUDIO_DATABASE_URL", settings.db_url)
    monkeypatch.setenv("COLUMNS", "200")
    code, out = invoke("jobs", "show", str(stored["first"]))
    assert code == 0, out
    metrics = next(line for line in out.splitlines() if line.startswith("metrics (last value): "))
    assert "loss=0.5@30" in metrics and "eval_loss=0.6@30" in metrics, metrics
