"""Usage rows: the background writer and the aggregation behind /api/usage, on SQLite and
PostgreSQL; and /api/usage itself (admin sees all keys, others their own)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from fastapi.testclient import TestClient

from studio.api.app import create_app
from studio.errors import StudioError
from studio.gateway.usage import UsageRow, UsageWriter, aggregate_usage, key_spent_usd
from studio.keys import create_key
from studio.store.db import session_scope

pytestmark = pytest.mark.both_databases  # PostgreSQL too: locking, concurrent writers, constraints

DAY1 = datetime(2026, 11, 20, 23, 30, tzinfo=timezone.utc)
DAY2 = DAY1 + timedelta(hours=1)  # the next UTC day


def write(db_url: str, rows: list[UsageRow]) -> None:
    writer = UsageWriter(db_url, flush_interval_s=0.05)
    for r in rows:
        writer.record(r)
    writer.close()


def rows() -> list[UsageRow]:
    return [
        UsageRow("eval", "chat", "judge", 10.0, key_id=1, key_name="a", job_id="e1",
                 prompt_tokens=10, completion_tokens=5, cost_usd=0.5, at=DAY1),
        UsageRow("eval", "chat", "judge", 2.0, key_id=1, key_name="a", job_id="e1",
                 prompt_tokens=0, completion_tokens=0, cost_usd=0.0, cache_hit=True, at=DAY1),
        UsageRow("synth", "completions", "gpt", 30.0, key_id=2, key_name="b", job_id="s1",
                 prompt_tokens=100, completion_tokens=50, cost_usd=1.25, at=DAY2),
        UsageRow("synth", "chat", "gpt", 5.0, key_id=2, key_name="b", status=502,
                 error="upstream failed", at=DAY2),
    ]


def test_aggregates_by_service_model_key_and_day(settings):
    write(settings.db_url, rows())
    with session_scope(settings.db_url) as s:
        by_service = aggregate_usage(s, ["service", "model"])
        by_day = aggregate_usage(s, ["day"])
        by_key = aggregate_usage(s, ["key"], service="eval")
        total = aggregate_usage(s, [])
        since = aggregate_usage(s, ["service"], since=DAY2)
        spent = key_spent_usd(s, 2)
    assert [(r["service"], r["model"], r["calls"], r["cost_usd"], r["cache_hits"], r["errors"])
            for r in by_service] == [("synth", "gpt", 2, 1.25, 0, 1), ("eval", "judge", 2, 0.5, 1, 0)]
    assert [(r["day"], r["calls"]) for r in by_day] == [("2026-11-21", 2), ("2026-11-20", 2)]
    assert [(r["key"], r["prompt_tokens"], r["completion_tokens"]) for r in by_key] == [("a", 10, 5)]
    assert total[0]["calls"] == 4 and total[0]["cost_usd"] == pytest.approx(1.75)
    assert total[0]["mean_latency_ms"] == pytest.approx(11.75)
    assert [r["service"] for r in since] == ["synth"]
    assert spent == pytest.approx(1.25)


def test_unknown_group_by_is_a_clear_error(settings):
    with session_scope(settings.db_url) as s, pytest.raises(StudioError, match="group by any of"):
        aggregate_usage(s, ["colour"])


def test_api_usage_admin_sees_all_and_a_user_key_its_own(settings):
    with session_scope(settings.db_url) as s:
        admin, _ = create_key(s, "admin-k", "admin")
        user, _ = create_key(s, "a", "user")
    write(settings.db_url, rows())
    client = TestClient(create_app(settings))
    r = client.get("/api/usage", params={"group_by": "key"},
                   headers={"Authorization": f"Bearer {admin}"})
    assert r.status_code == 200
    assert {row["key"] for row in r.json()["rows"]} == {"a", "b"}
    r = client.get("/api/usage", params={"group_by": "key", "key": "b"},
                   headers={"Authorization": f"Bearer {user}"})
    assert [row["key"] for row in r.json()["rows"]] == ["a"]
    r = client.get("/api/usage", params={"group_by": "colour"},
                   headers={"Authorization": f"Bearer {admin}"})
    assert r.status_code == 400 and "group by any of" in r.json()["fix"]
    assert client.get("/api/usage").status_code == 401


def test_gateway_routes_without_a_gateway_answer_503_in_openai_shape(settings):
    with session_scope(settings.db_url) as s:
        admin, _ = create_key(s, "admin-k", "admin")
    client = TestClient(create_app(settings))
    r = client.post("/gateway/v1/chat/completions", json={"model": "x", "messages": []},
                    headers={"Authorization": f"Bearer {admin}"})
    assert r.status_code == 503 and "gateway is not deployed" in r.json()["error"]["message"]
    r = client.get("/gateway/v1/models")
    assert r.status_code == 401 and r.json()["error"]["code"] == 401


def test_overlong_caller_labels_do_not_lose_the_batch(settings):
    # A caller picks its service tag, job id and model name; PostgreSQL refuses a value longer than
    # its column, which would drop every row written in the same batch.
    write(settings.db_url, [UsageRow("s" * 300, "chat", "m" * 900, 1.0, job_id="j" * 500),
                            *rows()])
    with session_scope(settings.db_url) as s:
        total = aggregate_usage(s, [])
        long = aggregate_usage(s, ["service", "model", "job"], service="s" * 64)
    assert total[0]["calls"] == 5
    assert [(len(r["service"]), len(r["model"]), len(r["job"])) for r in long] == [(64, 256, 128)]
