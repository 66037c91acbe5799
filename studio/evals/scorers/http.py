"""Bring-your-own evaluator: an HTTP endpoint that receives ``{input, output, reference}`` and
answers ``{score, reason}``. Timeouts, connection errors and 5xx are retried with backoff; after
the last retry the datapoint is marked ``error`` with what happened, and the run goes on.

The URL is the caller's choice, so every call goes through the egress guard (``studio.egress``:
checked when it connects, redirects never followed), and what the endpoint answers is never stored
beyond a valid ``{score, reason}``: anything else is recorded by its status and content type only,
so the evaluator cannot be used to read what the server can reach. Secret headers come from
``headers_env`` templates filled from the job's environment at call time."""

from __future__ import annotations

import asyncio
import os

import httpx

from studio.egress import guarded_async_client, redact_url
from studio.errors import StudioError
from studio.evals.scorers.base import Datapoint, ScoreResult
from studio.scorer_specs import ENV_REF, HttpScorer, register
from studio.settings import StudioSettings


def env_headers(spec: HttpScorer) -> dict[str, str]:
    """``headers_env`` filled from this process' environment; a missing variable is a StudioError."""
    out = {}
    for header, template in spec.headers_env.items():
        missing = [n for n in ENV_REF.findall(template) if n not in os.environ]
        if missing:
            raise StudioError(f"http scorer header {header!r} needs ${missing[0]}, which is not set where "
                              "the eval job runs",
                              f"export {missing[0]} in the environment of `studio up` (or the cluster's "
                              "runtime env) so eval jobs see it")
        out[header] = ENV_REF.sub(lambda m: os.environ[m.group(1)], template)
    return out


class HttpEvaluator:
    def __init__(self, spec: HttpScorer, settings: StudioSettings | None = None):
        self.spec = spec
        # Read once: the job's STUDIO_EGRESS_ALLOW applies to every call of this run.
        self.settings = settings or StudioSettings()
        self.where = redact_url(spec.url)

    async def score(self, dp: Datapoint, output: str) -> ScoreResult:
        payload = {"input": dp.input_text, "messages": dp.messages, "output": output, "reference": dp.reference}
        try:
            headers = {**self.spec.headers, **env_headers(self.spec)}
        except StudioError as e:
            return ScoreResult.unscored(f"evaluator {self.where}: {e}", status="error")
        problem = ""
        async with guarded_async_client(self.settings, timeout=self.spec.timeout_s) as http:
            for attempt in range(self.spec.retries + 1):
                if attempt:
                    await asyncio.sleep(min(0.2 * 2 ** (attempt - 1), 5.0))
                try:
                    r = await http.post(self.spec.url, json=payload, headers=headers)
                except StudioError as e:  # the host resolved to a refused address at connect time
                    return ScoreResult.unscored(f"evaluator {self.where}: {e.problem}", status="error")
                except httpx.TimeoutException:
                    problem = f"timed out after {self.spec.timeout_s:g} s"
                    continue
                except httpx.TransportError as e:
                    problem = f"unreachable ({type(e).__name__})"
                    continue
                if r.status_code >= 500:
                    problem = f"answered {r.status_code}"
                    continue
                if r.status_code >= 300:
                    what = "redirected (redirects are not followed)" if r.status_code < 400 else "refused the request"
                    return ScoreResult.unscored(f"evaluator {self.where} {what}: {describe(r)}", status="error")
                return self._parse(r)
        return ScoreResult.unscored(f"evaluator {self.where} {problem} ({self.spec.retries + 1} tries)",
                                    status="error")

    def _parse(self, r: httpx.Response) -> ScoreResult:
        try:
            body = r.json()
            score = body["score"]
            if isinstance(score, bool) or not isinstance(score, (int, float)):
                raise TypeError
        except (ValueError, KeyError, TypeError):
            # The body is not kept: an evaluator URL must not become a way to read a server's answer.
            return ScoreResult.unscored("the evaluator's reply is not {\"score\": number, \"reason\": text} "
                                        f"({describe(r)})")
        return ScoreResult(float(score), str(body.get("reason") or "")[:2000])


def describe(r: httpx.Response) -> str:
    """A response in a few words — status, reason, content type and size — never its body."""
    kind = r.headers.get("content-type", "no content type").split(";")[0][:60]
    return f"{r.status_code} {r.reason_phrase}, {kind}, {len(r.content)} bytes".strip()


register("http", lambda spec, client: HttpEvaluator(spec))
