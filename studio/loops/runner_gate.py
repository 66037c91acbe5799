"""The runner's GATE step: the promotion gate's eval of candidate vs champion on the same items,
its verdict by the name's gate rule (candidate mean − champion mean > margin, the rule of
``studio models promote``), and a paired bootstrap interval on that difference at
``gate.confidence`` reported with it; then the loop's own checks: each guard (a non-inferiority
check scored in the same eval, on the same items: candidate mean ≥ champion mean − margin) and the
must-pass items (the candidate alone, each item ≥ ``min_score`` by the gate's scorer). Every check
passed → SHADOW (or straight to CANARY when the shadow share is 0, once the candidate's adapter
answers on ``/v1/models``); any failed → REFUSED, the reason naming each failure.

The evals are ordinary eval jobs run by the scheduler: an eval of the pair already on the gate's
dataset with every scorer needed is reused (``studio.evals.gate.find_eval``), else one is queued
under this attempt's key (``loop:NAME:gN:gate:aK``), once; the must-pass eval likewise
(``…:must_pass:aK``). Both are queued in one pass, so they run side by side."""

from __future__ import annotations

from typing import Any

import numpy as np
from sqlalchemy import select

from studio.data.snapshots import resolve_snapshot
from studio.errors import StudioError
from studio.evals.gate import ACTIVE, effective_gate, find_eval
from studio.evals.queue import KIND, enqueue_eval
from studio.evals.spec import EvalResult, EvalSpec, GenerationParams, stored_spec
from studio.jobs.status import JobStatus, will_retry
from studio.loops.spec import GuardSpec, check_guard_scorers
from studio.loops.step import INFRA_ERRORS, Ctx, Step
from studio.loops.states import Reason, State
from studio.recipes import validate_spec
from studio.scorer_specs import scorer_name
from studio.store.models import EvalOutput, EvalScore, Job

BOOTSTRAP_RESAMPLES = 2000
SHOWN_ITEMS = 3  # failed must-pass items named in the verdict (the rest are counted)


def gate(ctx: Ctx) -> Step:
    if (wait := ctx.backing_off()) is not None:  # a retry (an eval that failed, a candidate not served yet)
        return Step(False, wait)
    gen, spec = ctx.gen, ctx.spec
    cand, champ = gen.candidate, gen.champion
    override = {"dataset": spec.gate.dataset, "scorer": spec.gate.scorer, "margin": spec.gate.margin,
                "limit": spec.gate.limit}
    must = spec.gate.must_pass
    try:
        cfg = effective_gate(ctx.session, spec.served_name, override)
        if cfg is None:
            return ctx.go(State.REFUSED, Reason.GATE_REFUSED,
                          f"{spec.served_name} has no promotion gate and the loop sets no gate.dataset: set one "
                          f"(`studio models gate {spec.served_name} --dataset D`)")
        if (clash := check_guard_scorers(cfg.scorer, spec.gate.guards)) is not None:  # the name's gate changed
            return ctx.go(State.REFUSED, Reason.GATE_REFUSED, f"the gate cannot score its guards: {clash}")
        scorer = _name(cfg.scorer)
        scorers = [cfg.scorer] + [g.model_dump(mode="json")["scorer"] for g in spec.gate.guards
                                  if scorer_name(g.scorer) != scorer]  # a guard that is the gate's scorer shares it
        waits = []
        ev = _eval(ctx, "gate", cfg.dataset, [cand, champ], scorers, cfg, cfg.limit)
        if isinstance(ev, Step):
            if ev.moved:
                return ev
            waits.append(ev.note)
        mp = None
        if must is not None:  # every item, the candidate alone
            mp = _eval(ctx, "must_pass", must.dataset, [cand], [cfg.scorer], cfg, None)
            if isinstance(mp, Step):
                if mp.moved:
                    return mp
                waits.append(mp.note)
        if waits:
            return Step(False, "; ".join(waits))
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
    guards = [guard_check(ctx.session, ev.id, cand, champ, g) for g in spec.gate.guards]
    failed_items, items = must_pass_failures(ctx.session, mp, cand, scorer, must.min_score) if mp else ([], 0)
    problems = [] if beats else [f"does not beat the champion: {verdict}"]
    problems += [f"guard {g['label']}: the candidate is worse than the champion by more than the margin "
                 f"({_guard_words(g)})" for g in guards if not g["ok"]]
    if failed_items:
        shown = "; ".join(_item_words(x) for x in failed_items[:SHOWN_ITEMS])
        more = f"; and {len(failed_items) - SHOWN_ITEMS} more" if len(failed_items) > SHOWN_ITEMS else ""
        problems.append(f"fails {len(failed_items)} of {items} must-pass items on {must.dataset} (eval {mp.id}, "
                        f"{scorer} must be ≥ {must.min_score:g}): {shown}{more}")
    checks = "".join([f"; guard {g['label']}: {_guard_words(g)}" for g in guards if g["ok"]]
                     + ([f"; all {items} must-pass items on {must.dataset} ≥ {must.min_score:g} (eval {mp.id})"]
                        if mp is not None and not failed_items else []))
    if problems:
        return ctx.go(State.REFUSED, Reason.GATE_REFUSED, "; ".join(problems)
                      + ("" if not beats else f"; it beats the champion: {verdict}") + checks)
    if spec.shadow.share > 0:
        from datetime import timedelta

        return ctx.go(State.SHADOW, Reason.GATE_PASSED, f"beats the champion: {verdict}{checks}",
                      deadline_at=ctx.now + timedelta(seconds=spec.shadow.max_duration_s))
    from studio.loops.runner_traffic import enter_canary

    return enter_canary(ctx, Reason.SHADOW_SKIPPED, f"beats the champion: {verdict}{checks}; shadow share 0")


def _name(scorer: dict[str, Any]) -> str:
    return scorer_name(validate_spec(EvalSpec, {"dataset": "x", "models": ["x"], "scorers": [scorer]},
                                     "gate scorer").scorers[0])


def _eval(ctx: Ctx, role: str, dataset: str, models: list[str], scorers: list[dict[str, Any]], cfg,
          limit: int | None) -> Job | Step:
    """The finished eval of ``models`` on ``dataset`` with every scorer: one already there (all
    rows when ``limit`` is None), else this attempt's own; a ``Step`` while it is on its way (queued
    here when there is none), or the failed attempt when it ended without one."""
    snapshot_id = resolve_snapshot(ctx.session, dataset).snapshot.id
    names = [_name(s) for s in scorers]
    ev = find_eval(ctx.session, snapshot_id, models, names)
    if ev is not None and (limit is not None or stored_spec(ev).limit is None):
        return ev
    ctx.lock()
    own = ctx.job(KIND, role)
    if own is not None and own.status == JobStatus.SUCCEEDED:
        return own
    return _queue_or_wait(ctx, role, own, dataset, snapshot_id, models, scorers, names, cfg, limit)


def _queue_or_wait(ctx: Ctx, role: str, ev: Job | None, dataset: str, snapshot_id: str, models: list[str],
                   scorers: list[dict[str, Any]], names: list[str], cfg, limit: int | None) -> Step:
    what = "gate eval" if role == "gate" else "must-pass eval"
    if ev is not None:
        status = JobStatus(ev.status)
        if status is JobStatus.CANCELLED or (status is JobStatus.FAILED and not will_retry(ev)):
            return ctx.failed(f"{what} {ev.id} ended {status}: "
                              f"{(ev.error or 'no error recorded').splitlines()[0][:300]}")
        return Step(False, f"{what} {ev.id} is {status}")
    running = find_eval(ctx.session, snapshot_id, models, names, ACTIVE)
    if running is not None and (limit is not None or stored_spec(running).limit is None):
        return Step(False, f"{what} {running.id} of {' vs '.join(models)} is {running.status}")
    spec = EvalSpec(name=f"loop {ctx.label} {role}: {' vs '.join(models)}"[:128], dataset=dataset, models=models,
                    scorers=scorers, limit=limit, generation=GenerationParams(**(cfg.generation or {"max_tokens": 64})))
    job = enqueue_eval(ctx.session, spec, submitted_by=ctx.key(role), models_available=ctx.actions.models_available,
                       owner_key_id=ctx.loop.owner_key_id)
    return Step(False, f"queued {what} {job.id}: {' vs '.join(models)} on {dataset} ({', '.join(names)})")


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


def guard_check(session, eval_id: int, cand: str, champ: str, guard: GuardSpec) -> dict[str, Any]:
    """One guard's figures on the gate's eval: both means by its scorer and whether the candidate's
    is at least the champion's − margin (a candidate with no score cannot show it; a champion with
    none leaves nothing to fall below)."""
    name = scorer_name(guard.scorer)
    mean = {}
    for model in (cand, champ):
        values = list(session.scalars(select(EvalScore.score).where(
            EvalScore.job_id == eval_id, EvalScore.model == model, EvalScore.scorer == name,
            EvalScore.score.is_not(None))))
        mean[model] = float(np.mean(values)) if values else None
    c, h = mean[cand], mean[champ]
    return {"label": guard.label, "scorer": name, "candidate": c, "champion": h, "margin": guard.margin,
            "ok": c is not None and (h is None or c >= h - guard.margin)}


def must_pass_failures(session, ev: Job, cand: str, scorer: str, min_score: float) -> tuple[list[dict], int]:
    """The must-pass items the candidate failed (score below ``min_score``, unscored, or never
    answered), each with its prompt, expected answer, the candidate's answer and score; and how
    many items the eval had."""
    rows = EvalResult.of(ev).rows or 0
    outputs = {o.datapoint: o for o in session.scalars(select(EvalOutput).where(
        EvalOutput.job_id == ev.id, EvalOutput.model == cand))}
    scores = {r.datapoint: r for r in session.scalars(select(EvalScore).where(
        EvalScore.job_id == ev.id, EvalScore.model == cand, EvalScore.scorer == scorer))}
    failed = []
    for i in range(max([rows, *(k + 1 for k in outputs), *(k + 1 for k in scores)])):
        out, sc = outputs.get(i), scores.get(i)
        score = None if sc is None else sc.score
        if score is not None and score >= min_score:
            continue
        messages = (out.input if out is not None else None) or []
        failed.append({"item": i, "prompt": messages[-1].get("content", "") if messages else None,
                       "expected": out.reference if out is not None else None,
                       "answer": out.output if out is not None else None,
                       "error": (out.error if out is not None else None) or (sc.reason if sc is not None else None),
                       "score": score})
    return failed, rows


def _guard_words(g: dict[str, Any]) -> str:
    return (f"candidate {_fmt(g['candidate'])} vs champion {_fmt(g['champion'])} by {g['scorer']}, "
            f"margin {g['margin']:g}")


def _item_words(x: dict[str, Any]) -> str:
    answer = "no answer" if x["answer"] is None else f"answered {_clip(x['answer'])}"
    why = f" ({_clip(x['error'])})" if x["error"] and x["score"] is None else ""
    return (f"item {x['item']}: prompt {_clip(x['prompt'])}, expected {_clip(x['expected'])}, {answer}, "
            f"score {_fmt(x['score'])}{why}")


def _clip(text: str | None, width: int = 80) -> str:
    if text is None:
        return "n/a"
    text = str(text)
    return repr(text if len(text) <= width else text[:width] + "…")


def _fmt(x: float | None, sign: str = "") -> str:
    return "n/a" if x is None else f"{x:{sign}.3f}"
