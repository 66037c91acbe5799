"""What every scorer returns, and the datapoint it scores."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Datapoint:
    """One row of the evaluated dataset: what the models are asked and, if the row has one, the
    expected answer."""

    index: int
    messages: list[dict[str, str]]
    reference: str | None = None

    @property
    def input_text(self) -> str:
        return self.messages[-1]["content"] if self.messages else ""


@dataclass
class ScoreResult:
    """``score`` None means unscored: ``status`` says why (``unscored``: the scorer could not
    decide, e.g. an unparseable judge reply, kept in ``raw``; ``error``: the scorer failed after its
    retries; ``skipped``: the scorer cannot run here, e.g. no embedding model installed)."""

    score: float | None
    reason: str = ""
    status: str = "scored"
    raw: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def unscored(cls, reason: str, raw: str | None = None, status: str = "unscored") -> ScoreResult:
        return cls(None, reason, status, raw)
