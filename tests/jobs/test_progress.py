"""Progress with totals, rate and ETA (studio.jobs.progress) from stored rows with virtual
timestamps, on a real database; the same through GET /api/jobs, /api/evals, /api/synth and the CLI."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from fastapi.testclient import TestClient

from studio.api.app import create_app
from studio.jobs.progress import Point, job_progress, measure
from studio.jobs.status import JobStatus, create_job
from studio.keys import create_key
from studio.store.db import session_scope
from studio.store.models import EvalOutput, Job, JobEvent, JobMetric
from tests.api.checks import bearer
from tests.cli_invoke import invoke

pytestmark = pytest.mark.both_databases  # PostgreSQL too: locking, concurrent writers, constraints

T0 = datetime(2026, 12, 6, 12, 0, tzinfo=timezone.utc)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


# -- the computation, pure -----------------------------------------------------------------------

def test_rate_and_eta_from_the_first_and_latest_points():
    p = measure("step", 120, 600, Point(at(0), 20), Point(at(50), 120), now=at(50), running=True,
                epoch=1.2, epochs=3)
    assert p.rate_per_s == pytest.approx(2.0) and p.eta_s == pytest.approx(240.0)
    assert p.text == "step 120/600 · epoch 1.2/3 · ETA 4m00s"
    # The server's clock moves on without a new point: the ETA counts down, never below zero.
    assert measure("step", 120, 600, Point(at(0), 20), Point(at(50), 120), now=at(60), running=True).eta_s \
        == pytest.approx(230.0)
    assert measure("step", 120, 600, Point(at(0), 20), Point(at(50), 120), now=at(9999), running=True).eta_s == 0
    rows = measure("row", 150, 200, Point(at(0), 27), Point(at(10), 150), now=at(10), running=True)
    assert rows.text == "rows 150/200 · 12.3 rows/s · ETA 4s"


def test_unknown_total_is_a_question_mark_and_one_point_gives_no_eta():
    p = measure("step", 120, None, Point(at(0), 20), Point(at(50), 120), now=at(50), running=True, epoch=0.5)
    assert p.total is None and p.eta_s is None and p.rate_per_s == pytest.approx(2.0)
    assert p.text == "step 120/? · epoch 0.5/?"
    one = measure("row", 1, 200, Point(at(5), 1), Point(at(5), 1), now=at(9), running=True)
    assert (one.rate_per_s, one.eta_s, one.text) == (None, None, "rows 1/200")
    none = measure("chunk", 0, 8, None, None, now=at(0), running=False, rows=0)
    assert (none.updated_at, none.text) == (None, "chunks 0/8 · 0 rows")
    done = measure("row", 200, 200, Point(at(0), 1), Point(at(20), 200), now=at(30), running=False)
    assert done.eta_s is None and "ETA" not in done.text  # not running: no ETA
    assert measure("step", 3, 7200, Point(at(0), 0), Point(at(1), 1), now=at(1), running=True).text \
        == "step 3/7200 · ETA 1h59m"


# -- from stored rows ----------------------------------------------------------------------------

def _job(s, kind: str, status: JobStatus, *, attempts: int, result: dict | None = None,
         spec: dict | None = None, starts: list[float] = ()) -> Job:
    """A job whose attempts began (STARTING) at the virtual times ``starts``."""
    job = create_job(s, name=f"{kind}-job", spec=spec or {}, max_retries=2, submitted_by="test", kind=kind)
    job.result, job.attempts = result or {}, attempts
    for t in starts:
        s.add(JobEvent(job_id=job.id, at=at(t), from_status="QUEUED", to_status="STARTING", reason="test"))
    job.status = status
    s.flush()
    return job


def _train_job(s) -> Job:
    """Attempt 1 reached step 300 long ago; attempt 2 resumed at 100 and logged to 150 in 25 s."""
    job = _job(s, "train", JobStatus.RUNNING, attempts=2, result={"total_steps": 600, "epochs": 3.0},
               starts=[0, 1000])
    for step in (10, 300):
        s.add(JobMetric(job_id=job.id, attempt=1, step=step, key="loss", value=1.0, at=at(step)))
    s.add(JobMetric(job_id=job.id, attempt=2, step=100, key="resumed_from_step", value=100, at=at(1000)))
    for step, t, epoch in ((120, 1010, 0.6), (150, 1025, 0.75)):
        s.add(JobMetric(job_id=job.id, attempt=2, step=step, key="loss", value=0.5, at=at(t)))
        s.add(JobMetric(job_id=job.id, attempt=2, step=step, key="epoch", value=epoch, at=at(t)))
    s.flush()
    return job


def test_training_counts_the_current_attempt_only(settings):
    with session_scope(settings.db_url) as s:
        p = job_progress(s, _train_job(s), now=at(1025))
        assert (p.unit, p.done, p.total, p.epoch, p.epochs) == ("step", 150, 600, 0.75, 3.0)
        assert p.rate_per_s == pytest.approx(2.0) and p.eta_s == pytest.approx(225.0)
        assert p.updated_at == at(1025) and p.text == "step 150/600 · epoch 0.8/3 · ETA 3m45s"
        # Queued, before any step: the spec's epochs are the run's (no max_steps), no total yet.
        q = _job(s, "train", JobStatus.QUEUED, attempts=0, spec={"hyper": {"epochs": 2}})
        assert job_progress(s, q, now=at(0)).text == "step 0/?"
        assert job_progress(s, q, now=at(0)).epochs == 2.0


def test_eval_rate_from_this_attempts_answers(settings):
    with session_scope(settings.db_url) as s:
        job = _job(s, "eval", JobStatus.RUNNING, attempts=2, result={"total": 200}, starts=[0, 100])
        # 50 answers of the first attempt, then 100 of this one, one every 0.1 s from t=110.
        for i in range(150):
            t = i * 0.1 if i < 50 else 110 + (i - 50) * 0.1
            s.add(EvalOutput(job_id=job.id, datapoint=i, model="m", input=[], output="x", created_at=at(t)))
        s.flush()
        p = job_progress(s, job, now=at(119.9))
        assert (p.unit, p.done, p.total) == ("row", 150, 200)
        assert p.rate_per_s == pytest.approx(10.0) and p.eta_s == pytest.approx(5.0)
        assert p.text == "rows 150/200 · 10 rows/s · ETA 5s"
        # No total recorded: "?" and no ETA.
        job.result = {}
        s.flush()
        assert job_progress(s, job, now=at(119.9)).text == "rows 150/? · 10 rows/s"


def test_synth_points_from_an_earlier_attempt_give_no_rate(settings):
    progress = {"chunks_done": 6, "chunks_total": 10, "rows": 18, "at": at(60).isoformat(),
                "since": {"chunks_done": 2, "at": at(20).isoformat()}}
    with session_scope(settings.db_url) as s:
        job = _job(s, "synth", JobStatus.RUNNING, attempts=1, result={"progress": progress}, starts=[10])
        p = job_progress(s, job, now=at(60))
        assert p.rate_per_s == pytest.approx(0.1) and p.eta_s == pytest.approx(40.0)
        assert p.text == "chunks 6/10 · 18 rows · 0.1 chunks/s · ETA 40s"
        # A retry started at t=100: those points were the last attempt's; counts stay, rate goes.
        s.add(JobEvent(job_id=job.id, at=at(100), from_status="RETRYING", to_status="STARTING", reason="retry"))
        job.attempts = 2
        s.flush()
        p = job_progress(s, job, now=at(101))
        assert (p.done, p.rate_per_s, p.eta_s, p.text) == (6, None, None, "chunks 6/10 · 18 rows")


# -- the API and the CLI -------------------------------------------------------------------------

@pytest.fixture
def stored(settings) -> dict[str, int]:
    with session_scope(settings.db_url) as s:
        train = _train_job(s)
        evaluation = _job(s, "eval", JobStatus.SUCCEEDED, attempts=1, result={"total": 2}, starts=[0],
                          spec={"dataset": "d", "models": ["m"], "scorers": [{"type": "exact_match"}]})
        for i in range(2):
            s.add(EvalOutput(job_id=evaluation.id, datapoint=i, model="m", input=[], output="x", created_at=at(i)))
        synth = _job(s, "synth", JobStatus.QUEUED, attempts=0,
                     result={"progress": {"chunks_done": 0, "chunks_total": 4, "rows": 0}})
        return {"train": train.id, "eval": evaluation.id, "synth": synth.id}


def test_api_shows_progress_on_jobs_evals_and_synth(settings, stored):
    with session_scope(settings.db_url) as s:
        key = create_key(s, "root", "admin")[0]
    with TestClient(create_app(settings)) as client:
        shown = client.get(f"/api/jobs/{stored['train']}", headers=bearer(key)).json()
        p = shown["progress"]
        assert (p["unit"], p["done"], p["total"], p["epoch"], p["epochs"]) == ("step", 150, 600, 0.75, 3.0)
        assert p["rate_per_s"] == pytest.approx(2.0) and p["updated_at"] == at(1025).isoformat()
        assert p["text"].startswith("step 150/600 · epoch 0.8/3") and shown["step"] == 150
        listed = {j["id"]: j["progress"] for j in client.get("/api/jobs", headers=bearer(key)).json()}
        assert listed[stored["eval"]]["text"] == "rows 2/2 · 1 rows/s"
        assert listed[stored["synth"]]["text"] == "chunks 0/4 · 0 rows"
        ev = client.get(f"/api/evals/{stored['eval']}", headers=bearer(key)).json()["progress"]
        assert (ev["done"], ev["total"], ev["unit"], ev["eta_s"]) == (2, 2, "row", None)
        syn = client.get(f"/api/synth/{stored['synth']}", headers=bearer(key)).json()["progress"]
        assert (syn["chunks_total"], syn["done"], syn["total"], syn["text"]) == (4, 0, 4, "chunks 0/4 · 0 rows")
        schema = client.get("/api/openapi.json").json()["components"]["schemas"]["Progress"]
        assert "ETA" in schema["properties"]["text"]["description"]


def test_cli_shows_the_same_text(settings, stored, monkeypatch):
    monkeypatch.setenv("STUDIO_HOME", str(settings.home))
    monkeypatch.setenv("STUDIO_DATABASE_URL", settings.db_url)
    code, out = invoke("jobs", "show", str(stored["train"]))
    assert code == 0 and "step 150/600 · epoch 0.8/3" in out, out
    monkeypatch.setenv("COLUMNS", "250")
    code, out = invoke("jobs", "ls")
    assert code == 0 and "progress" in out and "rows 2/2 · 1 rows/s" in out and "chunks 0/4 · 0 rows" in out, out


def test_the_follow_stream_carries_the_progress(settings):
    """GET /api/jobs/{id}/logs?follow=true and `--follow` read these events (JobPoller)."""
    from studio.jobs.follow import JobPoller

    with session_scope(settings.db_url) as s:
        job = _train_job(s)
        job.status = JobStatus.SUCCEEDED
        job_id = job.id
    events = JobPoller(settings, job_id).poll()
    progress = [e.data for e in events if e.kind == "progress"]
    assert len(progress) == 1 and progress[0]["step"] == progress[0]["done"] == 150
    assert progress[0]["text"] == "step 150/600 · epoch 0.8/3" and progress[0]["eta_s"] is None  # ended: no ETA
    assert events[-1].kind == "end"


# -- a page of jobs: every row's progress from a few grouped queries --------------------------------

def _mixed_jobs(s, offset: float) -> None:
    """One job of each kind and state the list shows: a resumed train run, a queued one, a finished
    and a retried eval, a synthesis mid-way, and a batch (no progress)."""
    _train_job(s)
    _job(s, "train", JobStatus.QUEUED, attempts=0, spec={"hyper": {"epochs": 2}})
    done = _job(s, "eval", JobStatus.SUCCEEDED, attempts=1, result={"total": 3}, starts=[offset])
    retried = _job(s, "eval", JobStatus.RUNNING, attempts=2, result={"total": 9}, starts=[offset, offset + 50])
    for i, (job, t) in enumerate([(done, 1), (done, 2), (done, 4), (retried, 3), (retried, 60), (retried, 65)]):
        s.add(EvalOutput(job_id=job.id, datapoint=i, model="m", input=[], output="x", created_at=at(offset + t)))
    _job(s, "synth", JobStatus.RUNNING, attempts=1, starts=[offset],
         result={"progress": {"chunks_done": 3, "chunks_total": 8, "rows": 7, "at": at(offset + 30).isoformat(),
                              "since": {"chunks_done": 1, "at": at(offset + 10).isoformat()}}})
    _job(s, "batch", JobStatus.QUEUED, attempts=0)
    s.flush()


def _without_eta(p: dict | None) -> dict | None:
    """The ETA counts down on the server's clock between two requests; the rest must be equal."""
    if p is None:
        return None
    return {**p, "eta_s": p["eta_s"] is not None, "text": p["text"].split(" · ETA ")[0]}


def test_the_list_shows_each_rows_own_progress_from_a_fixed_number_of_queries(settings):
    """GET /api/jobs computes a page's progress per kind in grouped queries: each row's equals the
    single job's (GET /api/jobs/{id}), and the statements that read progress rows do not grow with
    the page (counted with SQLAlchemy's before_cursor_execute hook)."""
    from sqlalchemy import event

    from studio.store.db import get_engine

    with session_scope(settings.db_url) as s:
        key = create_key(s, "root", "admin")[0]
        _mixed_jobs(s, 0)
    progress_tables = ("job_metrics", "eval_outputs", "job_events")
    statements: list[str] = []

    def count(conn, cursor, statement, *args):
        if any(t in statement for t in progress_tables):
            statements.append(statement)

    def listed(client) -> dict[int, dict]:
        statements.clear()
        body = client.get("/api/jobs", headers=bearer(key), params={"limit": 500}).json()
        return {j["id"]: j["progress"] for j in body}

    engine = get_engine(settings.db_url)
    event.listen(engine, "before_cursor_execute", count)
    try:
        with TestClient(create_app(settings)) as client:
            small = listed(client)
            few = len(statements)
            with session_scope(settings.db_url) as s:
                for n in range(1, 4):
                    _mixed_jobs(s, 1000 * n)
            page = listed(client)
            many = len(statements)
            assert len(page) == 4 * len(small) == 24
            for job_id, progress in page.items():
                one = client.get(f"/api/jobs/{job_id}", headers=bearer(key)).json()["progress"]
                assert _without_eta(progress) == _without_eta(one), job_id
    finally:
        event.remove(engine, "before_cursor_execute", count)
    assert {_without_eta(p)["text"] for p in page.values() if p} >= {"step 150/600 · epoch 0.8/3", "step 0/?",
                                                       "rows 3/3 · 0.667 rows/s", "chunks 3/8 · 7 rows · 0.1 chunks/s"}
    assert [p for p in page.values() if p is None] == [None] * 4  # the batches
    assert few == many <= 4, statements
