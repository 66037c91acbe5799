"""The external edge, scripted on loopback: an OpenAI-compatible provider whose models behave in
known ways, and a bring-your-own evaluator. The gateway (real ``GatewayService``, real API route)
sits between these and the eval runner.

Provider models: ``good`` reverses the digits of "reverse: …" (always right), ``bad`` echoes them
(always wrong), ``judge`` answers "Score: 8" to rubric prompts and prefers the answer that is the
reversal in pairwise prompts, ``judge-garbage`` answers something unparseable.
Evaluator: ``/score`` → 1 when output == reference; ``/down`` → 500; ``/slow`` → never in time."""

from __future__ import annotations

import asyncio
import re
import time
from collections import Counter

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from tests.loopback import ServerThread, free_port  # noqa: F401 (re-exported)


def reverse_answer(prompt: str) -> str:
    return " ".join(reversed(prompt.removeprefix("reverse: ").split()))


def _pairwise_winner(text: str) -> str:
    q = re.search(r"Question: (.*)", text).group(1)
    a = re.search(r"Answer A: (.*)", text).group(1).strip()
    return "A" if a == reverse_answer(q) else "B"


def build_provider(calls: Counter) -> FastAPI:
    app = FastAPI()

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body = await request.json()
        model, text = body["model"], body["messages"][-1]["content"]
        calls[model] += 1
        calls[(model, text)] += 1  # what was asked, for tests that must tell calls apart
        if model == "slow":
            await asyncio.sleep(0.3)
        if model in ("good", "slow"):
            out = reverse_answer(text)
        elif model == "bad":
            out = text.removeprefix("reverse: ")
        elif model == "judge":
            out = f"Winner: {_pairwise_winner(text)}" if "Answer A:" in text else "Score: 8"
        else:
            out = "I would rather not say."
        return {"id": f"c-{calls[model]}", "object": "chat.completion", "created": int(time.time()), "model": model,
                "usage": {"prompt_tokens": 10, "completion_tokens": 4, "total_tokens": 14},
                "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": out}}]}

    return app


def build_evaluator(calls: Counter) -> FastAPI:
    app = FastAPI()

    @app.post("/score")
    async def score(request: Request):
        body = await request.json()
        calls["score"] += 1
        ok = body["output"].strip() == (body["reference"] or "").strip()
        return {"score": 1.0 if ok else 0.0, "reason": "same" if ok else "differs"}

    @app.post("/down")
    async def down():
        calls["down"] += 1
        return JSONResponse({"error": "scripted outage"}, status_code=500)

    @app.post("/slow")
    async def slow():
        calls["slow"] += 1
        await asyncio.sleep(5)
        return {"score": 1}

    return app
