"""A job key spends its submitter's budget, through the real gateway: the studio API on loopback
with a real GatewayService (tests/gateway/live.py) in front of the scripted provider, called with
studio.gateway.Client holding a job key, as a job does. No Ray: the key is the one the scheduler
would put in the job's STUDIO_API_KEY."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select

from studio.gateway import Client, GatewayError
from studio.keys import create_job_key, create_key
from studio.store.db import session_scope
from studio.store.models import ApiKey, UsageRecord
from tests.gateway.conftest import provider  # noqa: F401 — the scripted provider, session-wide
from tests.gateway.live import start_live_gateway

MSG = [{"role": "user", "content": "hi"}]


@pytest.fixture
def gateway(settings, provider):  # noqa: F811
    gw, stop = start_live_gateway(settings, {
        "groups": [{"name": "gen", "provider": "hosted_vllm", "model": "echo", "api_base": provider.base}],
        "router": {"num_retries": 0}, "cache": {"enabled": False}})
    try:
        yield gw
    finally:
        stop()


def job_key_of(settings, name: str, budget_usd: float, spent_usd: float) -> str:
    """A key ``name`` with a budget and what it already spent itself, and a job key derived from it."""
    with session_scope(settings.db_url) as s:
        create_key(s, name, "user")
        key = s.scalars(select(ApiKey).where(ApiKey.name == name)).one()
        key.budget_usd = budget_usd
        s.add(UsageRecord(key_id=key.id, key_name=name, service="api", endpoint="chat", model_group="gen",
                          cost_usd=spent_usd, latency_ms=1.0))
        return create_job_key(s, key, 1, timedelta(hours=1))[0]


def test_a_job_key_is_refused_once_its_submitter_spent_the_budget(settings, gateway):
    spent = job_key_of(settings, "alice", budget_usd=1.0, spent_usd=1.0)
    fresh = job_key_of(settings, "bob", budget_usd=1.0, spent_usd=0.25)

    with Client(service="test", base_url=gateway.url, api_key=fresh, max_retries=0) as client:
        assert client.chat("gen", MSG, max_tokens=4)["choices"]
    with Client(service="test", base_url=gateway.url, api_key=spent, max_retries=0) as client:
        with pytest.raises(GatewayError) as e:
            client.chat("gen", MSG, max_tokens=4)
    assert e.value.status == 429 and "budget" in e.value.problem
