"""A generation's training data: an immutable snapshot of its served name's feedback up to a cutoff
(docs/loops.md, "The snapshot"), in the rows its training method trains on.

For a DPO recipe the rows are preference pairs, the preference export's
(``studio.experiments.export.preference_pairs``: explicit "B is better than A" feedback, and +/−
rated answers to one prompt paired, de-duplicated); for an SFT recipe they are the thumbs-up
answers (``thumbs_up_answers``: each answer whose mean rating is above 0, or that a person preferred
to another, as prompt/completion rows, de-duplicated). Either over the completions any version of
the served name answered, counting only feedback given at or before the cutoff; with
``train.replay_share`` > 0, rows of the champion's own training snapshot (when it holds rows of the
same kind) are mixed back in against forgetting (``replay_rows``). Rows whose prompt is in the
golden eval set (the gate's dataset) or among its must-pass items are dropped with that reason, so
the gate never scores a prompt the candidate was trained on. The rows are stored with the dataset
snapshot writer (content-addressed, with lineage) as a new version of ``<loop>-preferences`` (DPO) or
``<loop>-answers`` (SFT); the generation records the cutoff first and the snapshot id after, so a
retry after a crash takes the same cutoff and finds the same snapshot.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from datetime import datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from studio.data.kinds import COLUMNS, DatasetKind
from studio.data.snapshots import read_table, resolve_snapshot
from studio.data.writer import Lineage, SnapshotWriter
from studio.errors import StudioError
from studio.registry.versions import get_version
from studio.experiments.completions import prompt_text
from studio.experiments.export import mean_ratings, preference_pairs
from studio.loops.spec import LoopSpec
from studio.loops.triggers import served_by
from studio.settings import StudioSettings
from studio.store.db import session_scope
from studio.store.loop_models import Loop, LoopGeneration
from studio.store.models import Completion, DatasetSnapshot, Feedback, PromotionGate


def golden_dataset(session: Session, spec: LoopSpec) -> str | None:
    """The gate's dataset: the loop's ``gate.dataset``, else the served name's promotion gate."""
    if spec.gate.dataset:
        return spec.gate.dataset
    gate = session.get(PromotionGate, spec.served_name)
    return gate.dataset if gate is not None else None


def golden_prompts(session: Session, ref: str) -> set[str]:
    """Every prompt of an eval dataset, flattened as the completion log flattens a request (a chat
    row's trailing assistant turns are its expected answer, not its prompt)."""
    snap = resolve_snapshot(session, ref).snapshot
    out = set()
    for row in read_table(snap.uri).to_pylist():
        if snap.kind == DatasetKind.chat.value:
            messages = list(row["messages"])
            while messages and messages[-1].get("role") == "assistant":
                messages.pop()
            out.add(prompt_text("chat", messages).strip())
        elif "prompt" in row:
            out.add(str(row["prompt"]).strip())
    return out


def training_method(gen: LoopGeneration) -> str:
    """The training method of the recipe the generation froze (``dpo`` when it froze none)."""
    return (gen.config.get("train") or {}).get("method") or "dpo"


def snapshot_kind(method: str) -> DatasetKind:
    """What a generation of a loop training with ``method`` snapshots: thumbs-up answers for SFT,
    preference pairs for DPO."""
    return DatasetKind.prompt_completion if method == "sft" else DatasetKind.preference


def dataset_name(loop: Loop, kind: DatasetKind = DatasetKind.preference) -> str:
    return f"{loop.name}-{'answers' if kind is DatasetKind.prompt_completion else 'preferences'}"


def thumbs_up_answers(session: Session, scope: Callable[[Any], Any], cutoff: datetime | None = None,
                      ) -> tuple[list[dict[str, str]], dict[str, int]]:
    """The de-duplicated (prompt, completion) rows of the answers ``scope(Completion)`` selects that
    feedback given at or before ``cutoff`` endorses: a mean rating above 0, or preferred to another
    answer (``preferred_completion_id``); and how they were found. What SFT on feedback learns from."""
    preferred_q = (select(Completion.prompt_text, Completion.response)
                   .join(Feedback, Feedback.preferred_completion_id == Completion.id)
                   .where(scope(Completion)).order_by(Feedback.id))
    if cutoff is not None:
        preferred_q = preferred_q.where(Feedback.created_at <= cutoff)
    found = [(prompt, response) for prompt, response, mean in mean_ratings(session, scope, cutoff) if mean > 0]
    counts = {"rated_up": len(found)}
    preferred = session.execute(preferred_q).all()
    counts["preferred"] = len(preferred)
    unique, seen = [], set()
    for prompt, response in [*found, *preferred]:
        key = (prompt or "", response or "")
        if key in seen or not all(x.strip() for x in key):  # an empty answer is not a valid row
            continue
        seen.add(key)
        unique.append({"prompt": key[0], "completion": key[1]})
    counts["rows"] = len(unique)
    counts["duplicates"] = counts["rated_up"] + counts["preferred"] - len(unique)
    return unique, counts


def take_snapshot(settings: StudioSettings, generation_id: int, cutoff: datetime) -> dict[str, Any]:
    """Snapshot the generation's training data at ``cutoff`` (the one it already recorded wins)
    and record the snapshot id on it. Raises a ``StudioError`` when no row is left to train on."""
    with session_scope(settings.db_url) as s:
        gen = s.get(LoopGeneration, generation_id)
        if gen.cutoff_at is None:  # the cutoff first: a retry after a crash uses the same one
            s.execute(update(LoopGeneration).where(LoopGeneration.id == gen.id, LoopGeneration.cutoff_at.is_(None))
                      .values(cutoff_at=cutoff).execution_options(synchronize_session=False))
            s.refresh(gen)
        cutoff, number = gen.cutoff_at, gen.number
        loop = s.get(Loop, gen.loop_id)
        spec = LoopSpec.model_validate(gen.config["loop"])
        kind = snapshot_kind(training_method(gen))
        name, owner = dataset_name(loop, kind), loop.owner_key_id
        find = thumbs_up_answers if kind is DatasetKind.prompt_completion else preference_pairs
        rows, counts = find(s, lambda c: served_by(spec.served_name, c), cutoff=cutoff)
        golden_ref = golden_dataset(s, spec)
        golden = golden_prompts(s, golden_ref) if golden_ref else set()
        must_ref = spec.gate.must_pass.dataset if spec.gate.must_pass else None
        must = golden_prompts(s, must_ref) if must_ref else set()  # the gate's items too: never trained on
        replay, replay_from = replay_rows(s, gen, spec, rows, kind)
    params = {"loop": loop.name, "generation": number, "served_name": spec.served_name,
              "cutoff": cutoff.isoformat(), "golden": golden_ref, "must_pass": must_ref,
              "replay_share": spec.train.replay_share, "replay_from": replay_from, "replayed": len(replay)}
    sft = kind is DatasetKind.prompt_completion
    what = "thumbs-up answers" if sft else "preference pairs"
    transform = "loop-thumbs-up" if sft else "loop-preference"
    with SnapshotWriter(kind, Lineage(None, transform, params)) as w:
        for i, row in enumerate(rows + replay):
            if row["prompt"].strip() in golden:
                w.drop(i, f"the prompt is in the golden eval set {golden_ref}: never trained on", step="golden",
                       data=row)
            elif row["prompt"].strip() in must:
                w.drop(i, f"the prompt is a must-pass item of {must_ref}: never trained on", step="golden", data=row)
            else:
                w.add(row)
        if w.row_count == 0:
            raise StudioError(
                f"loop {loop.name} generation {number}: no {what} to train on at the cutoff "
                f"{cutoff.isoformat()} ({counts['rows']} {'answers' if sft else 'pairs'}, {w.dropped_count} of "
                "them golden-set or must-pass prompts)",
                "collect more feedback (thumbs up on good answers)" if sft else
                "collect more feedback (ratings of two answers to one prompt, or preferred_completion_id)")
        done = w.commit(settings, name, f"loop {loop.name} generation {number} feedback to {cutoff.isoformat()}",
                        owner)
    with session_scope(settings.db_url) as s:
        s.execute(update(LoopGeneration).where(LoopGeneration.id == generation_id)
                  .values(snapshot_id=done.snapshot_id).execution_options(synchronize_session=False))
    return {"snapshot_id": done.snapshot_id, "name": name, "version": done.version, "kind": kind.value,
            "what": what, "found": counts["rows"], **{k: v for k, v in counts.items() if k != "rows"},
            "golden_dropped": done.dropped_count, "rows": done.row_count,
            "replayed": len(replay), "replay_from": replay_from, "cutoff": cutoff.isoformat()}


def replay_rows(session: Session, gen: LoopGeneration, spec: LoopSpec, new: list[dict[str, str]],
                kind: DatasetKind = DatasetKind.preference) -> tuple[list[dict[str, str]], str | None]:
    """Rows of the champion's own training snapshot mixed back in against forgetting: as many as
    make ``train.replay_share`` of the result, drawn without replacement with a seed of the loop and
    generation (a retry draws the same), skipping rows the new ones already hold. Only rows of the
    snapshot's ``kind`` can be mixed in (preference pairs into a DPO loop's, prompt/completion rows
    into an SFT loop's): a champion trained on another kind gives none. Returns the rows and the
    snapshot they came from."""
    share = spec.train.replay_share
    if share <= 0 or not new or not gen.champion:
        return [], None
    try:
        snapshot_id = get_version(session, gen.champion).dataset_snapshot_id
    except StudioError:
        return [], None
    snap = session.get(DatasetSnapshot, snapshot_id) if snapshot_id else None
    if snap is None or snap.kind != kind.value:
        return [], None
    cols = COLUMNS[kind]
    seen = {tuple(r[c] for c in cols) for r in new}
    pool = [{c: r[c] for c in cols} for r in read_table(snap.uri).to_pylist()]
    pool = [r for r in pool if tuple(r[c] for c in cols) not in seen]
    want = min(len(pool), round(share / (1.0 - share) * len(new)))
    return random.Random(f"{spec.name}:{gen.number}").sample(pool, want), snap.id
