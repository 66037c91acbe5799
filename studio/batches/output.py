"""A batch's results: one JSONL line per input line, in OpenAI's shapes, kept in ``batch_results``
while the batch runs and written out as its output and error files when it ends.

Output file (``output_file_id``), a line that was answered::

    {"id": "batch_req_…", "custom_id": "r1", "response": {"status_code": 200, "request_id": "…",
     "body": {…the chat.completion or text_completion…}}, "error": null}

Error file (``error_file_id``): a line the model call refused or failed (the gateway's answer:
unknown model 404, context exceeded 400, budget 429, upstream 5xx…) keeps that shape with its
status and error body; a line that never ran (invalid, duplicate ``custom_id``, expired) has
``"response": null, "error": {"code": …, "message": …}``. Both files list lines in input order.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from studio.batches.files import OUTPUT_PURPOSE, add_file
from studio.store.artifacts import ArtifactStore
from studio.store.models import Batch, BatchResult, utcnow


def line_id(batch_id: str, line: int) -> str:
    """The same id for the same line in every attempt."""
    return "batch_req_" + hashlib.sha256(f"{batch_id}:{line}".encode()).hexdigest()[:24]


@dataclass(frozen=True)
class LineResult:
    line: int
    ok: bool
    record: str  # the JSONL line, without its newline
    prompt_tokens: int = 0
    completion_tokens: int = 0


def answered(batch_id: str, line: int, custom_id: str, body: dict[str, Any]) -> LineResult:
    usage = body.get("usage") or {}
    record = {"id": line_id(batch_id, line), "custom_id": custom_id,
              "response": {"status_code": 200, "request_id": str(body.get("id") or line_id(batch_id, line)),
                           "body": body}, "error": None}
    return LineResult(line, True, json.dumps(record, ensure_ascii=False),
                      int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0))


def refused_by_model(batch_id: str, line: int, custom_id: str, status: int,
                     body: dict[str, Any]) -> LineResult:
    record = {"id": line_id(batch_id, line), "custom_id": custom_id,
              "response": {"status_code": status, "request_id": line_id(batch_id, line),
                           "body": body}, "error": None}
    return LineResult(line, False, json.dumps(record, ensure_ascii=False))


def not_run(batch_id: str, line: int, custom_id: str | None, code: str, message: str) -> LineResult:
    record = {"id": line_id(batch_id, line), "custom_id": custom_id, "response": None,
              "error": {"code": code, "message": message}}
    return LineResult(line, False, json.dumps(record, ensure_ascii=False))


def save(session: Session, batch_id: str, results: list[LineResult]) -> None:
    """Store finished lines and add them to the batch's counts, in the caller's transaction."""
    if not results:
        return
    session.add_all(BatchResult(batch_id=batch_id, line=r.line, ok=r.ok, record=r.record,
                                prompt_tokens=r.prompt_tokens, completion_tokens=r.completion_tokens)
                    for r in results)
    ok = sum(1 for r in results if r.ok)
    session.execute(update(Batch).where(Batch.id == batch_id).values(
        completed=Batch.completed + ok, failed=Batch.failed + (len(results) - ok),
        prompt_tokens=Batch.prompt_tokens + sum(r.prompt_tokens for r in results),
        completion_tokens=Batch.completion_tokens + sum(r.completion_tokens for r in results))
        .execution_options(synchronize_session=False))
    session.flush()


def done_lines(session: Session, batch_id: str) -> set[int]:
    return set(session.scalars(select(BatchResult.line).where(BatchResult.batch_id == batch_id)))


def recount(session: Session, batch: Batch) -> None:
    """The batch's counts from its stored lines (a resumed attempt starts from them)."""
    rows = session.execute(
        select(BatchResult.ok, func.count(), func.coalesce(func.sum(BatchResult.prompt_tokens), 0),
               func.coalesce(func.sum(BatchResult.completion_tokens), 0))
        .where(BatchResult.batch_id == batch.id).group_by(BatchResult.ok)).all()
    counts = {bool(ok): (n, p, c) for ok, n, p, c in rows}
    batch.completed = counts.get(True, (0, 0, 0))[0]
    batch.failed = counts.get(False, (0, 0, 0))[0]
    batch.prompt_tokens = sum(v[1] for v in counts.values())
    batch.completion_tokens = sum(v[2] for v in counts.values())


def write_files(session: Session, store: ArtifactStore, batch: Batch, status: str) -> None:
    """End ``batch`` as ``status`` (completed, expired, cancelled): its stored lines become its
    output and error files (a file only when it has lines), owned by the batch's owner; the
    stored lines are dropped. One transaction: the caller's."""
    rows = session.execute(select(BatchResult.ok, BatchResult.record)
                           .where(BatchResult.batch_id == batch.id).order_by(BatchResult.line)).all()
    for ok, suffix, attr in ((True, "output", "output_file_id"), (False, "error", "error_file_id")):
        lines = [record for good, record in rows if bool(good) == ok]
        if lines and getattr(batch, attr) is None:
            data = ("\n".join(lines) + "\n").encode()
            row = add_file(session, store, data, f"{batch.id}_{suffix}.jsonl", OUTPUT_PURPOSE,
                           batch.owner_key_id)
            setattr(batch, attr, row.id)
    recount(session, batch)
    now = utcnow()
    batch.status = status
    batch.finalizing_at = batch.finalizing_at or now
    setattr(batch, f"{status}_at", now)
    session.execute(delete(BatchResult).where(BatchResult.batch_id == batch.id))
    session.flush()
