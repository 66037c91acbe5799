"""Feedback of an experiment → a preference dataset snapshot (prompt, chosen, rejected) for DPO.

Pairs come from two places, for completions served under the alias:

* explicit: feedback on completion A with ``preferred_completion_id`` B → chosen B, rejected A;
* ratings: for one prompt, every response whose mean rating is > 0 against every response whose
  mean rating is < 0.

``preference_pairs`` is the same for any set of completions, up to a feedback cutoff: a loop's
snapshot (``studio.loops.snapshot``) uses it on a served name's traffic. Rows are de-duplicated and stored through the dataset snapshot code (kind ``preference``, the
columns ``studio.train.dpo`` reads), so ``studio train submit configs/train/dpo_reverse_tiny.yaml
data.dataset=NAME`` trains on them.
"""

from __future__ import annotations

import json
import tempfile
from collections import defaultdict
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.orm import Session, aliased

from studio.errors import StudioError
from studio.experiments.ab import get_experiment
from studio.settings import StudioSettings
from studio.store.models import Completion, Feedback


def preference_rows(session: Session, alias: str) -> tuple[list[dict[str, str]], dict[str, int]]:
    """The (prompt, chosen, rejected) rows of an experiment, and how they were found."""
    get_experiment(session, alias)
    return preference_pairs(session, lambda c: c.experiment == alias)


def mean_ratings(session: Session, scope: Callable[[Any], Any], cutoff: datetime | None = None,
                 ) -> list[tuple[str, str, float]]:
    """(prompt, response, mean rating) of each rated completion ``scope(Completion)`` selects, in
    the completions' order, counting only ratings given at or before ``cutoff`` when one is set."""
    rated_q = (
        select(Completion.id, Completion.prompt_text, Completion.response, Feedback.rating)
        .join(Feedback, Feedback.completion_id == Completion.id)
        .where(scope(Completion), Feedback.rating.is_not(None))
        .order_by(Completion.created_at, Completion.id, Feedback.id))
    if cutoff is not None:
        rated_q = rated_q.where(Feedback.created_at <= cutoff)
    scores: dict[str, list[float]] = defaultdict(list)
    info: dict[str, tuple[str, str]] = {}
    for cid, prompt, response, rating in session.execute(rated_q).all():
        scores[cid].append(rating)
        info[cid] = (prompt, response)
    return [(*info[cid], sum(values) / len(values)) for cid, values in scores.items()]


def preference_pairs(session: Session, scope: Callable[[Any], Any], cutoff: datetime | None = None,
                     ) -> tuple[list[dict[str, str]], dict[str, int]]:
    """The de-duplicated (prompt, chosen, rejected) rows from feedback on the completions
    ``scope(Completion)`` selects (an experiment's, or a served name's for a loop), counting only
    feedback given at or before ``cutoff`` when one is set; and how they were found."""
    rows: list[dict[str, str]] = []
    counts = {"explicit": 0, "from_ratings": 0}

    rejected, chosen = aliased(Completion), aliased(Completion)
    explicit_q = (
        select(rejected.prompt_text, chosen.response, rejected.response)
        .select_from(Feedback)
        .join(rejected, rejected.id == Feedback.completion_id)
        .join(chosen, chosen.id == Feedback.preferred_completion_id)
        .where(or_(scope(rejected), scope(chosen)))
        .order_by(Feedback.id))
    if cutoff is not None:
        explicit_q = explicit_q.where(Feedback.created_at <= cutoff)
    for prompt, good, bad in session.execute(explicit_q).all():
        rows.append({"prompt": prompt, "chosen": good, "rejected": bad})
        counts["explicit"] += 1

    by_prompt: dict[str, dict[str, list[str]]] = defaultdict(lambda: {"pos": [], "neg": []})
    for prompt, response, mean in mean_ratings(session, scope, cutoff):
        if mean > 0:
            by_prompt[prompt]["pos"].append(response)
        elif mean < 0:
            by_prompt[prompt]["neg"].append(response)
    for prompt, sides in by_prompt.items():
        for good in sides["pos"]:
            for bad in sides["neg"]:
                rows.append({"prompt": prompt, "chosen": good, "rejected": bad})
                counts["from_ratings"] += 1

    unique, seen = [], set()
    for row in rows:
        key = (row["prompt"], row["chosen"], row["rejected"])
        # A pair whose answers are the same text teaches nothing; empty text is not a valid row.
        if key in seen or row["chosen"] == row["rejected"] or not all(s.strip() for s in key):
            continue
        seen.add(key)
        unique.append(row)
    counts["rows"] = len(unique)
    counts["duplicates"] = len(rows) - len(unique)
    return unique, counts


def export_preferences(settings: StudioSettings, alias: str, name: str, owner: Any = None) -> dict[str, Any]:
    """Store the experiment's preference rows as dataset ``name`` (a new version of it), added by
    ``owner`` (the calling key; None: the operator in-process), who must own the name or claim it."""
    from studio.data.ingest import ingest_file
    from studio.store.db import session_scope

    with session_scope(settings.db_url) as session:
        rows, counts = preference_rows(session, alias)
        n_feedback = session.scalars(
            select(Feedback.id).join(Completion, Completion.id == Feedback.completion_id)
            .where(Completion.experiment == alias)).all()
    if not rows:
        raise StudioError(
            f"experiment {alias!r} has no rated pairs to export ({len(n_feedback)} feedback "
            "records on its completions); nothing was stored",
            "send POST /v1/feedback with preferred_completion_id, or rate two responses to one "
            "prompt +1 and -1, then export again")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{alias}-preferences.jsonl"
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        report = ingest_file(path, name, settings, kind="preference",
                             source=f"experiment:{alias} feedback", owner=owner)
    return {"name": report.name, "version": report.version, "ref": f"{report.name}@{report.version}",
            "snapshot_id": report.snapshot_id, "kind": report.kind, "rows": report.row_count,
            "rejected_rows": report.rejected_count, "created": report.created, **counts}
