"""/v1/batches in-process on SQLite and PostgreSQL: create, retrieve, list (after/limit) and cancel
in OpenAI's shape (parsed with ``openai.types.Batch``); a batch is its creator's; an unusable file
(not found or not yours, empty, not JSONL, not UTF-8, over the line limit) is a 4xx before any
job exists; bad lines are left for the error file."""

from __future__ import annotations

from openai.types import Batch

from studio.store.db import session_scope
from studio.store.models import Job
from tests.batches.conftest import CHAT, bearer, create, jsonl, line, new_batch, upload


def test_create_retrieve_list_and_cancel(api, keys, settings):
    alice = bearer(keys["alice"])
    created = Batch.model_validate(new_batch(api, keys["alice"], [line("a", "hi"), "not json"]))
    assert created.status == "validating" and created.endpoint == CHAT
    assert created.request_counts.total == 2 and created.request_counts.completed == 0
    assert created.expires_at - created.created_at == 24 * 3600
    with session_scope(settings.db_url) as s:
        job = s.get(Job, created.model_extra["studio_job_id"])
        assert (job.kind, job.status, job.name, job.spec["batch_id"]) == ("batch", "QUEUED", created.id,
                                                                          created.id)
        assert job.spec["concurrency"] == settings.batch_concurrency

    again = Batch.model_validate(api.get(f"/v1/batches/{created.id}", headers=alice).json())
    assert again == created

    tagged = Batch.model_validate(new_batch(api, keys["alice"], [line("x", "y")]))
    r = create(api, keys["alice"], tagged.input_file_id, metadata={"team": "search"})
    third = Batch.model_validate(r.json())
    assert third.metadata == {"team": "search"}
    page = api.get("/v1/batches", params={"limit": 2}, headers=alice).json()
    assert [b["id"] for b in page["data"]] == [third.id, tagged.id] and page["has_more"] is True
    assert page["first_id"] == third.id and page["last_id"] == tagged.id
    rest = api.get("/v1/batches", params={"limit": 2, "after": tagged.id}, headers=alice).json()
    assert [Batch.model_validate(b).id for b in rest["data"]] == [created.id] and not rest["has_more"]

    # Nothing runs it yet: cancelled at once, its job too.
    cancelled = Batch.model_validate(api.post(f"/v1/batches/{created.id}/cancel", headers=alice).json())
    assert cancelled.status == "cancelled" and cancelled.cancelled_at and cancelled.output_file_id is None
    with session_scope(settings.db_url) as s:
        assert s.get(Job, created.model_extra["studio_job_id"]).status == "CANCELLED"
    r = api.post(f"/v1/batches/{created.id}/cancel", headers=alice)
    assert r.status_code == 409 and "already cancelled" in r.json()["error"]["message"]
    # The input of an unfinished batch stays; an ended batch's input may go.
    r = api.delete(f"/v1/files/{third.input_file_id}", headers=alice)
    assert r.status_code == 409 and "is the input of batch" in r.json()["error"]["message"]
    assert api.delete(f"/v1/files/{created.input_file_id}", headers=alice).status_code == 200


def test_a_batch_is_its_creators(api, keys):
    b = new_batch(api, keys["alice"], [line("a", "hi")])
    for who in ("bob", "svc"):
        other = bearer(keys[who])
        assert api.get(f"/v1/batches/{b['id']}", headers=other).status_code == 404
        assert api.post(f"/v1/batches/{b['id']}/cancel", headers=other).status_code == 404
        assert api.get("/v1/batches", headers=other).json()["data"] == []
        # nor can another key run a batch on alice's file
        r = create(api, keys[who], b["input_file_id"])
        assert r.status_code == 404 and b["input_file_id"] in r.json()["error"]["message"]
    assert api.get(f"/v1/batches/{b['id']}", headers=bearer(keys["root"])).status_code == 200
    assert api.get(f"/v1/batches/{b['id']}").status_code == 401
    # A service key (an application) may run batches of its own.
    own = new_batch(api, keys["svc"], [line("s", "hi")])
    assert api.get(f"/v1/batches/{own['id']}", headers=bearer(keys["svc"])).status_code == 200


def test_an_unusable_file_is_refused_before_any_job(api, keys, settings):
    alice = keys["alice"]

    def refused(data: bytes, *words: str, status: int = 400) -> None:
        r = create(api, alice, upload(api, alice, data))
        assert r.status_code == status, r.text
        message = r.json()["error"]["message"]
        assert all(w in message for w in words), message

    refused(b"\n\n  \n", "empty")
    refused(b"this is not\njsonl at all\n", "not JSONL")
    refused(b"\xff\xfe{}\n", "not UTF-8")
    refused(b'{"custom_id": "r"}\n' * 100_000, "100,000 lines", "50,000", "STUDIO_BATCH_MAX_LINES")
    r = create(api, alice, "file-nothing")
    assert r.status_code == 404 and "file-nothing" in r.json()["error"]["message"]
    r = create(api, alice, upload(api, alice, jsonl([line("a", "b")])), endpoint="/v1/embeddings")
    assert r.status_code == 400 and "/v1/chat/completions" in r.json()["error"]["message"]
    r = create(api, alice, upload(api, alice, jsonl([line("a", "b")])), completion_window="1h")
    assert r.status_code == 400 and "24h" in r.json()["error"]["message"]
    r = api.post("/v1/batches", json={"endpoint": CHAT, "api_base": "http://x"}, headers=bearer(alice))
    assert r.status_code == 400
    message = r.json()["error"]["message"]
    assert "input_file_id" in message and "api_base" in message
    with session_scope(settings.db_url) as s:
        assert s.query(Job).count() == 0  # none of these queued anything
