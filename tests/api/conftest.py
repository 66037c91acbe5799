"""The studio API app on a real database, driven with FastAPI's TestClient, and real API keys."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from studio.api.app import create_app
from studio.keys import create_key
from studio.settings import StudioSettings
from studio.store.db import session_scope


@pytest.fixture
def client(settings: StudioSettings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as c:
        yield c


def _key(settings: StudioSettings, name: str, role: str) -> str:
    with session_scope(settings.db_url) as s:
        return create_key(s, name, role)[0]


@pytest.fixture
def admin_key(settings: StudioSettings) -> str:
    return _key(settings, "root", "admin")


@pytest.fixture
def user_key(settings: StudioSettings) -> str:
    return _key(settings, "alice", "user")

