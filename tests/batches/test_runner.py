"""The batch job in-process (``studio.batches.run.run_job``, as the Ray job runs it), with the key
the scheduler would give it, against a live gateway (real GatewayService, keys, usage ledger)
whose groups call the scripted upstream: outputs and errors in OpenAI's line shapes, per-line usage
under the job key with the batch named, unknown models, context errors, a budget spent mid-batch,
a cancel mid-batch, an expired window."""

from __future__ import annotations

import json
import threading
import time
from datetime import timedelta

import pytest
from openai.types import Batch
from openai.types.chat import ChatCompletion
from sqlalchemy import select

from studio.batches.run import run_job
from studio.keys import revoke_key
from studio.store.db import session_scope
from studio.store.models import ApiKey, Batch as BatchRow, UsageRecord, utcnow
from tests.batches.conftest import bearer, job_key_for, job_of, line, new_batch

pytestmark = pytest.mark.both_databases  # PostgreSQL too: locking, concurrent writers, constraints


def run(settings, monkeypatch, batch_id: str) -> int:
    monkeypatch.setenv("STUDIO_API_KEY", job_key_for(settings, batch_id))
    return run_job(settings, job_of(settings, batch_id).id)


def files_of(api, secret: str, batch: Batch) -> tuple[list[dict], list[dict]]:
    def read(file_id):
        if file_id is None:
            return []
        r = api.get(f"/v1/files/{file_id}/content", headers=bearer(secret))
        assert r.status_code == 200, r.text
        return [json.loads(x) for x in r.text.splitlines()]

    return read(batch.output_file_id), read(batch.error_file_id)


def test_a_batch_runs_every_good_line_and_files_the_rest(api, keys, settings, gateway, upstream,
                                                         monkeypatch):
    settings.batch_concurrency = 4
    lines = [line("nobody", "x", model="no-such-model")] + [line(f"q{i}", f"question {i}") for i in range(12)]
    lines += [line("long", "z", model="ctx"), "{broken", line("q0", "duplicate"),
              line("wrong", "x", url="/v1/completions"), line("nobody-2", "y", model="no-such-model")]
    created = new_batch(api, keys["alice"], lines)
    assert run(settings, monkeypatch, created["id"]) == 0

    done = Batch.model_validate(api.get(f"/v1/batches/{created['id']}", headers=bearer(keys["alice"])).json())
    assert done.status == "completed" and done.completed_at and done.in_progress_at
    assert (done.request_counts.total, done.request_counts.completed, done.request_counts.failed) == (18, 12, 6)
    assert done.usage.input_tokens == 12 * 7 and done.usage.output_tokens == 12 * 3
    out, errors = files_of(api, keys["alice"], done)
    assert [o["custom_id"] for o in out] == [f"q{i}" for i in range(12)]  # in input order
    for o in out:
        assert o["response"]["status_code"] == 200 and o["error"] is None and o["id"].startswith("batch_req_")
        answer = ChatCompletion.model_validate(o["response"]["body"])
        assert answer.choices[0].message.content == f"echo: question {o['custom_id'][1:]}"
    by_id = {(e["custom_id"], (e["error"] or {}).get("code")): e for e in errors}
    assert set(by_id) == {("nobody", None), ("nobody-2", None), ("long", None), (None, "invalid_json"),
                          ("q0", "duplicate_custom_id"), ("wrong", "invalid_url")}
    unknown = by_id[("nobody", None)]["response"]
    assert unknown["status_code"] == 404 and "no-such-model" in unknown["body"]["error"]["message"]
    assert by_id[("long", None)]["response"]["status_code"] == 400
    assert "maximum context length" in by_id[("long", None)]["response"]["body"]["error"]["message"]
    assert sorted(upstream.asked) == sorted(f"question {i}" for i in range(12))  # nothing twice

    # Every call is a usage row of the job key (derived from alice's), tagged with the batch.
    assert gateway.service.usage.flush()
    with session_scope(settings.db_url) as s:
        rows = s.scalars(select(UsageRecord).where(UsageRecord.job_id == created["id"])).all()
        alice = s.scalars(select(ApiKey).where(ApiKey.name == "alice")).one()
        parents = {s.get(ApiKey, r.key_id).parent_id for r in rows}
    assert len(rows) == 14 and {r.service for r in rows} == {"batch"} and parents == {alice.id}
    assert sorted((r.model_group, r.status) for r in rows) == \
        sorted([("gen", 200)] * 12 + [("ctx", 400), ("no-such-model", 404)])  # unknown: asked once
    assert job_of(settings, created["id"]).status == "SUCCEEDED"


def test_a_key_over_its_budget_mid_batch_files_the_remaining_lines(api, keys, settings, gateway,
                                                                   upstream, monkeypatch):
    gateway.service._spent.ttl_s = 0.0  # read what the key spent at every call: a deterministic cut
    with session_scope(settings.db_url) as s:
        s.scalars(select(ApiKey).where(ApiKey.name == "alice")).one().budget_usd = 2.0
    # One call at a time: three fit in $2 at $0.70 each (two, when the gateway counts a call
    # twice for the instant between writing its usage row and dropping it from its pending sum).
    settings.batch_concurrency = 1
    created = new_batch(api, keys["alice"], [line(f"p{i}", f"paid {i}", model="priced") for i in range(8)])
    assert run(settings, monkeypatch, created["id"]) == 0

    done = Batch.model_validate(api.get(f"/v1/batches/{created['id']}", headers=bearer(keys["alice"])).json())
    paid = done.request_counts.completed
    assert done.status == "completed" and paid in (2, 3) and done.request_counts.failed == 8 - paid
    out, errors = files_of(api, keys["alice"], done)
    assert [o["custom_id"] for o in out] == [f"p{i}" for i in range(paid)]
    assert [e["custom_id"] for e in errors] == [f"p{i}" for i in range(paid, 8)]
    for e in errors:
        assert e["response"]["status_code"] == 429
        assert "budget" in e["response"]["body"]["error"]["message"]
    assert upstream.asked == [f"paid {i}" for i in range(paid)]  # the rest were not even tried


def test_cancel_mid_batch_lets_calls_in_flight_finish_and_keeps_the_partial_output(
        api, keys, settings, gateway, upstream, monkeypatch):
    settings.batch_concurrency = 2
    upstream.hold_after = 4  # calls 5 and 6 (the two in flight once 4 are answered) wait for release
    created = new_batch(api, keys["alice"], [line(f"s{i}", f"slow {i}", model="slow") for i in range(40)])
    result: list[int] = []
    runner = threading.Thread(target=lambda: result.append(run(settings, monkeypatch, created["id"])))
    runner.start()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        counts = api.get(f"/v1/batches/{created['id']}", headers=bearer(keys["alice"])).json()["request_counts"]
        if counts["completed"] >= 4:
            break
        time.sleep(0.05)
    r = api.post(f"/v1/batches/{created['id']}/cancel", headers=bearer(keys["alice"]))
    assert r.status_code == 200 and r.json()["status"] == "cancelling", r.text
    # The runner reads the row at each write (every 0.25 s); give it several before letting the
    # two held calls answer. No line may start after that.
    time.sleep(2.0)
    assert len(upstream.asked) == 6
    upstream.released.set()
    runner.join(30)
    assert result == [0]

    done = Batch.model_validate(api.get(f"/v1/batches/{created['id']}", headers=bearer(keys["alice"])).json())
    assert done.status == "cancelled" and done.cancelling_at and done.cancelled_at
    out, errors = files_of(api, keys["alice"], done)
    assert errors == [] and len(out) == 6 and done.request_counts.completed == 6
    assert [o["custom_id"] for o in out] == [f"s{i}" for i in range(6)]
    assert len(upstream.asked) == 6  # only the calls in flight went on
    assert job_of(settings, created["id"]).status == "CANCELLED"


def test_lines_not_run_within_the_window_expire(api, keys, settings, gateway, upstream, monkeypatch):
    created = new_batch(api, keys["alice"], [line("e1", "late"), line("e2", "later")])
    with session_scope(settings.db_url) as s:
        s.get(BatchRow, created["id"]).expires_at = utcnow() - timedelta(seconds=1)
    assert run(settings, monkeypatch, created["id"]) == 0
    done = Batch.model_validate(api.get(f"/v1/batches/{created['id']}", headers=bearer(keys["alice"])).json())
    assert done.status == "expired" and done.expired_at and done.output_file_id is None
    _, errors = files_of(api, keys["alice"], done)
    assert [(e["custom_id"], e["error"]["code"]) for e in errors] == [("e1", "batch_expired"),
                                                                      ("e2", "batch_expired")]
    assert upstream.asked == []


def test_a_revoked_key_ends_the_batch_with_every_line_refused(api, keys, settings, gateway, upstream,
                                                              monkeypatch):
    """The job's key stops working (its submitter's key was revoked): the first 401 is every
    remaining line's answer, with no further call and no other key tried."""
    settings.batch_concurrency = 1
    created = new_batch(api, keys["alice"], [line(f"k{i}", "x") for i in range(5)])
    monkeypatch.setenv("STUDIO_API_KEY", job_key_for(settings, created["id"]))
    with session_scope(settings.db_url) as s:
        revoke_key(s, "alice")
    assert run_job(settings, job_of(settings, created["id"]).id) == 0
    done = Batch.model_validate(api.get(f"/v1/batches/{created['id']}", headers=bearer(keys["root"])).json())
    assert done.status == "completed" and done.request_counts.failed == 5
    _, errors = files_of(api, keys["root"], done)
    assert {e["response"]["status_code"] for e in errors} == {401} and upstream.asked == []
