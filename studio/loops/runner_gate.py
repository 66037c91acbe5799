"""The runner's GATE step: the promotion gate's eval of candidate vs champion on the same items,
its verdict by the name's gate rule (candidate mean − champion mean > margin, the rule of
``studio models promote``), and a paired bootstrap interval on that difference at
``gate.confidence`` reported with it. Passed → SHADOW (or straight to CANARY when the shadow share
is 0, once the candidate's adapter answers on ``/v1/models``); refused → REFUSED.

The eval is an ordinary eval job run by the scheduler: an eval of the pair already on the gate's
dataset is reused (``studio.evals.gate.find_eval``), else one is queued under this attempt's key
(``loop:NAME:gN:gate:aK``), once."""

from __future__ import annotations

import numpy as np
from sqlalchemy import select

from studio.data.snapshots import resolve_snapshot
from studio.errors import StudioError
from studio.evals.gate import ACTIVE, effective_gate, find_eval
from studio.evals.queue import KIND, enqueue_eval
from studio.evals.spec import EvalSpec, GenerationParams
from studio.jobs.status import JobStatus, will_retry
from studio.loops.step import INFRA_ERRORS, Ctx, Step
from studio.loops.states import Reason, State
from studio.recipes import validate_spec
from studio.scorer_specs import scorer_name
from studio.store.models import EvalScore, Job

BOOTSTRAP_RESAMPLES = 2000


def gate(ctx: Ctx) -> Step:
    if (wait := ctx.backing_off()) is not None:  # a retry (an eval that failed, a candidate not served yet)
        return Step(False, wait)
    gen, spec = ctx.gen, ctx.spec
    cand, champ = gen.candidate, gen.champion
    override = {"dataset": spec.gate.dataset, "scorer": spec.gate.scorer, "margin": spec.gate.margin,
                "limit": spec.gate.limit}
    try:
        cfg = effective_gate(ctx.session, spec.served_name, override)
        if cfg is None:
            return ctx.go(State.REFUSED, Reason.GATE_REFUSED,
                          f"{spec.served_name} has no promotion gate and the loop sets no gate.dataset: set one "
                          f"(`studio models gate {spec.served_name} --dataset D`)")
        scorer = scorer_name(validate_spec(EvalSpec, {"dataset": "x", "models": ["x"], "scorers": [cfg.scorer]},
                                           "gate scorer").scorers[0])
        snapshot_id = resolve_snapshot(ctx.session, cfg.dataset).snapshot.id
        ev = find_eval(ctx.session, snapshot_id, [cand, champ], scorer)
        if ev is None:
            ev = _own_eval(ctx)
            if ev is None or ev.status != JobStatus.SUCCEEDED:
                return _queue_or_wait(ctx, ev, cfg, [cand, champ], scorer)
    except StudioError as e:  # a dataset, gateway or version the gate cannot use now: retried, then FAILED
        return _undo(ctx, f"the gate could not run: {e}")
    except INFRA_ERRORS as e:
        return _undo(ctx, f"the gate could not run: {type(e).__name__}: {e}")
    diff = paired_difference(ctx.session, ev.id, cand, champ, scorer, spec.gate.confidence)
    verdict = (f"{scorer} {_fmt(diff['candidate'])} vs champion {champ} {_fmt(diff['champion'])} on {cfg.dataset} "
               f"(eval {ev.id}, {diff['pairs']} paired items, margin {cfg.margin:g}; difference "
               f"{_fmt(diff['difference'], '+')}, {spec.gate.confidence:.0%} bootstrap interval "
               f"[{_fmt(diff['lower'], '+')}, {_fmt(diff['upper'], '+')}])")
    beats = diff["candidate"] is not None and (diff["champion"] is None
                                               or diff["candidate"] - diff["champion"] > cfg.margin)
    if not beats:
        return ctx.go(State.REFUSED, Reason.GATE_REFUSED, f"does not beat the champion: {verdict}")
    if spec.shadow.share > 0:
        from datetime import timedelta

        return ctx.go(State.SHADOW, Reason.GATE_PASSED, f"beats the champion: {verdict}",
                      deadline_at=ctx.now + timedelta(seconds=spec.shadow.max_duration_s))
    from studio.loops.runner_traffic import enter_canary

    return enter_canary(ctx, Reason.SHADOW_SKIPPED, f"beats the champion: {verdict}; shadow share 0")


def _own_eval(ctx: Ctx) -> Job | None:
    ctx.lock()
    return ctx.job(KIND, "gate")


def _queue_or_wait(ctx: Ctx, ev: Job | None, cfg, models: list[str], scorer: str) -> Step:
    if ev is not None:
        status = JobStatus(ev.status)
        if status is JobStatus.CANCELLED or (status is JobStatus.FAILED and not will_retry(ev)):
            return ctx.failed(f"gate eval {ev.id} ended {status}: "
                              f"{(ev.error or 'no error recorded').splitlines()[0][:300]}")
        return Step(False, f"gate eval {ev.id} is {status}")
    running = find_eval(ctx.session, resolve_snapshot(ctx.session, cfg.dataset).snapshot.id, models, scorer, ACTIVE)
    if running is not None:
        return Step(False, f"gate eval {running.id} of {' vs '.join(models)} is {running.status}")
    spec = EvalSpec(name=f"loop {ctx.label} gate: {' vs '.join(models)}"[:128], dataset=cfg.dataset, models=models,
                    scorers=[cfg.scorer], limit=cfg.limit,
                    generation=GenerationParams(**(cfg.generation or {"max_tokens": 64})))
    job = enqueue_eval(ctx.session, spec, submitted_by=ctx.key("gate"), models_available=ctx.actions.models_available,
                       owner_key_id=ctx.loop.owner_key_id)
    return Step(False, f"queued gate eval {job.id}: {' vs '.join(models)} on {cfg.dataset} ({scorer})")


def _undo(ctx: Ctx, why: str) -> Step:
    ctx.undo()
    return ctx.failed(why)


def paired_difference(session, eval_id: int, cand: str, champ: str, scorer: str, confidence: float) -> dict:
    """Both means, and the candidate − champion difference over the items both were scored on, with
    a percentile bootstrap interval (resampling items, seeded by the eval's id: the same numbers
    every time it is recomputed)."""
    rows = session.execute(select(EvalScore.datapoint, EvalScore.model, EvalScore.score).where(
        EvalScore.job_id == eval_id, EvalScore.scorer == scorer, EvalScore.model.in_((cand, champ)),
        EvalScore.score.is_not(None))).all()
    by_model: dict[str, dict[int, float]] = {cand: {}, champ: {}}
    for r in rows:
        by_model[r.model][r.datapoint] = float(r.score)
    mean = {m: (float(np.mean(list(v.values()))) if v else None) for m, v in by_model.items()}
    common = sorted(set(by_model[cand]) & set(by_model[champ]))
    out = {"candidate": mean[cand], "champion": mean[champ], "pairs": len(common), "difference": None,
           "lower": None, "upper": None}
    if not common:
        return out
    d = np.array([by_model[cand][i] - by_model[champ][i] for i in common])
    idx = np.random.default_rng(eval_id).integers(0, len(d), size=(BOOTSTRAP_RESAMPLES, len(d)))
    means = d[idx].mean(axis=1)
    tail = (1.0 - confidence) / 2.0
    out.update(difference=float(d.mean()), lower=float(np.quantile(means, tail)),
               upper=float(np.quantile(means, 1.0 - tail)))
    return out


def _fmt(x: float | None, sign: str = "") -> str:
    return "n/a" if x is None else f"{x:{sign}.3f}"
