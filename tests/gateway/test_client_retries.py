"""``studio.gateway.Client`` on the ``openai`` SDK against a scripted loopback server (the
gateway's answers, recorded as they arrive): a 429 is retried after its Retry-After and then
succeeds; a 5xx or 4xx the gateway answered is final (exactly one call reaches it); an unreachable
URL is status 0 naming the fix; every body field and tag header passes unchanged; async calls work
on more than one event loop. Against the real gateway route: its final errors carry
``x-should-retry: false``, so the official ``openai`` client with its default retries makes one
call, not three."""

from __future__ import annotations

import asyncio
import http.server
import json
import time
import uuid

import openai
import pytest

from studio.gateway import Client, GatewayError
from tests.gateway.live import start_live_gateway
from tests.loopback import HandlerThread, free_port

OK = {"id": "c1", "object": "chat.completion", "choices": [{"index": 0, "message": {
    "role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
    "studio_gateway": {"cache_hit": False, "cost_usd": 0.0, "model_group": "g",
                       "deployment": "d", "latency_ms": 1.0},
    "studio_model_version": "g@1"}


class Scripted:
    """A loopback server answering from a script of (status, headers, body); the last entry
    repeats. ``calls`` holds what reached it: (method, path, headers, json body)."""

    def __init__(self):
        self.script, self.calls = [], []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _answer(self):
                n = int(self.headers.get("content-length") or 0)
                body = json.loads(self.rfile.read(n)) if n else None
                outer.calls.append((self.command, self.path, dict(self.headers), body))
                status, headers, out = outer.script[min(len(outer.calls), len(outer.script)) - 1]
                data = json.dumps(out).encode()
                self.send_response(status)
                for k, v in {"content-type": "application/json", **headers}.items():
                    self.send_header(k, v)
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = _answer

            def log_message(self, *args):
                pass

        self.server = HandlerThread(Handler)
        self.url = f"{self.server.url}/gateway/v1"

    def __call__(self, *script: tuple[int, dict[str, str], dict]) -> Scripted:
        self.script, self.calls = list(script), []
        return self


@pytest.fixture(scope="module")
def scripted():
    server = Scripted()
    yield server
    server.server.stop()


def _error(status: int, message: str) -> dict:
    return {"error": {"message": message, "type": "api_error", "param": None, "code": status}}


def test_a_429_is_retried_after_its_retry_after_and_then_succeeds(scripted):
    gw = scripted((429, {"retry-after": "1"}, _error(429, "key 'k' is over 3 requests per minute")),
                  (200, {}, OK))
    client = Client(service="eval", job_id="eval-7", base_url=gw.url, api_key="sk-test",
                    max_concurrency=2)
    t = time.monotonic()
    body = client.chat("g", [{"role": "user", "content": "hi"}], max_tokens=4, top_k=5,
                       structured_outputs={"choice": ["a", "b"]})
    assert time.monotonic() - t >= 0.9  # it waited the Retry-After
    assert body == OK  # the JSON body as a dict, studio fields included
    assert len(gw.calls) == 2
    method, path, headers, sent = gw.calls[-1]
    assert (method, path) == ("POST", "/gateway/v1/chat/completions")
    assert sent == {"model": "g", "messages": [{"role": "user", "content": "hi"}],
                    "max_tokens": 4, "top_k": 5, "structured_outputs": {"choice": ["a", "b"]}}
    headers = {k.lower(): v for k, v in headers.items()}
    assert headers["authorization"] == "Bearer sk-test"
    assert (headers["x-studio-service"], headers["x-studio-job-id"],
            headers["x-studio-job-concurrency"]) == ("eval", "eval-7", "2")
    client.close()


@pytest.mark.parametrize("status", [502, 504, 400, 404])
def test_an_error_the_gateway_answered_is_final(scripted, status):
    gw = scripted((status, {}, _error(status, f"group 'g' failed with {status}")))
    with Client(service="eval", base_url=gw.url, api_key="sk-test") as client:  # max_retries=2
        with pytest.raises(GatewayError) as err:
            client.completions("g", "hi", max_tokens=2)
    assert len(gw.calls) == 1
    assert err.value.status == status
    assert str(err.value).startswith(f"gateway answered {status}: group 'g' failed with {status}")
    assert err.value.body == _error(status, f"group 'g' failed with {status}")


def test_a_429_past_max_retries_carries_its_wait(scripted):
    gw = scripted((429, {"retry-after": "7"}, _error(429, "over budget")))
    with pytest.raises(GatewayError) as err:
        Client(service="eval", base_url=gw.url, api_key="sk-test", max_retries=0).chat("g", [])
    assert len(gw.calls) == 1
    assert (err.value.status, err.value.retry_after_s) == (429, 7.0)


def test_an_unreachable_gateway_is_status_0_naming_the_fix():
    url = f"http://127.0.0.1:{free_port()}/gateway/v1"  # nothing listens there
    client = Client(service="eval", base_url=url, api_key="sk-test", max_retries=1)
    t = time.monotonic()
    with pytest.raises(GatewayError) as err:
        client.models()
    assert time.monotonic() - t >= 0.4  # one retry after a 0.5 s backoff
    assert err.value.status == 0
    assert f"gateway at {url} unreachable (ConnectError" in str(err.value)
    assert "studio up" in str(err.value) and "STUDIO_GATEWAY_URL" in str(err.value)
    with pytest.raises(GatewayError) as err:
        asyncio.run(client.achat("g", []))
    assert err.value.status == 0


def test_async_calls_retry_and_work_on_more_than_one_event_loop(scripted):
    gw = scripted((429, {"retry-after": "0.2"}, _error(429, "slow down")), (200, {}, OK))
    client = Client(service="synth", base_url=gw.url, api_key="sk-test", max_concurrency=1)

    async def burst():
        return await asyncio.gather(*(client.achat("g", [{"role": "user", "content": str(i)}])
                                      for i in range(3)))

    assert asyncio.run(burst()) == [OK] * 3
    assert asyncio.run(client.acompletions("g", "again")) == OK  # a second loop, its own client
    assert len(gw.calls) == 5  # one 429, three answers, one more on the second loop
    assert [c[3].get("prompt") for c in gw.calls][-1] == "again"


def test_models_lists_the_group_names(scripted):
    gw = scripted((200, {}, {"object": "list", "data": [{"id": "tiny"}, {"id": "ext"}]}))
    assert Client(service="eval", base_url=gw.url, api_key="sk-test").models() == ["tiny", "ext"]
    assert gw.calls[0][:2] == ("GET", "/gateway/v1/models")


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)  # the header, not the database
def test_the_gateways_final_errors_stop_the_openai_clients_retries(settings, provider):
    tag = uuid.uuid4().hex[:6]
    live, stop = start_live_gateway(settings, {
        "groups": [{"name": "down", "provider": "hosted_vllm", "model": f"broken-{tag}",
                    "api_base": provider.base}],
        "router": {"num_retries": 0}, "cache": {"namespace": f"studio-test-client-{tag}"}})
    try:
        sdk = openai.OpenAI(base_url=live.url, api_key=live.key)  # the SDK's default 2 retries
        with pytest.raises(openai.APIStatusError) as err:
            sdk.chat.completions.create(model="down", messages=[{"role": "user", "content": "hi"}])
        assert err.value.status_code == 502
        assert err.value.response.headers["x-should-retry"] == "false"
        rows = live.usage(group_by="model", model="down")
        assert [(r["calls"], r["errors"]) for r in rows] == [(1, 1)]
    finally:
        stop()
