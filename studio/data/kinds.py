"""The row kinds a snapshot can hold, and how one raw row is checked and normalized.

========== ======================================= =========================
kind       normalized columns                       used by
========== ======================================= =========================
chat       messages: [{role, content}, ...]         SFT, eval
prompt_completion prompt, completion                SFT, eval, GRPO (prompt)
preference prompt, chosen, rejected                 DPO
text       text                                     CPT
document   source, text                             synthetic generation
========== ======================================= =========================

A ``document`` row is one whole source file's extracted text (Markdown, HTML, PDF, plain text),
named by its path relative to the ingested root; synthesis chunks it.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

import pyarrow as pa


class DatasetKind(StrEnum):
    chat = "chat"
    prompt_completion = "prompt_completion"
    preference = "preference"
    text = "text"
    document = "document"


COLUMNS: dict[DatasetKind, tuple[str, ...]] = {
    DatasetKind.chat: ("messages",),
    DatasetKind.prompt_completion: ("prompt", "completion"),
    DatasetKind.preference: ("prompt", "chosen", "rejected"),
    DatasetKind.text: ("text",),
    DatasetKind.document: ("source", "text"),
}

_STR = pa.string()
SCHEMAS: dict[DatasetKind, pa.Schema] = {
    DatasetKind.chat: pa.schema(
        [("messages", pa.list_(pa.struct([("role", _STR), ("content", _STR)])))]),
    **{k: pa.schema([(c, _STR) for c in cols]) for k, cols in COLUMNS.items() if k != "chat"},
}

ROLES = ("system", "user", "assistant", "tool")


class RowError(ValueError):
    """Why one row was rejected; the ingest report adds the row number."""


def detect_kind(row: dict[str, Any]) -> DatasetKind | None:
    keys = set(row)
    if "messages" in keys:
        return DatasetKind.chat
    if {"chosen", "rejected"} <= keys:
        return DatasetKind.preference
    if "completion" in keys and "prompt" in keys:
        return DatasetKind.prompt_completion
    if {"source", "text"} <= keys:
        return DatasetKind.document
    if "text" in keys:
        return DatasetKind.text
    return None


def _text(row: dict[str, Any], col: str) -> str:
    if col not in row:
        raise RowError(f"missing column {col!r}")
    value = row[col]
    if not isinstance(value, str):
        raise RowError(f"column {col!r} must be a string, got {type(value).__name__}")
    if not value.strip():
        raise RowError(f"column {col!r} is empty")
    return value


def _messages(value: Any, col: str = "messages") -> list[dict[str, str]]:
    if not isinstance(value, list) or not value:
        raise RowError(f"column {col!r} must be a non-empty list of {{role, content}} objects")
    out = []
    for i, m in enumerate(value):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise RowError(f"{col}[{i}] must be an object with 'role' and 'content'")
        if m["role"] not in ROLES:
            raise RowError(f"{col}[{i}] has role {m['role']!r}; use one of {', '.join(ROLES)}")
        if not isinstance(m["content"], str):
            raise RowError(f"{col}[{i}].content must be a string")
        out.append({"role": m["role"], "content": m["content"]})
    return out


def normalize_row(row: Any, kind: DatasetKind) -> dict[str, Any]:
    """Return the row reduced to ``COLUMNS[kind]`` or raise ``RowError`` with the reason."""
    if not isinstance(row, dict):
        raise RowError(f"a row must be a JSON object, got {type(row).__name__}")
    if kind is DatasetKind.chat:
        if "messages" not in row:
            raise RowError(f"missing column 'messages' (this looks like a {_kind_name(row)} row)")
        return {"messages": _messages(row["messages"])}
    missing = [c for c in COLUMNS[kind] if c not in row]
    if missing:
        raise RowError(
            f"missing column {missing[0]!r} for a {kind.value} dataset"
            + (f" (this looks like a {_kind_name(row)} row)" if detect_kind(row) else "")
        )
    return {c: _text(row, c) for c in COLUMNS[kind]}


def _kind_name(row: dict[str, Any]) -> str:
    k = detect_kind(row)
    return k.value if k else "unknown"


def row_text(row: dict[str, Any], kind: DatasetKind | str) -> str:
    """All the text of a normalized row, for deduplication, length bounds and token counts."""
    kind = DatasetKind(kind)
    if kind is DatasetKind.chat:
        return "\n".join(m["content"] for m in row["messages"])
    if kind is DatasetKind.document:
        return row["text"]
    return "\n".join(row[c] for c in COLUMNS[kind])
