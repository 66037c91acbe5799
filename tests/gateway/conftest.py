from __future__ import annotations

import pytest

from tests.gateway.fake_provider import FakeProvider


@pytest.fixture(scope="session")
def provider():
    fake = FakeProvider().start()
    yield fake
    fake.stop()
