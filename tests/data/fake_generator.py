"""A scripted OpenAI-compatible generator on loopback (the external edge a paid provider would be).

Replies depend on the chunk text in the prompt: ``PROSE`` → a refusal in prose (unparseable),
``FENCED`` → JSON in a code fence after chatter; anything else → a clean JSON reply for the mode
asked (``{"pairs": [...]}`` for QA, a bare list for CoT, a summary object). ``down`` (or
``down_after`` answered calls) makes calls fail with HTTP 500 (the generator down); ``calls`` counts
calls per chunk text and ``formats`` records each call's ``response_format``. With ``width`` > 1
every call is held until ``width`` calls wait, then they go together (a run that cannot keep
``width`` in flight leaves calls held: let go after ``hold_s``, counted in ``stalled``);
``max_in_flight`` is the most calls seen at once. With ``pause_after`` = N the calls after the
first N wait until ``release`` is set (a page can watch a run half done).
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
from collections import Counter

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from tests.loopback import ServerThread


class FakeGenerator:
    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()
        self.formats: list = []  # the response_format of every call
        self.down = False
        self.down_after: int | None = None  # go down after this many answered calls
        self.answered = 0
        self.delay_s = 0.0  # per-reply latency (benchmarks)
        self.width, self.hold_s = 1, 20.0
        self.in_flight = self.max_in_flight = self.stalled = 0
        self.pause_after: int | None = None
        self.release = threading.Event()
        self.entered = 0
        self._waiting: list[asyncio.Event] = []
        app = FastAPI()
        app.post("/chat/completions")(self._chat)
        self._server = ServerThread(app)
        self.port = self._server.port

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FakeGenerator:
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop()

    async def _hold(self) -> None:
        if not await hold_until_width(self._waiting, self.width, self.hold_s):
            self.stalled += 1

    async def _chat(self, request: Request):
        self.entered += 1
        if self.pause_after is not None and self.entered > self.pause_after:
            await asyncio.to_thread(self.release.wait, 120)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.width > 1:
                await self._hold()
            if self.delay_s:
                await asyncio.sleep(self.delay_s)
        finally:
            self.in_flight -= 1
        body = await request.json()
        prompt = body["messages"][-1]["content"]
        text = prompt.split("Text:\n", 1)[-1]
        self.calls[text] += 1
        self.formats.append(body.get("response_format"))
        if self.down or (self.down_after is not None and self.answered >= self.down_after):
            return JSONResponse({"error": {"message": "scripted outage", "type": "server_error"}}, 500)
        self.answered += 1
        topic = " ".join(re.findall(r"[A-Za-z]+", text)[:3]) or "text"
        if "PROSE" in text:
            content = "I'm sorry, I can't write questions about this."
        elif "Summarize" in prompt:
            content = json.dumps({"summary": f"A text about {topic}."})
        elif "reasoning" in prompt:
            content = json.dumps([{"question": f"What is {topic}?", "reasoning": "The text says so.",
                                   "answer": topic}])
        else:
            pairs = [{"question": f"What is {topic}?", "answer": f"It is {topic}."},
                     {"question": f"Which words open the text about {topic}?", "answer": topic}]
            content = json.dumps({"pairs": pairs})  # the structure response_format asks for
            if "FENCED" in text:
                content = f"Here you go!\n```json\n{content}\n```\nHope this helps."
        usage = {"prompt_tokens": len(prompt.split()), "completion_tokens": len(content.split())}
        return {"id": "chatcmpl-fake", "object": "chat.completion", "model": body["model"],
                "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                             "finish_reason": "stop"}],
                "usage": {**usage, "total_tokens": sum(usage.values())},
                "studio_gateway": {"cache_hit": False, "cost_usd": 0.001, "model_group": body["model"],
                                   "deployment": "fake/gen-1", "latency_ms": 1.0}}


async def hold_until_width(waiting: list[asyncio.Event], width: int, hold_s: float) -> bool:
    """Hold a call until ``width`` calls wait in ``waiting``, then let them go together. False when
    it was let go after ``hold_s`` instead (the caller never had ``width`` calls in flight)."""
    gate = asyncio.Event()
    waiting.append(gate)
    if len(waiting) >= width:
        for g in waiting:
            g.set()
        waiting.clear()
    try:
        await asyncio.wait_for(gate.wait(), hold_s)
        return True
    except asyncio.TimeoutError:
        waiting.remove(gate)
        return False
