"""Rows of a dataset snapshot → datapoints: the messages to send and the reference, if any.

prompt_completion: the prompt as one user turn, the completion as reference. chat: the turns before
the last assistant turn, whose content is the reference (no assistant turn: all turns, no
reference). text: the text as the prompt, no reference. preference: the prompt; ``chosen`` is the
reference."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from studio.data.snapshots import SnapshotRef, read_table, resolve_snapshot, split_indices
from studio.evals.scorers.base import Datapoint
from studio.evals.spec import EvalSpec


def row_to_datapoint(i: int, row: dict[str, Any], system_prompt: str | None = None) -> Datapoint:
    if row.get("messages"):
        msgs = [{"role": m["role"], "content": m["content"]} for m in row["messages"]]
        last = max((j for j, m in enumerate(msgs) if m["role"] == "assistant"), default=None)
        dp = (Datapoint(i, msgs[:last], msgs[last]["content"]) if last is not None and last > 0
              else Datapoint(i, msgs, None))
    elif row.get("prompt") is not None:
        dp = Datapoint(i, [{"role": "user", "content": row["prompt"]}],
                       row.get("completion") if row.get("completion") is not None else row.get("chosen"))
    else:
        dp = Datapoint(i, [{"role": "user", "content": str(row.get("text", ""))}], None)
    if system_prompt:
        dp.messages = [{"role": "system", "content": system_prompt}, *dp.messages]
    return dp


def load_datapoints(session: Session, spec: EvalSpec) -> tuple[SnapshotRef, list[Datapoint]]:
    ref = resolve_snapshot(session, spec.dataset)
    table = read_table(ref.snapshot.uri)
    # Indices, not load_split: an empty split (validation with ratio 0) must give 0 rows, not an error.
    idx = split_indices(table.num_rows, spec.split, spec.validation_ratio, spec.seed)
    rows = table.take(idx).to_pylist() if idx else []
    rows = rows[: spec.limit] if spec.limit else rows
    return ref, [row_to_datapoint(i, r, spec.system_prompt) for i, r in enumerate(rows)]
