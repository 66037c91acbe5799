"""Bring-your-own evaluator: an HTTP endpoint that receives ``{input, output, reference}`` and
answers ``{score, reason}``. Timeouts, connection errors and 5xx are retried with backoff; after
the last retry the datapoint is marked ``error`` with what happened, and the run goes on."""

from __future__ import annotations

import asyncio

import httpx

from studio.evals.scorers.base import Datapoint, ScoreResult
from studio.evals.spec import HttpScorer


class HttpEvaluator:
    def __init__(self, spec: HttpScorer):
        self.spec = spec

    async def score(self, dp: Datapoint, output: str) -> ScoreResult:
        payload = {"input": dp.input_text, "messages": dp.messages, "output": output, "reference": dp.reference}
        problem = ""
        async with httpx.AsyncClient(timeout=self.spec.timeout_s) as http:
            for attempt in range(self.spec.retries + 1):
                if attempt:
                    await asyncio.sleep(min(0.2 * 2 ** (attempt - 1), 5.0))
                try:
                    r = await http.post(self.spec.url, json=payload, headers=self.spec.headers)
                except httpx.TimeoutException:
                    problem = f"timed out after {self.spec.timeout_s:g} s"
                    continue
                except httpx.TransportError as e:
                    problem = f"unreachable ({type(e).__name__})"
                    continue
                if r.status_code >= 500:
                    problem = f"answered {r.status_code}"
                    continue
                if r.status_code >= 400:
                    return ScoreResult.unscored(f"evaluator {self.spec.url} refused the request: "
                                                f"{r.status_code}", raw=r.text[:2000], status="error")
                return self._parse(r)
        return ScoreResult.unscored(f"evaluator {self.spec.url} {problem} ({self.spec.retries + 1} tries)",
                                    status="error")

    def _parse(self, r: httpx.Response) -> ScoreResult:
        try:
            body = r.json()
            score = body["score"]
            if isinstance(score, bool) or not isinstance(score, (int, float)):
                raise TypeError
        except (ValueError, KeyError, TypeError):
            return ScoreResult.unscored("the evaluator's reply is not {\"score\": number, \"reason\": text}",
                                        raw=r.text[:2000])
        return ScoreResult(float(score), str(body.get("reason") or "")[:2000])
