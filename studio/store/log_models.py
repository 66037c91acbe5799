"""The serving path's logs beside the completion log (``completions``): requests that were routed but
failed (``request_failures``), and the shadow phase's pairs of a live prompt's champion answer and
the candidate's mirrored answer (``shadow_pairs``). Both written by the Router's recorder
(``studio.experiments.completions.CompletionRecorder``), off the request path. Registered on
``Base`` by ``studio.store.models``, which imports this module last."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Float, ForeignKey, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from studio.store.base import Base, UTCDateTime, utcnow


class RequestFailure(Base):
    """A /v1 request the Router routed to a version that failed instead of answering (the engine's
    error body, a replica gone, an adapter that cannot load): counted per arm like a completion, so
    a canary's error guardrail and its sample-ratio check see it (``studio.loops.looks``)."""

    __tablename__ = "request_failures"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    endpoint: Mapped[str] = mapped_column(String(16))  # chat | completions
    requested_model: Mapped[str] = mapped_column(String(256))
    experiment: Mapped[str | None] = mapped_column(String(128), index=True)  # alias, if any
    arm: Mapped[str | None] = mapped_column(String(256))
    model_version: Mapped[str] = mapped_column(String(256), index=True)  # base id or name@N routed to
    error_code: Mapped[int] = mapped_column(Integer)  # the HTTP status the caller got
    error: Mapped[str] = mapped_column(String(1024), default="")  # the error's message, cut
    latency_ms: Mapped[float] = mapped_column(Float)
    user: Mapped[str | None] = mapped_column(String(256))
    owner_key_id: Mapped[int | None] = mapped_column(Integer, index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)


class ShadowPair(Base):
    """A live prompt of a served name in ``SHADOW``: the answer its caller got (the champion's) and
    the candidate's answer to the same request, mirrored in the background and never shown; then
    the judge's verdict for the candidate (``win`` | ``loss`` | ``tie`` | ``unscored``)."""

    __tablename__ = "shadow_pairs"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    generation_id: Mapped[int] = mapped_column(ForeignKey("loop_generations.id"), index=True)
    endpoint: Mapped[str] = mapped_column(String(16))
    champion: Mapped[str] = mapped_column(String(256))  # name@N that answered the caller
    candidate: Mapped[str] = mapped_column(String(256))  # name@N the request was mirrored to
    completion_id: Mapped[str | None] = mapped_column(String(128))  # the caller's answer's id
    prompt: Mapped[Any] = mapped_column(JSON)
    prompt_text: Mapped[str] = mapped_column(Text)
    champion_response: Mapped[str] = mapped_column(Text)
    candidate_response: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    verdict: Mapped[str | None] = mapped_column(String(16), index=True)  # None until judged
    judge_detail: Mapped[str | None] = mapped_column(Text)  # the judge's reason and replies
    judged_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
