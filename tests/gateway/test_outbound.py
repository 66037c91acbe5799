"""Nothing a caller sends steers the gateway's outbound call (docs/security.md, "Outbound calls"),
through the real ``/gateway/v1`` route and a real GatewayService (``tests/gateway/live.py``):
``api_base`` pointed at a loopback listener is refused 400 and the listener hears nothing; every
LiteLLM call option is refused by name; what reaches the scripted provider is OpenAI's fields
and the server's key, nothing of the caller's; vLLM's extensions go to studio models only; the
job headers come from job (and admin) keys only; the caps; the cache is per principal key."""

from __future__ import annotations

import asyncio
import uuid

import httpx
import pytest
from fastapi import FastAPI, Request

from studio.gateway.request import OPENAI_CHAT_FIELDS
from studio.gateway.service import GatewayService
from studio.gateway.spec import load_gateway_spec
from studio.keys import create_key
from studio.store.db import session_scope
from studio.store.models import ApiKey
from tests.gateway.live import start_live_gateway
from tests.loopback import ServerThread

MSG = [{"role": "user", "content": "hi"}]
SERVER_KEY = "sk-server-provider-key-do-not-leak"
REFUSED = ["api_base", "base_url", "api_key", "headers", "extra_headers", "extra_body",
           "mock_response", "num_retries", "fallbacks", "metadata", "custom_llm_provider",
           "input_cost_per_token", "output_cost_per_token", "timeout", "caching", "api_version",
           "model_list", "litellm_params", "request_id", "priority", "chat_template"]


class Listener:
    """A loopback host standing in for one a caller would like the server to call."""

    def __init__(self):
        self.heard: list[tuple[str, str, dict[str, str]]] = []
        app = FastAPI()

        @app.api_route("/{path:path}", methods=["GET", "POST", "PUT"])
        async def anything(path: str, request: Request):
            self.heard.append((request.method, path, dict(request.headers)))
            return {"id": "x", "object": "chat.completion", "choices": [], "model": "m"}

        self.server = ServerThread(app).start()
        self.url = f"{self.server.url}/v1"


@pytest.fixture(scope="module")
def listener():
    one = Listener()
    yield one
    one.server.stop()


@pytest.fixture
def live(settings, provider, monkeypatch):
    monkeypatch.setenv("GW_OUTBOUND_KEY", SERVER_KEY)
    tag = uuid.uuid4().hex[:6]
    gw, stop = start_live_gateway(settings, {
        "groups": [{"name": "ext", "provider": "openai", "model": "gpt-4o-mini",
                    "api_base": provider.base, "api_key_env": "GW_OUTBOUND_KEY"}],
        "router": {"num_retries": 0}, "cache": {"namespace": f"studio-test-outbound-{tag}"}})
    gw.keys = {}
    with session_scope(settings.db_url) as s:
        for role in ("user", "service"):
            gw.keys[role] = create_key(s, f"{role}-{tag}", role)[0]
        gw.keys["other"] = create_key(s, f"other-{tag}", "user")[0]
        user = s.query(ApiKey).filter_by(name=f"user-{tag}").one()
        # A job key as the scheduler makes one: derived from its submitter's key, for one job.
        secret, _ = create_key(s, f"job-{tag}", "user")
        job = s.query(ApiKey).filter_by(name=f"job-{tag}").one()
        job.parent_id, job.job_id = user.id, 4242
        gw.keys["job"] = secret
    gw.keys["admin"] = gw.key
    yield gw
    stop()


def post(live, role: str, body: dict, headers: dict | None = None, path="/chat/completions"):
    return httpx.post(f"{live.url}{path}", json=body, timeout=30,
                      headers={"Authorization": f"Bearer {live.keys[role]}", **(headers or {})})


def test_api_base_is_refused_and_the_listener_hears_nothing(live, listener, provider):
    asked = len(provider.received)
    for role in ("user", "service", "admin"):
        for path, body in (("/chat/completions", {"model": "ext", "messages": MSG}),
                           ("/completions", {"model": "ext", "prompt": "hi"})):
            r = post(live, role, {**body, "api_base": listener.url}, path=path)
            assert r.status_code == 400, r.text
            error = r.json()["error"]
            assert error["type"] == "invalid_request_error"
            assert "api_base" in error["message"] and "drop those fields" in error["message"]
    assert listener.heard == []
    assert len(provider.received) == asked  # refused before any call


def test_every_call_option_is_refused_by_name_in_one_answer(live, listener):
    body = {"model": "ext", "messages": MSG, "temperature": 0}
    body.update({field: listener.url for field in REFUSED})
    r = post(live, "user", body)
    assert r.status_code == 400
    listed = r.json()["error"]["message"].split(": ", 1)[1].split(". The studio")[0]
    assert sorted(listed.split(", ")) == sorted(REFUSED)  # every one, and no allowed field
    assert listener.heard == []


def test_the_service_itself_refuses_what_a_direct_handle_caller_sends(settings, provider,
                                                                      listener, monkeypatch):
    monkeypatch.setenv("GW_OUTBOUND_KEY", SERVER_KEY)
    spec = load_gateway_spec({"groups": [{"name": "ext", "provider": "openai",
                                          "model": "gpt-4o-mini", "api_base": provider.base,
                                          "api_key_env": "GW_OUTBOUND_KEY"}],
                              "cache": {"enabled": False}})
    svc = GatewayService(spec, None, settings.db_url)
    try:
        for extra in ({"api_base": listener.url}, {"mock_response": "owned"},
                      {"extra_headers": {"x": "y"}}, {"n": 9}, {"max_tokens": 10**6}):
            status, body, _ = asyncio.run(svc.handle(
                "chat", {"model": "ext", "messages": MSG, **extra}, {"key_id": 1}))
            assert status == 400, (extra, body)
            assert next(iter(extra)) in body["error"]["message"]
    finally:
        svc.close()
    assert listener.heard == []


def test_the_provider_gets_openai_fields_and_the_servers_key_only(live, provider):
    asked = len(provider.received)
    body = {"model": "ext", "messages": MSG, "temperature": 0.3, "top_p": 0.9, "max_tokens": 5,
            "stop": ["\n"], "seed": 7, "user": "end-user-1", "presence_penalty": 0.1,
            "frequency_penalty": 0.1, "logit_bias": {"50256": -100}}
    r = post(live, "user", body, headers={"x-studio-service": "eval", "X-Api-Key": "caller",
                                          "OpenAI-Organization": "caller-org"})
    assert r.status_code == 200, r.text
    (model, sent, headers), = provider.received[asked:]
    assert model == "gpt-4o-mini"
    assert set(sent) <= OPENAI_CHAT_FIELDS, set(sent) - OPENAI_CHAT_FIELDS
    assert sent["seed"] == 7 and sent["user"] == "end-user-1" and sent["stop"] == ["\n"]
    assert headers["authorization"] == f"Bearer {SERVER_KEY}"  # the server's, never the caller's
    assert live.keys["user"] not in str(headers)
    leaked = {h for h in headers if h.startswith("x-studio") or h in ("x-api-key",)}
    assert not leaked and headers.get("openai-organization") != "caller-org"


def test_vllm_extensions_reach_studio_models_only(live, provider):
    asked = len(provider.received)
    r = post(live, "user", {"model": "ext", "messages": MSG, "top_k": 5, "min_tokens": 2})
    assert r.status_code == 400
    message = r.json()["error"]["message"]
    assert "external provider" in message and "min_tokens, top_k" in message
    assert len(provider.received) == asked


@pytest.mark.parametrize("header", [{"x-studio-job-id": "eval-7"},
                                    {"x-studio-job-concurrency": "2"}])
def test_job_headers_only_from_job_and_admin_keys(live, header):
    body = {"model": "ext", "messages": MSG}
    for role in ("user", "service", "other"):
        r = post(live, role, body, headers=header)
        assert r.status_code == 403, (role, r.text)
        error = r.json()["error"]
        assert next(iter(header)) in error["message"] and "job's key" in error["message"]
        assert error["type"] == "permission_error"
    for role in ("job", "admin"):
        assert post(live, role, body, headers=header).status_code == 200, role


def test_the_service_label_is_short_and_plain(live):
    body = {"model": "ext", "messages": MSG}
    for label in ("x" * 65, "eval; rm -rf /", "-leading", "a b"):
        r = post(live, "user", body, headers={"x-studio-service": label})
        assert r.status_code == 400, (label, r.text)
        assert "x-studio-service" in r.json()["error"]["message"]
    assert post(live, "user", body, headers={"x-studio-service": "eval:judge/v2"}).status_code \
        == 200


@pytest.mark.parametrize(("change", "named"), [
    ({"n": 9}, "STUDIO_MAX_N"), ({"max_tokens": 8193}, "STUDIO_MAX_TOKENS"),
    ({"max_completion_tokens": 100_000}, "STUDIO_MAX_TOKENS"),
    ({"model": "m" * 257}, "model"), ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"stop": ["s" * 257]}, "stop"), ({"messages": MSG * 2049}, "messages"),
    ({"seed": 2**64}, "seed"), ({"temperature": "hot"}, "temperature"),
    ({"logit_bias": {str(i): 1 for i in range(1025)}}, "logit_bias"),
])
def test_caps_are_a_400_naming_the_field(live, provider, change, named):
    asked = len(provider.received)
    r = post(live, "user", {"model": "ext", "messages": MSG, **change})
    assert r.status_code == 400, r.text
    assert named in r.json()["error"]["message"]
    assert len(provider.received) == asked


def test_the_cache_answers_a_key_and_its_jobs_never_another_key(live, provider):
    body = {"model": "ext", "temperature": 0,
            "messages": [{"role": "user", "content": f"cache {uuid.uuid4().hex}"}]}
    answers = [(role, post(live, role, body)) for role in ("user", "user", "job", "other",
                                                           "admin")]
    assert all(r.status_code == 200 for _, r in answers), [r.text for _, r in answers]
    assert [(role, r.headers["x-studio-cache"]) for role, r in answers] == [
        ("user", "miss"), ("user", "hit"), ("job", "hit"), ("other", "miss"), ("admin", "miss")]


def test_job_slots_are_per_key(live):
    """Two keys naming the same job id do not share (or fill) each other's slots."""
    service = live.service

    async def go():
        a = await service.limiter.acquire_job("eval-1", 1, scope=1)
        b = await service.limiter.acquire_job("eval-1", 1, scope=2)
        await service.limiter.release_job("eval-1", scope=1)
        await service.limiter.release_job("eval-1", scope=2)
        return a, b

    assert asyncio.run(go()) == (True, True)


class ServeSide:
    """Stands in for the studio's serving side as the gateway reaches it (the RouterClient's
    ``stream``: the Router's meta, then the engine's items): records what arrives, answers a
    scripted stream or body. No engine runs in this module."""

    def __init__(self):
        self.bodies: list[dict] = []
        self.owners: list[int | None] = []

    async def stream(self, endpoint: str, body: dict, owner_key_id: int | None = None):
        self.bodies.append(body)
        self.owners.append(owner_key_id)
        yield {"studio_model_version": body["model"]}
        if body.get("stream"):
            yield 'data: {"choices":[{"index":0,"delta":{"content":"ok"}}]}\n\n'
            yield ('data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":1,'
                   '"total_tokens":4}}\n\ndata: [DONE]\n\n')
        else:
            yield {"object": "chat.completion", "choices": [], "usage": {"prompt_tokens": 3}}

    async def models(self):
        return {"object": "list", "data": []}


def test_studio_models_get_the_allowed_fields_and_streams_always_count_usage(settings):
    from studio.gateway.request import ENGINE_FIELDS

    side = ServeSide()
    svc = GatewayService(load_gateway_spec({"cache": {"enabled": False}}), side, settings.db_url)
    # A job key (id 5) of key 1: its completions are logged as key 1's (feedback is key 1's).
    ctx = {"key_id": 5, "key_name": "k", "principal_id": 1}

    async def streamed(body):
        return [item async for item in svc.stream("chat", body, ctx)]

    try:
        refused = asyncio.run(streamed({"model": "tiny", "messages": MSG, "stream": True,
                                        "extra_body": {"api_base": "http://127.0.0.1:1"}}))
        assert refused[0][0] == 400 and "extra_body" in refused[0][1]["error"]["message"]
        assert side.bodies == []
        items = asyncio.run(streamed({"model": "tiny", "messages": MSG, "stream": True,
                                      "top_k": 3}))
        assert items[0][0] == 200 and items[-1].endswith("data: [DONE]\n\n")
        sent = side.bodies[-1]
        assert sent["stream_options"] == {"include_usage": True}  # forced: the caller sent none
        assert sent["top_k"] == 3 and set(sent) <= OPENAI_CHAT_FIELDS | ENGINE_FIELDS
        status, _, _ = asyncio.run(svc.handle("chat", {"model": "tiny", "messages": MSG,
                                                       "min_p": 0.2, "seed": 3}, ctx))
        assert status == 200 and side.bodies[-1] == {"model": "tiny", "messages": MSG,
                                                     "min_p": 0.2, "seed": 3}
        assert side.owners == [1, 1]  # streamed and whole answers alike
    finally:
        svc.close()  # writes the queued usage rows
    from studio.store.models import UsageRecord

    with session_scope(settings.db_url) as s:
        rows = s.query(UsageRecord).filter_by(key_name="k").order_by(UsageRecord.id).all()
        assert [(r.status, r.prompt_tokens, r.completion_tokens) for r in rows] == [
            (400, 0, 0), (200, 3, 1), (200, 3, 0)]  # the stream's usage chunk was counted
