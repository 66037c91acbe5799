"""The external edge, scripted on loopback: an OpenAI-compatible provider whose models behave in
known ways, and a bring-your-own evaluator. The gateway (real ``GatewayService``, real API route)
sits between these and the eval runner.

Provider models: ``good`` reverses the digits of "reverse: …" (always right), ``bad`` echoes them
(always wrong), ``judge`` answers "Score: 8" to rubric prompts and prefers the answer that is the
reversal in pairwise prompts, ``judge-garbage`` answers something unparseable.
A ``Hold`` lets a test stop the provider after a number of answers (a crash test's "later" calls
wait until it lets them go, so what was answered before the crash does not depend on timing).
Evaluator: ``/score`` → 1 when output == reference; ``/down`` → 500; ``/slow`` → never in time."""

from __future__ import annotations

import asyncio
import re
import threading
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


class Hold:
    """Off by default. ``after(n)``: the provider answers ``n`` more calls, then holds each call
    until ``release()`` (or ``max_s``)."""

    def __init__(self, max_s: float = 60.0) -> None:
        self.max_s, self._left, self._released = max_s, None, threading.Event()

    def after(self, n: int) -> None:
        self._released.clear()
        self._left = n

    def release(self) -> None:
        self._left = None
        self._released.set()

    async def wait(self) -> None:
        if self._left is None:
            return
        if self._left > 0:
            self._left -= 1
            return
        await asyncio.to_thread(self._released.wait, self.max_s)


def build_provider(calls: Counter, hold: Hold | None = None) -> FastAPI:
    app = FastAPI()
    hold = hold or Hold()

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body = await request.json()
        model, text = body["model"], body["messages"][-1]["content"]
        calls[model] += 1
        calls[(model, text)] += 1  # what was asked, for tests that must tell calls apart
        await hold.wait()
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
