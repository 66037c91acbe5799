"""Limits and bad input (docs/security.md, "Limits"): request bodies past STUDIO_MAX_BODY_MB are a
413 while reading, follow-streams are async and capped per key, and bad input or a database that
is away is never a 5xx other than 503."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import psycopg
import pytest
from fastapi.testclient import TestClient

from studio.api.app import create_app
from studio.api.streams import bounded
from studio.jobs.status import create_job
from studio.keys import create_key
from studio.settings import StudioSettings
from studio.store.db import session_scope
from tests.api.checks import assert_problem, bearer
from tests.loopback import ServerThread, free_port


def _user(settings: StudioSettings, name: str = "alice") -> tuple[str, int]:
    with session_scope(settings.db_url) as s:
        secret, info = create_key(s, name, "user")
        return secret, info.id


def _queued_job(settings: StudioSettings, owner_key_id: int) -> int:
    """A job that stays QUEUED (no scheduler runs here): its follow-stream never ends by itself."""
    with session_scope(settings.db_url) as s:
        return create_job(s, name="waits", spec={}, max_retries=0, submitted_by="alice",
                          owner_key_id=owner_key_id).id


# --- request bodies -------------------------------------------------------------------------

def _small_body_app(settings: StudioSettings) -> TestClient:
    return TestClient(create_app(settings.model_copy(update={"max_body_mb": 0.01})))  # 10,485 bytes


def test_a_declared_body_over_the_limit_is_413_before_it_is_read(settings, user_key):
    with _small_body_app(settings) as c:
        r = c.post("/api/jobs", headers={**bearer(user_key), "content-type": "application/json"},
                   content=b"x" * 20_000)
        body = assert_problem(r, 413, "over the limit of 10485 bytes")
        assert "STUDIO_MAX_BODY_MB" in body["fix"]
        # Under the limit the same route reads the body and judges it (422: not a recipe).
        assert c.post("/api/jobs", headers=bearer(user_key), json={"x": "y" * 5000}).status_code == 422


def test_a_chunked_body_without_content_length_is_cut_off_at_the_limit(settings, user_key):
    sent = []

    def chunks():  # httpx sends a generator with Transfer-Encoding: chunked, no Content-Length
        for _ in range(1000):
            sent.append(1)
            yield b"y" * 1000

    with _small_body_app(settings) as c:
        r = c.post("/api/jobs", headers={**bearer(user_key), "content-type": "application/json"},
                   content=chunks())
        assert_problem(r, 413, "over the limit")
        # The OpenAI surfaces answer in OpenAI's error shape.
        r = c.post("/v1/chat/completions", headers={**bearer(user_key), "content-type": "application/json"},
                   content=chunks())
        assert r.status_code == 413 and r.json()["error"]["code"] == 413
        assert "STUDIO_MAX_BODY_MB" in r.json()["error"]["message"]


def test_dataset_uploads_keep_their_own_limit(settings, user_key, tmp_path):
    rows = b"".join(b'{"prompt": "p%d", "completion": "c"}\n' % i for i in range(1000))  # ~36 KB
    assert len(rows) > 0.01 * 1024 * 1024
    with _small_body_app(settings) as c:
        r = c.post("/api/datasets", headers=bearer(user_key), data={"name": "big-enough"},
                   files={"file": ("rows.jsonl", rows, "application/jsonl")})
        assert r.status_code == 201, r.text
    tight = settings.model_copy(update={"upload_max_bytes": 1000})
    with TestClient(create_app(tight)) as c:
        r = c.post("/api/datasets", headers=bearer(user_key), data={"name": "too-big"},
                   files={"file": ("rows.jsonl", rows, "application/jsonl")})
        assert r.status_code == 413, r.text


# --- bad input --------------------------------------------------------------------------------

HUGE = "99999999999999999999"  # past 2**64: SQLite's driver overflows, PostgreSQL's int8 too


@pytest.mark.parametrize("method, path", [
    ("GET", f"/api/jobs/{HUGE}"), ("GET", f"/api/jobs/-{HUGE}"), ("GET", "/api/jobs/-1"),
    ("GET", f"/api/jobs/{HUGE}/metrics"), ("GET", f"/api/jobs/{HUGE}/logs"),
    ("POST", f"/api/jobs/{HUGE}/cancel"), ("GET", f"/api/evals/{HUGE}"),
    ("GET", f"/api/evals/{HUGE}/events"), ("POST", f"/api/evals/{HUGE}/cancel"),
    ("GET", f"/api/synth/{HUGE}"), ("GET", f"/api/synth/{HUGE}/events"),
    ("GET", f"/api/jobs?offset={HUGE}"), ("GET", f"/api/datasets?offset={HUGE}"),
    ("GET", f"/api/models?offset={HUGE}"), ("GET", f"/api/evals?offset={HUGE}"),
])
def test_out_of_range_ids_and_offsets_are_404_or_422(client, user_key, method, path):
    r = client.request(method, path, headers=bearer(user_key))
    assert r.status_code in (404, 422), r.text
    assert r.headers["content-type"].startswith("application/problem+json")


def test_an_out_of_range_number_in_a_body_is_422(client, user_key):
    r = client.post("/api/datasets/from-eval", headers=bearer(user_key),
                    json={"eval_job_id": -18446744073709551615, "name": "x"})
    assert r.status_code in (404, 422), r.text


def test_a_malformed_multipart_body_is_400(client, user_key):
    r = client.post("/api/datasets", headers={**bearer(user_key), "content-type": "multipart/form-data; boundary=b0"},
                    content=b"--b0\r\n\x03\xd0B--b0--\r\n")
    assert_problem(r, 400)


def test_a_database_that_does_not_answer_is_503_with_retry_after(settings, user_key):
    app = create_app(settings)
    # Nothing listens on this port: the same as a database server that is down.
    app.state.settings = settings.model_copy(
        update={"database_url": f"postgresql://studio@127.0.0.1:{free_port()}/studio"})
    with TestClient(app) as c:
        for method, path in [("GET", "/api/me"), ("GET", "/api/jobs"), ("POST", "/api/jobs/1/cancel")]:
            r = c.request(method, path, headers=bearer(user_key))
            body = assert_problem(r, 503, "cannot reach the database")
            assert int(r.headers["retry-after"]) > 0 and body["fix"]


@pytest.mark.both_databases  # it stops PostgreSQL's connections; SQLite has none to lose
def test_a_database_lost_after_start_is_503_with_retry_after(settings, user_key, db_url):
    """The engine is up and pooled; then the server refuses connections (PostgreSQL only: the
    server is real and can be told to)."""
    if not db_url.startswith("postgresql"):
        pytest.skip("needs a database server that can refuse connections; SQLite is a file")
    with TestClient(create_app(settings)) as c:
        assert c.get("/api/me", headers=bearer(user_key)).status_code == 200
        name = db_url.rsplit("/", 1)[1]
        admin = psycopg.connect(db_url.rsplit("/", 1)[0] + "/postgres", autocommit=True)
        try:
            admin.execute(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS false')
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))
            r = c.get("/api/jobs", headers=bearer(user_key))
            body = assert_problem(r, 503, "database is unavailable")
            assert r.headers["retry-after"] == "5" and "STUDIO_DATABASE_URL" in body["fix"]
        finally:
            admin.execute(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS true')
            admin.close()
        assert c.get("/api/jobs", headers=bearer(user_key)).status_code == 200


# --- follow-streams ---------------------------------------------------------------------------

@pytest.fixture
def live(settings):
    """The API on a loopback port (uvicorn, no Ray), and a user key with a job that stays queued."""
    secret, key_id = _user(settings)
    server = ServerThread(create_app(settings)).start()
    try:
        yield server, secret, _queued_job(settings, key_id)
    finally:
        server.stop()


async def _open_streams(url: str, key: str, job_id: int, n: int, hold: list, max_conn: int):
    """Open ``n`` follow-streams at once; keep the ones that stream (200), count the refusals."""
    limits = httpx.Limits(max_connections=max_conn, max_keepalive_connections=0)
    client = httpx.AsyncClient(base_url=url, headers=bearer(key), timeout=30, limits=limits)

    async def one():
        req = client.build_request("GET", f"/api/jobs/{job_id}/logs", params={"follow": "true"})
        resp = await client.send(req, stream=True)
        if resp.status_code == 200:
            hold.append(resp)
        else:
            await resp.aread()
            await resp.aclose()
        return resp

    return client, await asyncio.gather(*(one() for _ in range(n)))


async def _quick(url: str, key: str) -> float:
    async with httpx.AsyncClient(base_url=url, timeout=10) as c:
        t = time.monotonic()
        assert (await c.get("/healthz")).status_code == 200
        assert (await c.get("/api/me", headers=bearer(key))).status_code == 200
        assert (await c.get("/api/jobs", headers=bearer(key))).status_code == 200
        return time.monotonic() - t


def test_a_thousand_follow_streams_from_one_key_are_refused_past_the_cap(live, settings):
    server, key, job_id = live

    async def scenario():
        hold: list[httpx.Response] = []
        client, answers = await _open_streams(server.url, key, job_id, 1000, hold, max_conn=1000)
        try:
            codes = [r.status_code for r in answers]
            assert codes.count(200) == settings.max_streams_per_key == 8
            assert codes.count(429) == 1000 - 8
            refused = next(r for r in answers if r.status_code == 429)
            assert refused.headers["content-type"].startswith("application/problem+json")
            assert "STUDIO_MAX_STREAMS_PER_KEY" in refused.json()["fix"]
            # The eight open streams do stream: the job's first event, QUEUED.
            first = await anext(hold[0].aiter_lines())
            assert first == "event: status"
            # Other requests, of this key and others, still answer at once.
            assert await _quick(server.url, key) < 2.0
        finally:
            for r in hold:
                await r.aclose()
            await client.aclose()
        # Closed streams give their slots back.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            again: list[httpx.Response] = []
            client, answers = await _open_streams(server.url, key, job_id, 1, again, max_conn=1)
            for r in again:
                await r.aclose()
            await client.aclose()
            if answers[0].status_code == 200:
                return
            await asyncio.sleep(0.2)
        raise AssertionError("the slots of closed streams were not given back")

    asyncio.run(scenario())


def test_many_open_streams_do_not_stall_other_requests(settings):
    """60 streams at once (more than Starlette's 40 worker threads, which synchronous stream
    generators used to hold for their whole life): /api/me still answers in well under a second."""
    roomy = settings.model_copy(update={"max_streams_per_key": 60})
    secret, key_id = _user(settings)
    job_id = _queued_job(settings, key_id)
    server = ServerThread(create_app(roomy)).start()

    async def scenario():
        hold: list[httpx.Response] = []
        client, answers = await _open_streams(server.url, secret, job_id, 60, hold, max_conn=60)
        try:
            assert [r.status_code for r in answers].count(200) == 60
            await asyncio.sleep(1.5)  # every stream polls at least once
            assert await _quick(server.url, secret) < 1.0
        finally:
            for r in hold:
                await r.aclose()
            await client.aclose()

    try:
        asyncio.run(scenario())
    finally:
        server.stop()


def test_a_stream_has_heartbeats_and_ends_when_idle_or_too_old():
    async def slow(n: int, every_s: float):
        for i in range(n):
            await asyncio.sleep(every_s)
            yield f"event: status\ndata: {i}\n\n"

    async def collect(events, **kw):
        return [chunk async for chunk in bounded(events, **kw)]

    # Quiet longer than the heartbeat: comment lines in between, then the events, then the end.
    got = asyncio.run(collect(slow(2, 0.35), idle_s=5, max_s=5, heartbeat_s=0.1))
    assert got.count("event: status\ndata: 0\n\n") == 1 and got[-1] == "event: status\ndata: 1\n\n"
    assert got.count(": heartbeat\n\n") >= 4
    # Nothing for longer than idle_s: an error event that says so, and the source is closed.
    got = asyncio.run(collect(slow(100, 1.0), idle_s=0.3, max_s=5, heartbeat_s=0.1))
    assert got[-1].startswith("event: error") and "STUDIO_STREAM_IDLE_S" in got[-1]
    # Events keep coming but the stream is too old: it ends at max_s.
    # (Counted, not timed: under load fewer events fit in max_s, but the source's 100 never do.)
    got = asyncio.run(collect(slow(100, 0.05), idle_s=5, max_s=0.5, heartbeat_s=0.1))
    assert got[-1].startswith("event: error") and "STUDIO_STREAM_MAX_S" in got[-1]
    assert 1 <= len([g for g in got if g.startswith("event: status")]) < 100


# --- Serve: request timeouts and queue caps -------------------------------------------------

@pytest.mark.parametrize("config", sorted(Path("configs/serve").glob("studio*.yaml")), ids=lambda p: p.name)
def test_serve_configs_time_requests_out_after_the_longest_stream(config):
    from ray.serve.schema import HTTPOptionsSchema

    from studio.recipes import read_yaml
    from studio.stack import serve_timeouts

    http = HTTPOptionsSchema.model_validate(read_yaml(config)["http_options"])
    assert http.request_timeout_s and http.request_timeout_s > StudioSettings().stream_max_s
    assert serve_timeouts(config)["request_timeout_s"] == http.request_timeout_s  # what `studio up` applies


def test_the_ingress_queue_is_capped_and_answers_503_with_retry_after():
    from deployments.app import build_app

    app = build_app({"scheduler": {"enabled": False}, "gateway": {"enabled": False},
                     "ingress": {"max_queued_requests": 64}})
    config = app._bound_deployment._deployment_config
    assert config.max_queued_requests == 64
    assert (config.backpressure_config.status_code, config.backpressure_config.retry_after_s) == (503, 5.0)


def test_a_stream_whose_source_fails_ends_with_an_error_event():
    async def breaks():
        yield "event: status\ndata: 0\n\n"
        raise ConnectionError("database went away")

    async def collect():
        return [chunk async for chunk in bounded(breaks(), idle_s=5, max_s=5)]

    got = asyncio.run(collect())
    assert got[0] == "event: status\ndata: 0\n\n"
    assert got[-1].startswith("event: error") and "ConnectionError" in got[-1]
