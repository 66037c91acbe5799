"""A scripted OpenAI-compatible provider on loopback — the one fake the gateway tests use, standing
in for a paid provider at the external edge. What it does depends on the requested model:
``broken*`` → HTTP 500, ``hang*`` → never answers in time, ``qa*`` → a JSON list of one
question/answer pair (what a synthetic-data generator returns), ``score*`` → "Score: 7" (a judge),
``prefer*`` → a pairwise judge that picks the answer holding "GOOD" ("Winner: A" when answer A holds
it, else "Winner: B" when B does, else a tie: two good answers make it favour position A), anything else → a normal answer that echoes the model and the last message. ``calls`` counts
requests per model; ``received`` keeps each request's model, JSON body and headers (what the
gateway sent out)."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from tests.loopback import ServerThread


class FakeProvider:
    def __init__(self):
        self.calls: Counter[str] = Counter()
        self.auth: list[str | None] = []
        self.received: list[tuple[str, dict, dict[str, str]]] = []
        self.app = self._build()
        self._server = ServerThread(self.app)
        self.port = self._server.port

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> FakeProvider:
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop()

    def _build(self) -> FastAPI:
        app = FastAPI()

        async def answer(request: Request, kind: str):
            body = await request.json()
            model = body["model"]
            self.calls[model] += 1
            self.auth.append(request.headers.get("authorization"))
            self.received.append((model, body, dict(request.headers)))
            if model.startswith("broken"):
                return JSONResponse({"error": {"message": "scripted failure", "type": "server_error",
                                               "code": 500}}, status_code=500)
            if model.startswith("hang"):
                await asyncio.sleep(8)
            usage = {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}
            if kind == "chat":
                text = f"{model} says: {body['messages'][-1]['content']}"
                if model.startswith("qa"):
                    text = '[{"question": "What rises twice a day?", "answer": "The tide."}]'
                elif model.startswith("score"):
                    text = "Score: 7"
                elif model.startswith("prefer"):
                    asked = body["messages"][-1]["content"]
                    a, _, b = asked.partition("Answer A:")[2].partition("Answer B:")
                    text = "Winner: A" if "GOOD" in a else "Winner: B" if "GOOD" in b else "Winner: tie"
                return {"id": f"chatcmpl-{self.calls[model]}", "object": "chat.completion",
                        "created": int(time.time()), "model": model, "usage": usage,
                        "choices": [{"index": 0, "finish_reason": "stop",
                                     "message": {"role": "assistant", "content": text}}]}
            return {"id": f"cmpl-{self.calls[model]}", "object": "text_completion",
                    "created": int(time.time()), "model": model, "usage": usage,
                    "choices": [{"index": 0, "finish_reason": "stop", "logprobs": None,
                                 "text": f"{model} completes: {body['prompt']}"}]}

        @app.post("/v1/chat/completions")
        async def chat(request: Request):
            return await answer(request, "chat")

        @app.post("/v1/completions")
        async def completions(request: Request):
            return await answer(request, "completions")

        return app
