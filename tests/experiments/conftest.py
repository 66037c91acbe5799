"""The studio API on a real database (SQLite and PostgreSQL) with real keys, and completions put
in the log by the Router's own recorder (the one /v1 uses), for experiment and feedback tests."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from datetime import datetime, timezone

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from studio.api.app import create_app
from studio.experiments.completions import CompletionRecorder, prompt_text
from studio.keys import create_key
from studio.registry.versions import register_version
from studio.settings import StudioSettings
from studio.store.db import session_scope
from studio.store.models import ApiKey


@pytest.fixture
def client(settings: StudioSettings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as c:
        yield c


@pytest.fixture
def headers(settings: StudioSettings) -> dict[str, str]:
    with session_scope(settings.db_url) as s:
        return {"Authorization": f"Bearer {create_key(s, 'alice', 'user')[0]}"}


@pytest.fixture
def registry(settings: StudioSettings) -> None:
    """reverse-tiny@1 and @2 registered (adapters are never loaded in these tests)."""
    with session_scope(settings.db_url) as s:
        for i in (1, 2):
            register_version(s, name="reverse-tiny", base_model="/models/tiny", method="sft",
                             adapter_type="lora", uri=f"/a/rev-{i}")


@pytest.fixture
def log_completions(settings: StudioSettings) -> Callable[..., list[str]]:
    """``log_completions([(id, experiment, arm, version, prompt, response), ...])`` through a
    CompletionRecorder, as the Router records them: answered to the key named ``owner`` (alice,
    when she exists), whose feedback they then take."""

    def log(rows, owner: str = "alice") -> list[str]:
        with session_scope(settings.db_url) as s:
            owner_id = s.scalars(select(ApiKey.id).where(ApiKey.name == owner)).first()

        async def run():
            recorder = CompletionRecorder(settings.db_url)
            for cid, experiment, arm, version, prompt, response in rows:
                messages = [{"role": "user", "content": prompt}]
                recorder.record({
                    "id": cid, "endpoint": "chat", "requested_model": experiment or version,
                    "experiment": experiment, "arm": arm, "model_version": version,
                    "prompt": messages, "prompt_text": prompt_text("chat", messages),
                    "response": response, "latency_ms": 10.0 + len(response), "ttft_ms": 5.0,
                    "output_tokens": len(response.split()), "user": "u1",
                    "owner_key_id": owner_id, "created_at": datetime.now(timezone.utc)})
            await recorder.flush()
            return recorder.written

        assert asyncio.run(run()) == len(rows)
        return [r[0] for r in rows]

    return log
