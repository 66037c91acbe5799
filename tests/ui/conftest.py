"""Fixtures of the UI tests: the API's TestClient and keys (tests/api/conftest.py) reused here."""

from tests.api.conftest import admin_key, client, user_key  # noqa: F401
