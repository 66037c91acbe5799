"""The data endpoints over HTTP on a real app and database: streamed uploads with a size limit and
content checks, server-side ingest inside the allowed roots, curation and snapshot tools."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from studio.api.app import create_app
from studio.keys import create_key
from studio.store.artifacts import ArtifactStore
from studio.store.db import session_scope
from tests.api.checks import assert_problem, bearer
from tests.data.docs import MARKDOWN, mixed_directory, text_pdf


@pytest.fixture
def small_limit(settings):
    return settings.model_copy(update={"upload_max_bytes": 4096})


@pytest.fixture
def client(small_limit) -> Iterator[TestClient]:
    with TestClient(create_app(small_limit)) as c:
        yield c


@pytest.fixture
def key(settings) -> str:
    with session_scope(settings.db_url) as s:
        return create_key(s, "alice", "user")[0]


@pytest.fixture
def admin(settings) -> str:
    with session_scope(settings.db_url) as s:
        return create_key(s, "root", "admin")[0]


def upload(client, key, filename, content: bytes, ctype="application/octet-stream", **form):
    return client.post("/api/datasets", headers=bearer(key), data={"name": "up", **form},
                       files={"file": (filename, content, ctype)})


def uploads_left(settings) -> list[str]:
    store = ArtifactStore(settings.artifacts)
    return store.fs.find(store.path("uploads")) if store.exists("uploads") else []


def test_documents_upload_as_rows(client, key, settings):
    r = upload(client, key, "tides.md", MARKDOWN.encode(), "text/markdown")
    assert r.status_code == 201, r.text
    assert (r.json()["kind"], r.json()["row_count"]) == ("document", 1)
    r = upload(client, key, "paper.pdf", text_pdf(["Ice flows."]), "application/pdf")
    assert r.status_code == 201 and r.json()["version"] == 2, r.text
    assert uploads_left(settings) == []  # the raw upload is not kept once ingested


def test_upload_over_the_limit_is_413_and_leaves_nothing(client, key, settings):
    big = b"".join(json.dumps({"text": f"row {i} " + "x" * 50}).encode() + b"\n" for i in range(200))
    r = upload(client, key, "big.jsonl", big)
    assert_problem(r, 413, "over the limit of 4096 bytes")
    assert "STUDIO_UPLOAD_MAX_BYTES" in r.json()["fix"]
    assert uploads_left(settings) == []
    assert client.get("/api/datasets", headers=bearer(key)).json() == []


def test_a_declared_content_length_over_the_limit_is_refused_before_reading(client, key):
    r = client.post("/api/datasets", headers={**bearer(key), "content-length": "99999999",
                                             "content-type": "multipart/form-data; boundary=x"},
                    content=b"--x--\r\n")
    assert_problem(r, 413, "over the limit")


def test_content_type_checks(client, key):
    assert_problem(upload(client, key, "x.jsonl", b'{"text": "a"}\n', "image/png"), 415,
                   "sent as 'image/png', which is not a .jsonl file")
    r = client.post("/api/datasets", headers=bearer(key), json={"name": "x"})
    assert_problem(r, 415, "expected a multipart/form-data upload")
    assert_problem(upload(client, key, "fake.csv", b"a,b\n\x00\x00\x01", "text/csv"), 400,
                   "claims to be .csv text but holds binary data")


def test_server_side_ingest_of_a_directory_and_roots(small_limit, admin, key, settings, tmp_path):
    """Admins ingest server paths under STUDIO_DATA_ROOTS (here: tmp_path); user keys upload."""
    root = mixed_directory(tmp_path / "docs")
    roots = small_limit.model_copy(update={"data_roots": str(tmp_path)})
    with TestClient(create_app(roots)) as client:
        r = client.post("/api/datasets/ingest", headers=bearer(admin), json={"source": str(root), "name": "docs"})
        assert r.status_code == 201, r.text
        assert r.json()["row_count"] == 4 and r.json()["rejected_count"] == 6
        dropped = client.get("/api/datasets/docs/dropped", headers=bearer(key)).json()
        assert dropped["total"] == 6 and all(row["reason"] for row in dropped["rows"])
        assert_problem(client.post("/api/datasets/ingest", headers=bearer(admin),
                                   json={"source": "/etc/passwd", "name": "x"}), 403, "outside the allowed data roots")
        assert_problem(client.post("/api/datasets/ingest", headers=bearer(admin),
                                   json={"source": f"{root}/../docs", "name": "x"}), 403, "contains '..'")
        refused = assert_problem(client.post("/api/datasets/ingest", headers=bearer(key),
                                             json={"source": str(root), "name": "mine"}), 403, "only an admin")
        assert "POST /api/datasets" in refused["fix"]


def test_curate_stats_sample_diff_split_export(client, key, tmp_path):
    rows = [json.dumps({"prompt": f"p{i % 10}", "completion": "c"}) for i in range(30)]
    assert upload(client, key, "d.jsonl", ("\n".join(rows) + "\n").encode()).status_code == 201
    h = bearer(key)
    r = client.post("/api/datasets/curate", headers=h,
                    json={"source": "up", "name": "uniq", "steps": [{"type": "dedupe", "near_threshold": None}]})
    assert r.status_code == 201, r.text
    assert (r.json()["rows"], r.json()["dropped"]) == (10, 20)
    assert client.post("/api/datasets/curate", headers=h, json={"source": "up", "steps": [{"type": "nope"}]}
                       ).status_code == 422
    stats = client.get("/api/datasets/uniq/stats", headers=h, params={"validation_ratio": 0.2}).json()
    assert stats["splits"]["validation"]["rows"] == 2 and stats["lineage"]["dropped"] == 20
    assert len(client.get("/api/datasets/uniq/sample", headers=h, params={"n": 3}).json()["rows"]) == 3
    diff = client.get("/api/datasets/up/diff/uniq", headers=h).json()
    assert (diff["only_a"], diff["only_b"], diff["common"]) == (20, 0, 10)
    split = client.post("/api/datasets/uniq/split", headers=h, json={"validation_ratio": 0.3, "seed": 1})
    assert split.status_code == 201 and split.json()["validation"]["rows"] == 3
    r = client.get("/api/datasets/uniq-train/export", headers=h)
    assert r.status_code == 200 and len(r.text.splitlines()) == 7
    dropped = client.get("/api/datasets/uniq/dropped", headers=h, params={"limit": 1}).json()
    assert dropped["total"] == 20 and dropped["rows"][0]["reason"].startswith("exact duplicate of row 1")


def test_a_huge_upload_stops_at_the_limit_without_reading_the_rest(settings):
    """A (virtually) 1 GiB chunked body: the parser pulls chunks only until the file passes the
    limit, then stops with 413; what it wrote is removed."""
    import asyncio

    from studio.data.upload import TooLarge, receive_upload

    limit, chunk = 1024 * 1024, b"x" * 65536
    pulled = [0]

    async def body():
        yield (b'--b\r\nContent-Disposition: form-data; name="name"\r\n\r\nbig\r\n--b\r\n'
               b'Content-Disposition: form-data; name="file"; filename="big.jsonl"\r\n'
               b"Content-Type: application/octet-stream\r\n\r\n")
        for _ in range(2**30 // len(chunk)):  # 1 GiB if it were all read
            pulled[0] += len(chunk)
            yield chunk

    store = ArtifactStore(settings.artifacts)
    with pytest.raises(TooLarge, match=f"over the limit of {limit} bytes"):
        asyncio.run(receive_upload(body(), "multipart/form-data; boundary=b", store, limit, {".jsonl"}))
    assert limit < pulled[0] <= limit + len(chunk)  # one chunk past the limit, not 1 GiB
    assert uploads_left(settings) == []
