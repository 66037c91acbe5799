"""The BYO evaluator as a trust boundary, on SQLite and PostgreSQL through the real API: a URL on
loopback is refused at POST /api/evals (400, no job, nothing reaches the listener) unless
STUDIO_EGRESS_ALLOW lists it; a secret in plain headers is refused (use headers_env); job and eval
details show no header value; secrets come from EVAL_* variables at call time; and what an
evaluator answers beyond {score, reason} is never stored."""

from __future__ import annotations

import asyncio
import http.server
import json
from collections.abc import Iterator

import httpx
import pytest

from studio.evals.scorers import Datapoint
from studio.evals.scorers.http import HttpEvaluator
from studio.scorer_specs import HttpScorer
from studio.settings import StudioSettings
from tests.api.checks import assert_problem
from tests.loopback import HandlerThread

LOOPBACK = StudioSettings(egress_allow="127.0.0.1")
BODY_SECRET = "root:x:0:0"  # what an internal service might answer; must never be stored


class Listener(HandlerThread):
    """A loopback HTTP server recording each request's path and headers; the path picks the answer."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, dict[str, str]]] = []
        requests = self.requests

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                requests.append((self.path, dict(self.headers)))
                self.rfile.read(int(self.headers.get("content-length") or 0))
                status, body = {"/score": (200, json.dumps({"score": 1, "reason": "ok"})),
                                "/garbage": (200, BODY_SECRET),
                                "/forbidden": (403, BODY_SECRET)}.get(self.path, (404, BODY_SECRET))
                data = body.encode()
                self.send_response(status)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args) -> None:
                pass

        super().__init__(Handler)


@pytest.fixture
def listener() -> Iterator[Listener]:
    server = Listener()
    yield server
    server.stop()


def body(dataset: str, scorer: dict) -> dict:
    return {"name": "byo", "dataset": dataset, "models": ["good"], "limit": 2,
            "generation": {"max_tokens": 16}, "scorers": [{"type": "exact_match"}, scorer]}


def test_a_loopback_evaluator_is_refused_at_submit_and_allowed_by_the_admin(
        gateway, reverse_data, listener, monkeypatch):
    monkeypatch.delenv("STUDIO_EGRESS_ALLOW", raising=False)
    api = httpx.Client(base_url=gateway.api_url, headers=gateway.headers(), timeout=30)
    for url in (f"{listener.url}/score", f"http://localhost:{listener.url.rsplit(':', 1)[1]}/score"):
        problem = assert_problem(api.post("/api/evals", json=body(reverse_data, {"type": "http", "url": url})),
                                 400, "resolves to 127.0.0.1 (loopback)")
        assert "STUDIO_EGRESS_ALLOW" in problem["fix"]
    assert api.get("/api/evals").json() == [] and listener.requests == []

    monkeypatch.setenv("STUDIO_EGRESS_ALLOW", "127.0.0.1")
    r = api.post("/api/evals", json=body(reverse_data, {"type": "http", "url": f"{listener.url}/score"}))
    assert r.status_code == 201, r.text
    assert listener.requests == []  # checked, not called: the run calls it


def test_secrets_in_plain_headers_are_refused_and_header_values_never_shown(
        gateway, reverse_data, allow_loopback, listener):
    api = httpx.Client(base_url=gateway.api_url, headers=gateway.headers(), timeout=30)
    for name in ("Authorization", "X-Api-Key", "x-auth-token", "Cookie"):
        scorer = {"type": "http", "url": f"{listener.url}/score", "headers": {name: "sk-very-secret"}}
        problem = assert_problem(api.post("/api/evals", json=body(reverse_data, scorer)), 400, "looks like a secret")
        assert "headers_env" in problem["fix"]
    wrong_var = {"type": "http", "url": f"{listener.url}/score",
                 "headers_env": {"Authorization": "Bearer ${OPENAI_API_KEY}"}}
    assert_problem(api.post("/api/evals", json=body(reverse_data, wrong_var)), 422, "EVAL_*")
    assert api.get("/api/evals").json() == []

    scorer = {"type": "http", "url": f"http://user:pw@127.0.0.1:{listener.url.rsplit(':', 1)[1]}/score?sig=abc",
              "headers": {"X-Team": "team-blue-value"},
              "headers_env": {"Authorization": "Bearer ${EVAL_TOKEN}"}}
    r = api.post("/api/evals", json=body(reverse_data, scorer))
    assert r.status_code == 201, r.text
    eval_id = r.json()["id"]
    for path in (f"/api/evals/{eval_id}", f"/api/jobs/{eval_id}"):
        text = api.get(path).text
        shown = json.loads(text)["spec"]["scorers"][1]
        assert shown["headers"] == {"X-Team": "***"}
        assert shown["headers_env"] == {"Authorization": "Bearer ${EVAL_TOKEN}"}  # a name, not a value
        assert "team-blue-value" not in text and "pw@" not in text and "sig=abc" not in text
    assert r.json()["spec"]["scorers"][1]["headers"] == {"X-Team": "***"}  # the POST's answer too


def score(evaluator: HttpEvaluator):
    return asyncio.run(evaluator.score(Datapoint(0, [{"role": "user", "content": "q"}], "r"), "out"))


def test_headers_env_is_filled_from_eval_variables_at_call_time(listener, monkeypatch):
    spec = HttpScorer(type="http", url=f"{listener.url}/score", retries=0,
                      headers_env={"Authorization": "Bearer ${EVAL_TOKEN}"})
    monkeypatch.delenv("EVAL_TOKEN", raising=False)
    missing = score(HttpEvaluator(spec, LOOPBACK))
    assert missing.status == "error" and "EVAL_TOKEN" in missing.reason and listener.requests == []
    monkeypatch.setenv("EVAL_TOKEN", "tok-123")
    assert score(HttpEvaluator(spec, LOOPBACK)).score == 1.0
    assert listener.requests[0][1]["Authorization"] == "Bearer tok-123"


def test_the_guard_applies_at_call_time_too(listener):
    r = score(HttpEvaluator(HttpScorer(type="http", url=f"{listener.url}/score", retries=0),
                            StudioSettings(egress_allow=None)))
    assert r.score is None and r.status == "error" and "loopback" in r.reason
    assert listener.requests == []


@pytest.mark.parametrize(("path", "status", "words"), [
    ("/garbage", "unscored", "200 OK, text/plain"),
    ("/forbidden", "error", "403 Forbidden, text/plain"),
])
def test_an_evaluator_answer_is_described_never_stored(listener, path, status, words):
    r = score(HttpEvaluator(HttpScorer(type="http", url=f"{listener.url}{path}", retries=0), LOOPBACK))
    assert r.score is None and r.status == status and words in r.reason
    assert r.raw is None and BODY_SECRET not in r.reason
