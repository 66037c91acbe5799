"""LLM-as-judge through the gateway: a pointwise 1-10 rubric score, or pairwise A vs B asked in
both orders so the judge's preference for a position cancels out. A reply that cannot be parsed
leaves the datapoint unscored, with the reply kept (``raw``); the run goes on."""

from __future__ import annotations

import re

from studio.evals.scorers.base import Datapoint, ScoreResult
from studio.gateway import Client, GatewayError
from studio.scorer_specs import JudgeScorer, register

POINTWISE = """You are grading an answer.
Rubric: {rubric}
Question: {question}
{reference}Answer: {answer}
Reply with "Score: N" where N is an integer from 1 (worst) to 10 (best)."""

PAIRWISE = """You are comparing two answers to the same question.
Rubric: {rubric}
Question: {question}
{reference}Answer A: {a}
Answer B: {b}
Reply with "Winner: A", "Winner: B" or "Winner: tie"."""

_SCORE = re.compile(r"score\W{0,3}(\d{1,2}(?:\.\d+)?)", re.IGNORECASE)
_BARE = re.compile(r"^\s*(\d{1,2}(?:\.\d+)?)\s*(?:/\s*10)?\s*\.?\s*$")
_WINNER = re.compile(r"winner\W{0,3}(a|b|tie)\b", re.IGNORECASE)
_BARE_WINNER = re.compile(r"^\s*(a|b|tie)\s*\.?\s*$", re.IGNORECASE)


def parse_score(reply: str) -> float | None:
    m = _SCORE.search(reply) or _BARE.match(reply)
    if m is None:
        return None
    value = float(m.group(1))
    return value if 1 <= value <= 10 else None


def parse_winner(reply: str) -> str | None:
    m = _WINNER.search(reply) or _BARE_WINNER.match(reply)
    return m.group(1).lower() if m else None


def _content(body: dict) -> str:
    return (body.get("choices") or [{}])[0].get("message", {}).get("content") or ""


class Judge:
    def __init__(self, spec: JudgeScorer, client: Client):
        self.spec = spec
        self.client = client

    def _reference(self, dp: Datapoint) -> str:
        return f"Reference answer: {dp.reference}\n" if dp.reference else ""

    async def _ask(self, prompt: str) -> str:
        body = await self.client.achat(self.spec.model, [{"role": "user", "content": prompt}],
                                       max_tokens=self.spec.max_tokens, temperature=0)
        return _content(body)

    async def score(self, dp: Datapoint, output: str) -> ScoreResult:
        prompt = POINTWISE.format(rubric=self.spec.rubric, question=dp.input_text,
                                  reference=self._reference(dp), answer=output)
        try:
            reply = await self._ask(prompt)
        except GatewayError as e:
            return ScoreResult.unscored(f"judge {self.spec.model} failed: {e.problem}", status="error")
        value = parse_score(reply)
        if value is None:
            return ScoreResult.unscored("the judge's reply holds no 'Score: N' (1-10)", raw=reply)
        return ScoreResult(value, f"judge: {value:g}/10", raw=reply)

    async def compare(self, dp: Datapoint, candidate: str, baseline: str) -> ScoreResult:
        """1 when the candidate wins in both orders, 0 when it loses in both, 0.5 otherwise
        (a tie, or a verdict that flips with the order: position bias, not preference)."""
        verdicts, replies = [], []
        for a, b, cand_letter in ((candidate, baseline, "a"), (baseline, candidate, "b")):
            prompt = PAIRWISE.format(rubric=self.spec.rubric, question=dp.input_text,
                                     reference=self._reference(dp), a=a, b=b)
            try:
                reply = await self._ask(prompt)
            except GatewayError as e:
                return ScoreResult.unscored(f"judge {self.spec.model} failed: {e.problem}", status="error")
            replies.append(reply)
            winner = parse_winner(reply)
            if winner is None:
                return ScoreResult.unscored("the judge's reply holds no 'Winner: A|B|tie'",
                                            raw="\n---\n".join(replies))
            verdicts.append(0.5 if winner == "tie" else 1.0 if winner == cand_letter else 0.0)
        score = sum(verdicts) / 2
        return ScoreResult(score, f"candidate first: {verdicts[0]:g}, baseline first: {verdicts[1]:g}",
                           raw="\n---\n".join(replies), detail={"orders": verdicts})


register("judge", Judge)  # Judge(spec, client): judges call models through the gateway client
