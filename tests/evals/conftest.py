"""A real gateway for eval tests without Ray: the studio API app (its /gateway/v1 route, real keys)
served on loopback, whose gateway is a real ``GatewayService`` with model groups pointing at the
scripted provider. The one stand-in is ``ServiceHandle``, which calls the service directly where
the Serve ingress would hold a DeploymentHandle to the Gateway deployment."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import studio.gateway  # noqa: F401 — LITELLM_LOCAL_MODEL_COST_MAP before litellm loads
from studio.data.ingest import ingest_file
from studio.keys import create_key
from studio.store.db import session_scope
from tests.evals.scripted import Hold, ServerThread, build_evaluator, build_provider

KEY_ENV = "STUDIO_TEST_EVAL_PROVIDER_KEY"


@dataclass
class Gateway:
    client: Callable[..., Any]  # a studio.gateway.Client for the eval service
    api_url: str  # the studio API (same app) for /api/* calls
    key: str  # an admin key

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}


class _Method:
    def __init__(self, fn):
        self.fn = fn

    def remote(self, *args):
        return self.fn(*args)


class ServiceHandle:
    """What the API route calls on the Gateway deployment's handle, served by the service itself."""

    def __init__(self, service):
        self.chat = _Method(lambda body, ctx: service.handle("chat", body, ctx))
        self.completions = _Method(lambda body, ctx: service.handle("completions", body, ctx))
        self.models = _Method(service.models)


@pytest.fixture(scope="session")
def provider_calls() -> Counter:
    return Counter()


@pytest.fixture(scope="session")
def provider_hold() -> Hold:
    return Hold()


@pytest.fixture(scope="session")
def provider(provider_calls, provider_hold):
    server = ServerThread(build_provider(provider_calls, provider_hold)).start()
    yield server
    provider_hold.release()
    server.stop()


@pytest.fixture(scope="session")
def evaluator_calls() -> Counter:
    return Counter()


@pytest.fixture(scope="session")
def evaluator(evaluator_calls):
    server = ServerThread(build_evaluator(evaluator_calls)).start()
    yield server
    server.stop()


@pytest.fixture
def allow_loopback(monkeypatch):
    """The scripted evaluator listens on loopback, which the egress guard refuses unless
    STUDIO_EGRESS_ALLOW lists it (read by the eval run's HttpEvaluator and by POST /api/evals)."""
    monkeypatch.setenv("STUDIO_EGRESS_ALLOW", "127.0.0.1")


@pytest.fixture
def gateway(settings, provider, monkeypatch):
    """(Client factory, settings): the studio API with a live gateway on a loopback port."""
    from studio.api.app import create_app
    from studio.gateway import Client
    from studio.gateway.service import GatewayService
    from studio.gateway.spec import load_gateway_spec

    monkeypatch.setenv(KEY_ENV, "sk-scripted")
    # Registry-style names are groups too, so the promotion gate's evals run through the gateway.
    names = {m: m for m in ("good", "bad", "judge", "judge-garbage", "slow")}
    names.update({"rev@1": "bad", "rev@2": "good", "rev@3": "bad"})
    groups = [{"name": n, "provider": "openai", "model": m, "api_base": f"{provider.url}/v1", "api_key_env": KEY_ENV}
              for n, m in names.items()]
    spec = load_gateway_spec({"groups": groups, "router": {"num_retries": 0},
                              "cache": {"namespace": f"evals-test-{os.getpid()}-{id(settings)}"}})
    service = GatewayService(spec, None, settings.db_url, None)
    app = create_app(settings)
    app.state.gateway = ServiceHandle(service)
    server = ServerThread(app).start()
    with session_scope(settings.db_url) as s:
        key = create_key(s, "eval-tests", "admin")[0]
    url = f"{server.url}/gateway/v1"
    monkeypatch.setenv("STUDIO_GATEWAY_URL", url)
    monkeypatch.setenv("STUDIO_API_KEY", key)

    def client(**kw):
        return Client(service="eval", base_url=url, api_key=key, **kw)

    yield Gateway(client, server.url, key)
    server.stop()
    service.close()


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    import json

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def reverse_data(settings, tmp_path) -> str:
    """30 digit-reversal rows (prompt/completion, no palindromes) ingested as `rev-test`."""
    import random

    from studio.models.tiny import reversal_example

    rng = random.Random(3)
    rows = []
    seen = set()
    while len(rows) < 30:
        p, a = reversal_example(rng)
        if p not in seen and a != p.removeprefix("reverse: "):  # no palindromes: echoing is always wrong
            seen.add(p)
            rows.append({"prompt": p, "completion": a})
    ingest_file(write_jsonl(tmp_path / "rev.jsonl", rows), "rev-test", settings)
    return "rev-test"


@pytest.fixture
def text_data(settings, tmp_path) -> str:
    ingest_file(write_jsonl(tmp_path / "text.jsonl", [{"text": f"line {i}"} for i in range(5)]), "notes", settings)
    return "notes"
