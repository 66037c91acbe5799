"""Usage rows: one per gateway call, written off the response path; and their aggregation.

:class:`UsageWriter` queues rows and a daemon thread inserts them in batches (every
``flush_interval_s`` or ``batch_size`` rows), so a call pays for a ``queue.put``, not a DB commit.
:func:`aggregate_usage` is the query behind ``GET /api/usage`` and ``studio usage``.
"""

from __future__ import annotations

import logging
import queue
import threading
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Integer, String, cast, func, select
from sqlalchemy.orm import Session

from studio.errors import StudioError
from studio.store.models import ApiKey, UsageRecord, utcnow

logger = logging.getLogger("studio.gateway")
GROUP_BY = ("service", "model", "key", "day", "job", "deployment")
_LIMITS = {name: UsageRecord.__table__.c[name].type.length
           for name in ("key_name", "service", "job_id", "endpoint", "model_group", "deployment",
                        "error")}


@dataclass
class UsageRow:
    service: str
    endpoint: str
    model_group: str
    latency_ms: float
    key_id: int | None = None
    key_name: str | None = None
    job_id: str | None = None
    deployment: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    cache_hit: bool = False
    status: int = 200
    error: str | None = None
    at: datetime = field(default_factory=utcnow)


class UsageWriter:
    def __init__(self, db_url: str, flush_interval_s: float = 0.5, batch_size: int = 200):
        self.db_url = db_url
        self._q: queue.Queue[UsageRow | threading.Event | None] = queue.Queue()
        self._interval = flush_interval_s
        self._batch = batch_size
        self._pending_cost: dict[int, float] = {}  # key_id → cost queued but not yet written
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="usage-writer", daemon=True)
        self._thread.start()

    def record(self, row: UsageRow) -> None:
        # Caller-chosen labels (service, job, model) are cut to their columns: one overlong value
        # must not make PostgreSQL refuse the whole batch it is written with.
        for name, size in _LIMITS.items():
            value = getattr(row, name)
            if isinstance(value, str) and len(value) > size:
                setattr(row, name, value[:size])
        if row.key_id is not None and row.cost_usd:
            with self._lock:
                self._pending_cost[row.key_id] = self._pending_cost.get(row.key_id, 0) + row.cost_usd
        self._q.put(row)

    def pending_cost(self, key_id: int) -> float:
        with self._lock:
            return self._pending_cost.get(key_id, 0.0)

    def flush(self, timeout_s: float = 10.0) -> bool:
        """Block until every row recorded so far is written; False if that took over timeout_s."""
        done = threading.Event()
        self._q.put(done)
        return done.wait(timeout_s)

    def _run(self) -> None:
        stop = False
        while not stop:
            rows: list[UsageRow] = []
            flushed: list[threading.Event] = []
            try:
                item = self._q.get(timeout=self._interval)
                while True:
                    if item is None:
                        stop = True
                        break
                    if isinstance(item, threading.Event):
                        flushed.append(item)
                    else:
                        rows.append(item)
                    if len(rows) >= self._batch:
                        break
                    item = self._q.get_nowait()
            except queue.Empty:
                pass
            if rows:
                self._write(rows)
            for done in flushed:
                done.set()

    def _write(self, rows: list[UsageRow]) -> None:
        from studio.store.db import session_scope

        try:
            with session_scope(self.db_url) as s:
                s.add_all([UsageRecord(**r.__dict__) for r in rows])
        except Exception:  # noqa: BLE001 — a lost usage batch must not kill the writer thread
            logger.exception("could not write %d usage rows", len(rows))
        with self._lock:
            for r in rows:
                if r.key_id is not None and r.cost_usd:
                    self._pending_cost[r.key_id] = self._pending_cost.get(r.key_id, 0) - r.cost_usd

    def close(self, timeout_s: float = 10.0) -> None:
        """Write what is queued and stop."""
        self._q.put(None)
        self._thread.join(timeout_s)


def key_spent_usd(session: Session, key_id: int) -> float:
    """What a key's budget has paid for: its own calls and those of the job keys derived from it.
    A job key's budget is its submitter's, so for a job key it is the submitter's total too."""
    root = session.scalar(select(func.coalesce(ApiKey.parent_id, ApiKey.id))
                          .where(ApiKey.id == key_id)) or key_id
    family = select(ApiKey.id).where(ApiKey.parent_id == root)
    total = session.scalar(select(func.coalesce(func.sum(UsageRecord.cost_usd), 0.0))
                           .where(UsageRecord.key_id.in_([key_id, root])
                                  | UsageRecord.key_id.in_(family)))
    return float(total or 0.0)


def aggregate_usage(session: Session, group_by: list[str] | tuple[str, ...] = ("service", "model"),
                    *, since: datetime | None = None, until: datetime | None = None,
                    service: str | None = None, model: str | None = None,
                    key: str | None = None, job: str | None = None) -> list[dict[str, Any]]:
    """Calls, tokens, cost, cache hits, errors and mean latency per group, biggest cost first."""
    unknown = [g for g in group_by if g not in GROUP_BY]
    if unknown:
        raise StudioError(f"cannot group usage by {', '.join(unknown)}",
                          f"group by any of: {', '.join(GROUP_BY)}")
    columns = {"service": UsageRecord.service, "model": UsageRecord.model_group,
               "key": UsageRecord.key_name, "job": UsageRecord.job_id,
               "deployment": UsageRecord.deployment,
               # date() exists on SQLite (text 'YYYY-MM-DD' of the stored UTC time) and
               # PostgreSQL (a date; UTC in the default session time zone); read both as text.
               "day": func.date(UsageRecord.at, type_=String())}
    dims = [columns[g].label(g) for g in group_by]
    stmt = select(
        *dims,
        func.count(UsageRecord.id).label("calls"),
        func.coalesce(func.sum(UsageRecord.prompt_tokens), 0).label("prompt_tokens"),
        func.coalesce(func.sum(UsageRecord.completion_tokens), 0).label("completion_tokens"),
        func.coalesce(func.sum(UsageRecord.cost_usd), 0.0).label("cost_usd"),
        func.sum(cast(UsageRecord.cache_hit, Integer)).label("cache_hits"),
        func.sum(cast(UsageRecord.status >= 400, Integer)).label("errors"),
        func.avg(UsageRecord.latency_ms).label("mean_latency_ms"),
    )
    filters = {UsageRecord.service: service, UsageRecord.model_group: model,
               UsageRecord.key_name: key, UsageRecord.job_id: job}
    for col, value in filters.items():
        if value is not None:
            stmt = stmt.where(col == value)
    if since is not None:
        stmt = stmt.where(UsageRecord.at >= since)
    if until is not None:
        stmt = stmt.where(UsageRecord.at < until)
    if dims:
        stmt = stmt.group_by(*[columns[g] for g in group_by])
    out = []
    for row in session.execute(stmt).mappings():
        item = dict(row)
        if "day" in item and item["day"] is not None:
            item["day"] = str(item["day"])[:10]
        for k in ("calls", "prompt_tokens", "completion_tokens", "cache_hits", "errors"):
            item[k] = int(item[k] or 0)
        item["cost_usd"] = float(item["cost_usd"] or 0.0)
        item["mean_latency_ms"] = round(float(item["mean_latency_ms"] or 0.0), 3)
        out.append(item)
    if out and not out[0]["calls"]:
        return []  # no group_by and no rows: one all-zero row is noise
    out.sort(key=lambda r: (-r["cost_usd"], -r["calls"]))
    return out

