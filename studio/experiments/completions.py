"""The completion log and feedback on it.

The Router records every answered /v1 request (``CompletionRecorder``): batched inserts from a
background task, off the request path, so logging never slows or fails a request. The same recorder
writes the requests that were routed but failed (``request_failures``: a canary's error guardrail
counts them per arm) and the shadow phase's mirrored pairs (``shadow_pairs``). A client then
sends ``POST /v1/feedback`` with the response's ``id``: a rating, and/or "completion X is better
than this one" (``preferred_completion_id``; both must answer the same prompt), and a comment.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

from pydantic import Field, model_validator
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from studio.access import owns, principal_id
from studio.errors import NotFound, StudioError
from studio.recipes import Spec
from studio.store.log_models import RequestFailure, ShadowPair
from studio.store.models import ApiKey, Completion, Feedback

logger = logging.getLogger("ray.serve")
FLUSH_EVERY_S = 0.5
BATCH_ROWS = 256
MAX_PENDING = 20_000  # beyond this (database down) new records are dropped, and counted


def prompt_text(endpoint: str, prompt: Any) -> str:
    """The prompt as one string, the form preference rows and DPO use: a lone user message is its
    content (DPO wraps it in a user turn again); a longer conversation is "role: content" lines."""
    if endpoint == "chat" and isinstance(prompt, list):
        turns = [m for m in prompt if isinstance(m, dict)]
        users = [m for m in turns if m.get("role") == "user"]
        if len(turns) == 1 and len(users) == 1:
            return _content(users[0].get("content"))
        return "\n".join(f"{m.get('role')}: {_content(m.get('content'))}" for m in turns)
    if isinstance(prompt, list):
        return "\n".join(str(p) for p in prompt)
    return str(prompt)


def _content(content: Any) -> str:
    if isinstance(content, list):  # OpenAI content parts
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return "" if content is None else str(content)


# What the recorder writes: a row's kind → its table.
TABLES = {"completion": Completion, "failure": RequestFailure, "shadow": ShadowPair}


class CompletionRecorder:
    """Buffers log rows (``kind``: a completion, a failed request, a shadow pair) and writes them
    in batches from a background task."""

    def __init__(self, db_url: str):
        self.db_url = db_url
        self._pending: list[dict[str, Any]] = []
        self._task: asyncio.Task | None = None
        self._write_lock = asyncio.Lock()
        self.written = self.dropped = 0

    def record(self, row: dict[str, Any], kind: str = "completion") -> None:
        if len(self._pending) >= MAX_PENDING:
            self.dropped += 1
            return
        self._pending.append((TABLES[kind], row))
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while self._pending:
            await asyncio.sleep(FLUSH_EVERY_S)
            await self.flush()

    async def flush(self) -> int:
        """Write everything buffered now; returns the rows written."""
        async with self._write_lock:
            written = 0
            while self._pending:
                batch, self._pending = self._pending[:BATCH_ROWS], self._pending[BATCH_ROWS:]
                try:
                    written += await asyncio.to_thread(write_log_rows, self.db_url, batch)
                except Exception as e:  # noqa: BLE001 — the log must never fail serving
                    logger.warning("completion log: %d rows not written (%s)", len(batch), e)
                    self.dropped += len(batch)
            self.written += written
            return written


def write_completions(db_url: str, rows: list[dict[str, Any]]) -> int:
    """Insert completion rows in one transaction; a duplicate id (a retried record) is skipped."""
    return write_log_rows(db_url, [(Completion, r) for r in rows])


def write_log_rows(db_url: str, rows: list[tuple[type, dict[str, Any]]]) -> int:
    """Insert (table, row) pairs in one transaction; a duplicate id (a retried record) is skipped."""
    from studio.store.db import session_scope

    try:
        with session_scope(db_url) as session:
            session.add_all(table(**r) for table, r in rows)
        return len(rows)
    except IntegrityError:
        written = 0
        for table, row in rows:
            try:
                with session_scope(db_url) as session:
                    session.add(table(**row))
                written += 1
            except IntegrityError:
                continue
        return written


class FeedbackSpec(Spec):
    """The body of ``POST /v1/feedback``."""

    completion_id: str = Field(min_length=1, max_length=128,
                               description="The `id` of the /v1 response being judged.")
    rating: float | None = Field(default=None, description="+1 / -1, or any score (higher is better).")
    preferred_completion_id: str | None = Field(
        default=None, max_length=128,
        description="Another response to the same prompt that is better than this one.")
    comment: str | None = Field(default=None, max_length=4096, description="Free text.")

    @model_validator(mode="after")
    def _says_something(self) -> FeedbackSpec:
        if self.rating is None and self.preferred_completion_id is None and not self.comment:
            raise ValueError("feedback needs a rating, a preferred_completion_id or a comment")
        if self.preferred_completion_id == self.completion_id:
            raise ValueError("preferred_completion_id is the completion itself; name another one")
        return self


def get_completion(session: Session, completion_id: str) -> Completion | None:
    return session.get(Completion, completion_id)


def add_feedback(session: Session, spec: FeedbackSpec, key_name: str | None = None,
                 key: ApiKey | None = None) -> Feedback:
    """Record a judgement. With the calling ``key``: only completions that key (or, for a job key,
    its submitter) was answered, unless it is an admin's; another key's completion is "not
    recorded" (404), so neither its existence nor its rating leaks, and no key can steer the
    preference data built from others' traffic."""
    def visible(c: Completion | None) -> Completion | None:
        return c if c is not None and (key is None or owns(key, c.owner_key_id)) else None

    completion = visible(get_completion(session, spec.completion_id))
    if completion is None:
        raise NotFound(f"no completion {spec.completion_id!r} is recorded",
                       "send the `id` of a /v1/chat/completions or /v1/completions response")
    if spec.preferred_completion_id:
        preferred = visible(get_completion(session, spec.preferred_completion_id))
        if preferred is None:
            raise NotFound(f"no completion {spec.preferred_completion_id!r} is recorded "
                           "(preferred_completion_id)",
                           "send the `id` of another /v1 response to the same prompt")
        if preferred.prompt_text != completion.prompt_text:
            raise StudioError(
                f"completions {spec.completion_id!r} and {spec.preferred_completion_id!r} answer "
                "different prompts; a preference compares two answers to one prompt",
                "send preferred_completion_id of a response to the same prompt, or a rating")
    fb = Feedback(completion_id=spec.completion_id, rating=spec.rating,
                  preferred_completion_id=spec.preferred_completion_id, comment=spec.comment,
                  key_name=key_name, owner_key_id=principal_id(key) if key is not None else None)
    session.add(fb)
    session.flush()
    return fb


def feedback_dict(fb: Feedback, completion: Completion) -> dict[str, Any]:
    return {"id": fb.id, "completion_id": fb.completion_id, "rating": fb.rating,
            "preferred_completion_id": fb.preferred_completion_id, "comment": fb.comment,
            "model_version": completion.model_version, "experiment": completion.experiment,
            "arm": completion.arm, "created_at": fb.created_at.isoformat()}


def completion_dict(c: Completion) -> dict[str, Any]:
    return {"id": c.id, "endpoint": c.endpoint, "requested_model": c.requested_model,
            "experiment": c.experiment, "arm": c.arm, "model_version": c.model_version,
            "prompt": c.prompt, "prompt_text": c.prompt_text, "response": c.response,
            "latency_ms": c.latency_ms, "ttft_ms": c.ttft_ms, "output_tokens": c.output_tokens,
            "user": c.user, "created_at": c.created_at.isoformat()}


def recent_completions(session: Session, experiment: str | None = None,
                       limit: int = 50) -> list[Completion]:
    query = select(Completion).order_by(Completion.created_at.desc()).limit(limit)
    if experiment:
        query = query.where(Completion.experiment == experiment)
    return list(session.scalars(query))


def now_ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 3)


class ResponseCapture:
    """Collects what the log needs from an engine answer as it is relayed: a whole JSON body, or
    SSE chunks (``data: {...}``) whose first choice's deltas make up the text."""

    def __init__(self):
        self.id: str | None = None
        self.parts: list[str] = []
        self.output_tokens = 0
        self.usage_tokens: int | None = None
        self.error: dict[str, Any] | None = None

    def add(self, item: Any) -> None:
        if isinstance(item, dict):
            self._body(item)
        elif isinstance(item, str):
            for line in item.splitlines():
                if line.startswith("data: ") and line != "data: [DONE]":
                    try:
                        self._chunk(json.loads(line[6:]))
                    except ValueError:
                        continue

    def _body(self, body: dict[str, Any]) -> None:
        if "error" in body:
            self.error = body["error"] if isinstance(body["error"], dict) else {"code": 500}
            return
        self.id = body.get("id")
        choices = body.get("choices") or [{}]
        first = choices[0]
        self.parts = [(first.get("message") or {}).get("content") or first.get("text") or ""]
        self.usage_tokens = (body.get("usage") or {}).get("completion_tokens")

    def _chunk(self, chunk: dict[str, Any]) -> None:
        if "error" in chunk:
            self.error = chunk["error"] if isinstance(chunk["error"], dict) else {"code": 500}
            return
        self.id = self.id or chunk.get("id")
        for choice in chunk.get("choices") or []:
            piece = (choice.get("delta") or {}).get("content") or choice.get("text") or ""
            if piece:
                self.output_tokens += 1  # vLLM streams one token per chunk and choice
                if choice.get("index", 0) == 0:
                    self.parts.append(piece)
        if chunk.get("usage"):
            self.usage_tokens = chunk["usage"].get("completion_tokens")

    @property
    def text(self) -> str:
        return "".join(self.parts)

    @property
    def tokens(self) -> int:
        return self.usage_tokens if self.usage_tokens is not None else self.output_tokens
