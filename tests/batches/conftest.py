"""The Batch API's light tests: the studio API in-process (TestClient) on a real database with real
keys; the runner in-process against a live gateway (tests/gateway/live.py: the real API app and
GatewayService on loopback) whose groups call the scripted upstream of tests/batches/upstream.py,
the one fake (the external edge)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from studio.api.app import create_app
from studio.jobs.submission import submitter_key
from studio.keys import create_job_key, create_key
from studio.settings import StudioSettings
from studio.store.db import session_scope
from studio.store.models import Batch, Job
from tests.batches.upstream import Upstream

CHAT = "/v1/chat/completions"


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def line(custom_id: str, content: str, model: str = "gen", url: str = CHAT, **body: Any) -> dict:
    return {"custom_id": custom_id, "method": "POST", "url": url,
            "body": {"model": model, "messages": [{"role": "user", "content": content}],
                     "max_tokens": 4, **body}}


def jsonl(lines: list[dict | str]) -> bytes:
    return "".join((json.dumps(x) if isinstance(x, dict) else x) + "\n" for x in lines).encode()


@pytest.fixture
def api(settings: StudioSettings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as c:
        yield c


@pytest.fixture
def keys(settings: StudioSettings) -> dict[str, str]:
    with session_scope(settings.db_url) as s:
        return {name: create_key(s, name, role)[0]
                for name, role in (("root", "admin"), ("alice", "user"), ("bob", "user"),
                                   ("svc", "service"))}


def upload(api: TestClient, secret: str, data: bytes, filename: str = "in.jsonl") -> str:
    r = api.post("/v1/files", files={"file": (filename, data)}, data={"purpose": "batch"},
                 headers=bearer(secret))
    assert r.status_code == 200, r.text
    return r.json()["id"]


def create(api: TestClient, secret: str, file_id: str, endpoint: str = CHAT, **extra: Any):
    return api.post("/v1/batches", json={"input_file_id": file_id, "endpoint": endpoint,
                                         "completion_window": "24h", **extra},
                    headers=bearer(secret))


def new_batch(api: TestClient, secret: str, lines: list[dict | str]) -> dict:
    r = create(api, secret, upload(api, secret, jsonl(lines)))
    assert r.status_code == 200, r.text
    return r.json()


@pytest.fixture(scope="session")
def upstream_server() -> Iterator[Upstream]:
    up = Upstream().start()
    yield up
    up.stop()


@pytest.fixture
def upstream(upstream_server: Upstream) -> Iterator[Upstream]:
    upstream_server.asked.clear()
    upstream_server.delay_s = 0.1
    upstream_server.hold_after = None
    upstream_server.released.clear()
    yield upstream_server
    upstream_server.released.set()  # nothing stays held past its test


@pytest.fixture
def gateway(settings, upstream, monkeypatch):
    """A live gateway (real GatewayService, real /gateway/v1 and keys) whose groups are ``gen``,
    ``slow`` and ``ctx`` on the upstream, and ``priced`` ($0.70 a call: 7 prompt tokens at
    $100,000 per 1M); every default gateway Client of this process calls it."""
    from tests.gateway.live import start_live_gateway

    groups = [{"name": name, "provider": "hosted_vllm", "model": model, "api_base": upstream.base}
              for name, model in (("gen", "echo"), ("slow", "slow-echo"), ("ctx", "ctx-model"))]
    groups.append({"name": "priced", "provider": "hosted_vllm", "model": "echo",
                   "api_base": upstream.base, "price": {"input_per_1m_tokens_usd": 100_000}})
    gw, stop = start_live_gateway(settings, {"groups": groups, "router": {"num_retries": 0},
                                             "cache": {"enabled": False}})
    monkeypatch.setenv("STUDIO_GATEWAY_URL", gw.url)
    try:
        yield gw
    finally:
        stop()


def job_key_for(settings: StudioSettings, batch_id: str) -> str:
    """The key the scheduler would hand the batch's job: derived from the batch's creator."""
    with session_scope(settings.db_url) as s:
        job = s.get(Job, s.get(Batch, batch_id).job_id)
        submitter = submitter_key(s, job)
        assert submitter is not None, f"job {job.id} has no live submitter key"
        return create_job_key(s, submitter, job.id, timedelta(hours=1))[0]


def job_of(settings: StudioSettings, batch_id: str) -> Job:
    with session_scope(settings.db_url) as s:
        return s.scalars(select(Job).join(Batch, Batch.job_id == Job.id).where(Batch.id == batch_id)).one()
