"""A scripted OpenAI-compatible upstream for the batch runner's tests: the external edge (a paid
provider) behind a real gateway. By the requested model: ``slow*`` answers after ``delay_s``,
``ctx*`` refuses like an engine whose context is exceeded (400), anything else echoes the last
message at once. ``asked`` lists the last message of every call, in arrival order. With
``hold_after`` set, every call after that many waits until ``released`` is set (calls held in
flight, for the cancel test)."""

from __future__ import annotations

import asyncio
import threading
import time

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from tests.loopback import ServerThread


class Upstream:
    def __init__(self, delay_s: float = 0.1):
        self.delay_s = delay_s
        self.asked: list[str] = []
        self.hold_after: int | None = None
        self.released = threading.Event()
        self._server = ServerThread(self._build())

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self._server.port}/v1"

    def start(self) -> Upstream:
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop()

    def _build(self) -> FastAPI:
        app = FastAPI()

        async def answer(request: Request, kind: str):
            body = await request.json()
            model = body["model"]
            text = body["messages"][-1]["content"] if kind == "chat" else body["prompt"]
            text = text if isinstance(text, str) else str(text)
            if model.startswith("ctx"):
                return JSONResponse({"error": {
                    "message": "This model's maximum context length is 32 tokens. However, you "
                    "requested 900 tokens.", "type": "BadRequestError", "code": 400}}, status_code=400)
            self.asked.append(text)
            if self.hold_after is not None and len(self.asked) > self.hold_after:
                while not self.released.is_set():
                    await asyncio.sleep(0.02)
            if model.startswith("slow"):
                await asyncio.sleep(self.delay_s)
            usage = {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}
            common = {"id": f"x-{len(self.asked)}", "created": int(time.time()), "model": model,
                      "usage": usage}
            if kind == "chat":
                return {**common, "object": "chat.completion", "choices": [{
                    "index": 0, "finish_reason": "stop",
                    "message": {"role": "assistant", "content": f"echo: {text}"}}]}
            return {**common, "object": "text_completion", "choices": [{
                "index": 0, "finish_reason": "stop", "logprobs": None, "text": f"echo: {text}"}]}

        @app.post("/v1/chat/completions")
        async def chat(request: Request):
            return await answer(request, "chat")

        @app.post("/v1/completions")
        async def completions(request: Request):
            return await answer(request, "completions")

        return app
