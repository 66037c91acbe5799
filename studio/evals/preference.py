"""Preference snapshots from pairwise judge verdicts of an evaluation run.

A pairwise judge scores each model against the scorer's baseline on every datapoint (1 win,
0.5 tie, 0 loss; ``eval_scores``). A win or a loss with both outputs present becomes one
``preference`` row: prompt = the datapoint's messages flattened, chosen = the winner's output,
rejected = the loser's. Ties, unscored verdicts and failed outputs are dropped with their reason.
The result is a snapshot with lineage (``eval-preference``, the eval job, the scorer).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from studio.data.kinds import DatasetKind
from studio.data.writer import Lineage, Owner, SnapshotWriter, check_owner
from studio.errors import NotFound, StudioError
from studio.evals.spec import EvalSpec, stored_spec
from studio.scorer_specs import JudgeScorer, scorer_name
from studio.settings import StudioSettings
from studio.store.db import session_scope
from studio.store.models import EvalOutput, EvalScore, Job


def prompt_text(messages: Any) -> str:
    """Messages → one prompt string (a single user turn is used as is)."""
    if isinstance(messages, str):
        return messages
    if isinstance(messages, list):
        turns = [m for m in messages if isinstance(m, dict) and m.get("role") != "assistant"]
        if len(turns) == 1:
            return str(turns[0].get("content", ""))
        return "\n".join(f"{m.get('role')}: {m.get('content', '')}" for m in turns)
    return str(messages)


def _pairwise_scorers(spec: EvalSpec) -> dict[str, str]:
    """scorer name → baseline model, for every pairwise judge of an eval spec."""
    return {scorer_name(s): s.baseline or spec.models[0] for s in spec.scorers
            if isinstance(s, JudgeScorer) and s.mode == "pairwise"}


def preference_from_eval(settings: StudioSettings, eval_job_id: int, name: str,
                         scorer: str | None = None, owner: Owner = None) -> dict[str, Any]:
    check_owner(settings, [name], owner)
    with session_scope(settings.db_url) as s:
        job = s.get(Job, eval_job_id)
        if job is None or job.kind != "eval":
            raise NotFound(f"no evaluation job {eval_job_id}", "list runs with `studio eval ls`")
        judges = _pairwise_scorers(stored_spec(job))
        if not judges:
            raise StudioError(f"evaluation {eval_job_id} has no pairwise judge scorer",
                              "run an eval with a judge scorer in mode: pairwise")
        if scorer is None:
            scorer = next(iter(judges))
        if scorer not in judges:
            raise StudioError(f"scorer {scorer!r} is not a pairwise judge of evaluation {eval_job_id}",
                              f"use one of {', '.join(judges)}")
        baseline = judges[scorer]
        outputs = {(o.datapoint, o.model): (o.input, o.output)
                   for o in s.scalars(select(EvalOutput).where(EvalOutput.job_id == eval_job_id))}
        verdicts = [(v.datapoint, v.model, v.score, v.status, v.reason) for v in s.scalars(
            select(EvalScore).where(EvalScore.job_id == eval_job_id, EvalScore.scorer == scorer)
            .order_by(EvalScore.datapoint, EvalScore.model))]
    lineage = Lineage(None, "eval-preference", {"eval_job_id": eval_job_id, "scorer": scorer,
                                                "baseline": baseline})
    with SnapshotWriter(DatasetKind.preference, lineage) as w:
        for dp, model, score, status, reason in verdicts:
            label = f"datapoint {dp} · {model} vs {baseline}"
            if model == baseline:
                continue
            cand, base = outputs.get((dp, model)), outputs.get((dp, baseline))
            if score is None:
                w.drop(dp, f"unscored ({status}): {reason or 'no reason'}", step="verdict", file=label)
            elif score == 0.5 or score not in (0.0, 1.0):
                w.drop(dp, f"tie or mixed verdict ({score:g}): no preference", step="verdict", file=label)
            elif not cand or not base or not cand[1] or not base[1]:
                w.drop(dp, "an output is missing (the call failed)", step="verdict", file=label)
            else:
                win, lose = (cand[1], base[1]) if score == 1.0 else (base[1], cand[1])
                w.add({"prompt": prompt_text(cand[0]), "chosen": win, "rejected": lose})
        if w.row_count == 0:
            raise StudioError(f"evaluation {eval_job_id} has no decided pairwise verdicts for {scorer!r} "
                              f"({w.dropped_count} ties or failures)", "nothing was stored")
        done = w.commit(settings, name, f"eval {eval_job_id} pairwise {scorer}", owner)
    return {"snapshot_id": done.snapshot_id, "name": name, "version": done.version,
            "rows": done.row_count, "dropped": done.dropped_count, "created": done.created}
