"""Query parameters shared by the list routes, bounded so that no number reaches the database
that it cannot hold (an offset past 2**63 was a 500 on SQLite and on PostgreSQL)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Query

MAX_OFFSET = 10**9

Offset = Annotated[int, Query(ge=0, le=MAX_OFFSET, description="Items to skip (at most 10^9).")]
