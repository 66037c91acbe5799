"""A generation's training data: an immutable preference snapshot of its served name's feedback up
to a cutoff (docs/loops.md, "The snapshot").

The rows are the preference export's (``studio.experiments.export.preference_pairs``: explicit
"B is better than A" feedback, and +/− rated answers to one prompt paired, de-duplicated) over the
completions any version of the served name answered, counting only feedback given at or before the
cutoff; with ``train.replay_share`` > 0, rows of the champion's own training snapshot (when it
holds preference pairs) are mixed back in against forgetting (``replay_rows``). Rows whose prompt is
in the golden eval set (the gate's dataset) are dropped with that
reason, so the gate never scores a prompt the candidate was trained on. The rows are stored with the
dataset snapshot writer (content-addressed, with lineage) as a new version of
``<loop>-preferences``; the generation records the cutoff first and the snapshot id after, so a
retry after a crash takes the same cutoff and finds the same snapshot.
"""

from __future__ import annotations

import random
from datetime import datetime
from typing import Any

from sqlalchemy import update
from sqlalchemy.orm import Session

from studio.data.kinds import DatasetKind
from studio.data.snapshots import read_table, resolve_snapshot
from studio.data.writer import Lineage, SnapshotWriter
from studio.errors import StudioError
from studio.registry.versions import get_version
from studio.experiments.completions import prompt_text
from studio.experiments.export import preference_pairs
from studio.loops.spec import LoopSpec
from studio.loops.triggers import served_by
from studio.settings import StudioSettings
from studio.store.db import session_scope
from studio.store.loop_models import Loop, LoopGeneration
from studio.store.models import DatasetSnapshot, PromotionGate


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


def dataset_name(loop: Loop) -> str:
    return f"{loop.name}-preferences"


def take_snapshot(settings: StudioSettings, generation_id: int, cutoff: datetime) -> dict[str, Any]:
    """Snapshot the generation's preference data at ``cutoff`` (the one it already recorded wins)
    and record the snapshot id on it. Raises a ``StudioError`` when no pair is left to train on."""
    with session_scope(settings.db_url) as s:
        gen = s.get(LoopGeneration, generation_id)
        if gen.cutoff_at is None:  # the cutoff first: a retry after a crash uses the same one
            s.execute(update(LoopGeneration).where(LoopGeneration.id == gen.id, LoopGeneration.cutoff_at.is_(None))
                      .values(cutoff_at=cutoff).execution_options(synchronize_session=False))
            s.refresh(gen)
        cutoff, number = gen.cutoff_at, gen.number
        loop = s.get(Loop, gen.loop_id)
        spec = LoopSpec.model_validate(gen.config["loop"])
        name, owner = dataset_name(loop), loop.owner_key_id
        rows, counts = preference_pairs(s, lambda c: served_by(spec.served_name, c), cutoff=cutoff)
        golden_ref = golden_dataset(s, spec)
        golden = golden_prompts(s, golden_ref) if golden_ref else set()
        replay, replay_from = replay_rows(s, gen, spec, rows)
    params = {"loop": loop.name, "generation": number, "served_name": spec.served_name,
              "cutoff": cutoff.isoformat(), "golden": golden_ref, "replay_share": spec.train.replay_share,
              "replay_from": replay_from, "replayed": len(replay)}
    with SnapshotWriter(DatasetKind.preference, Lineage(None, "loop-preference", params)) as w:
        for i, row in enumerate(rows + replay):
            if row["prompt"].strip() in golden:
                w.drop(i, f"the prompt is in the golden eval set {golden_ref}: never trained on", step="golden",
                       data=row)
            else:
                w.add(row)
        if w.row_count == 0:
            raise StudioError(
                f"loop {loop.name} generation {number}: no preference pairs to train on at the cutoff "
                f"{cutoff.isoformat()} ({counts['rows']} pairs, {w.dropped_count} of them golden-set prompts)",
                "collect more feedback (ratings of two answers to one prompt, or preferred_completion_id)")
        done = w.commit(settings, name, f"loop {loop.name} generation {number} feedback to {cutoff.isoformat()}",
                        owner)
    with session_scope(settings.db_url) as s:
        s.execute(update(LoopGeneration).where(LoopGeneration.id == generation_id)
                  .values(snapshot_id=done.snapshot_id).execution_options(synchronize_session=False))
    return {"snapshot_id": done.snapshot_id, "name": name, "version": done.version, "pairs": counts["rows"],
            "explicit": counts["explicit"], "from_ratings": counts["from_ratings"],
            "duplicates": counts["duplicates"], "golden_dropped": done.dropped_count, "rows": done.row_count,
            "replayed": len(replay), "replay_from": replay_from, "cutoff": cutoff.isoformat()}


def replay_rows(session: Session, gen: LoopGeneration, spec: LoopSpec, new: list[dict[str, str]]
                ) -> tuple[list[dict[str, str]], str | None]:
    """Rows of the champion's own training snapshot mixed back in against forgetting: as many as
    make ``train.replay_share`` of the result, drawn without replacement with a seed of the loop and
    generation (a retry draws the same), skipping pairs the new rows already hold. Only preference
    rows can be mixed into a preference snapshot: a champion trained on other rows (SFT on
    prompt/completion) gives none. Returns the rows and the snapshot they came from."""
    share = spec.train.replay_share
    if share <= 0 or not new or not gen.champion:
        return [], None
    try:
        snapshot_id = get_version(session, gen.champion).dataset_snapshot_id
    except StudioError:
        return [], None
    snap = session.get(DatasetSnapshot, snapshot_id) if snapshot_id else None
    if snap is None or snap.kind != DatasetKind.preference.value:
        return [], None
    seen = {(r["prompt"], r["chosen"], r["rejected"]) for r in new}
    pool = [{"prompt": r["prompt"], "chosen": r["chosen"], "rejected": r["rejected"]}
            for r in read_table(snap.uri).to_pylist()]
    pool = [r for r in pool if (r["prompt"], r["chosen"], r["rejected"]) not in seen]
    want = min(len(pool), round(share / (1.0 - share) * len(new)))
    return random.Random(f"{spec.name}:{gen.number}").sample(pool, want), snap.id
