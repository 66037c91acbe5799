"""The promotion gate: a version becomes its name's champion only if it beats the current champion
on the name's golden dataset.

Where the gate lives: one row per registry name in ``promotion_gates`` (dataset, scorer, margin,
row limit), set with ``studio models gate NAME --dataset D [--scorer exact_match] [--margin M]``
or ``PUT /api/models/{name}/gate``. ``promote`` options ``--dataset/--scorer/--margin`` override
it for one call. A name without a gate promotes as before (recorded as "no gate").

Decision: the newest SUCCEEDED eval on the gate's dataset snapshot that has both versions and the
scorer is reused; none → one is queued (``evaluating``: the CLI waits for it and asks again, the API
answers 202 with its id). Promoted when ``mean(candidate) − mean(champion) > margin``. ``force``
promotes without waiting and is recorded as forced, with the verdict if one exists. Every outcome
is a ``promotion_events`` row."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any, Callable

from sqlalchemy import select
from sqlalchemy.orm import Session

from studio.data.snapshots import resolve_snapshot
from studio.errors import Conflict, StudioError
from studio.evals.parity import check_parity
from studio.evals.parity import describe as describe_parity
from studio.evals.queue import KIND, enqueue_eval, gateway_models
from studio.evals.spec import EvalResult, EvalSpec, GenerationParams, stored_spec
from studio.jobs.status import JobStatus, will_retry
from studio.recipes import validate_spec
from studio.registry.versions import get_version, promote
from studio.scorer_specs import scorer_name
from studio.store.models import EvalScore, Job, ModelVersion, PromotionEvent, PromotionGate
from studio.train.spec import AfterTrainingSpec, TrainResult


class PromotionRefused(Conflict):
    """The candidate did not beat the champion (the refusal is recorded)."""


@dataclass
class GateConfig:
    dataset: str
    scorer: dict[str, Any] = field(default_factory=lambda: {"type": "exact_match"})
    margin: float = 0.0
    limit: int | None = None
    generation: dict[str, Any] = field(default_factory=dict)


@dataclass
class Outcome:
    """``promoted`` | ``refused`` | ``forced`` | ``evaluating`` (eval ``eval_id`` is running)."""

    outcome: str
    ref: str
    reason: str
    eval_id: int | None = None
    candidate_score: float | None = None
    champion_score: float | None = None
    champion: str | None = None
    version: dict[str, Any] | None = None
    parity: dict[str, Any] | None = None  # the candidate's train/serve parity record (studio.evals.parity)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def check_margin(margin: float) -> None:
    """The gate's threshold: a lead of one mean score over another, both in [0, 1]."""
    if not 0.0 <= margin <= 1.0:  # NaN too
        raise StudioError(f"the gate's margin {margin:g} is outside [0, 1]",
                          "give the lead the candidate's mean score must have over the champion's, "
                          "from 0 to 1 (scores are in [0, 1]), e.g. 0.02")


def set_gate(session: Session, name: str, cfg: GateConfig) -> PromotionGate:
    _check_scorer(cfg.scorer)
    check_margin(cfg.margin)
    resolve_snapshot(session, cfg.dataset)  # refuse a dataset that does not exist, now
    gate = session.get(PromotionGate, name) or PromotionGate(name=name)
    gate.dataset, gate.scorer, gate.margin, gate.limit, gate.generation = (
        cfg.dataset, cfg.scorer, cfg.margin, cfg.limit, cfg.generation)
    session.add(gate)
    session.flush()
    return gate


def get_gate(session: Session, name: str) -> GateConfig | None:
    g = session.get(PromotionGate, name)
    return None if g is None else GateConfig(g.dataset, g.scorer, g.margin, g.limit, g.generation or {})


def gate_dict(name: str, cfg: GateConfig | None) -> dict[str, Any]:
    return {"name": name, "gate": None if cfg is None else cfg.__dict__}


def _check_scorer(scorer: dict[str, Any]) -> None:
    validate_spec(EvalSpec, {"dataset": "x", "models": ["x"], "scorers": [scorer]}, "gate scorer")


def _record(session: Session, mv: ModelVersion, stage: str, o: Outcome, by: str | None,
            by_key_id: int | None = None) -> None:
    session.add(PromotionEvent(name=mv.name, version=mv.version, to_stage=stage, outcome=o.outcome,
                               forced=o.outcome == "forced", eval_job_id=o.eval_id, reason=o.reason[:4096], by=by,
                               by_key_id=by_key_id))
    session.flush()


def _mean(session: Session, job_id: int, model: str, scorer: str) -> float | None:
    values = list(session.scalars(select(EvalScore.score).where(
        EvalScore.job_id == job_id, EvalScore.model == model, EvalScore.scorer == scorer,
        EvalScore.score.is_not(None))))
    return statistics.fmean(values) if values else None


def find_eval(session: Session, snapshot_id: str, refs: list[str], scorer: str | list[str],
              statuses: tuple[str, ...] = ("SUCCEEDED",)) -> Job | None:
    """The newest eval in ``statuses`` on this snapshot that has every ref and the scorer (every
    one of a list of scorer names)."""
    wanted = {scorer} if isinstance(scorer, str) else set(scorer)
    for job in session.scalars(select(Job).where(Job.kind == KIND, Job.status.in_(statuses))
                               .order_by(Job.id.desc()).limit(500)):
        if job.status == JobStatus.FAILED and not will_retry(job):
            continue  # FAILED counts only while the scheduler will retry it
        if EvalResult.of(job).snapshot_id != snapshot_id:
            continue
        spec = stored_spec(job)
        if set(refs) <= set(spec.models) and wanted <= {scorer_name(s) for s in spec.scorers}:
            return job
    return None


def gated_promote(session: Session, ref: str, stage: str = "champion", *, force: bool = False,
                  by: str | None = None, override: dict[str, Any] | None = None,
                  models_available=gateway_models, owner_key_id: int | None = None,
                  parity: Callable[..., dict[str, Any]] = check_parity) -> Outcome:
    """Promote ``ref`` (``name@N``) through the gate. Refusals are recorded and returned (the
    caller commits, then reports them); ``evaluating`` means an eval was queued and nothing changed.
    A gated champion promotion first checks train/serve parity (once per version, stored on it): a
    mismatch is refused before any eval, ``force`` overrides it like any other check."""
    if "@" not in ref:
        raise StudioError(f"promote needs a pinned version, got {ref!r}", f"write {ref}@N (see `studio models ls`)")
    mv = get_version(session, ref)
    ref = f"{mv.name}@{mv.version}"
    cfg = effective_gate(session, mv.name, override)
    champion = _champion(session, mv.name)

    def done(o: Outcome) -> Outcome:
        o.parity = o.parity or parity_record
        if parity_record is not None and parity_record["status"] != "mismatch":
            o.reason += f"; {describe_parity(parity_record)}"
        if o.outcome in ("promoted", "forced"):
            o.version = _version(promote(session, ref, stage))
        _record(session, mv, stage, o, by, owner_key_id)
        return o

    parity_record = None
    if stage != "champion" or cfg is None:
        why = "no promotion gate for this name" if cfg is None else f"stage {stage} is not gated"
        return done(Outcome("promoted", ref, why))
    parity_record = parity(session, mv, cfg.dataset, int((cfg.generation or {}).get("max_tokens") or 64))
    if parity_record["status"] == "mismatch":
        why = describe_parity(parity_record)
        return done(Outcome("forced", ref, f"forced by {by or 'unknown'}: {why}") if force
                    else Outcome("refused", ref, why))
    if champion is None or champion.id == mv.id:
        why = "already the champion" if champion is not None else "no champion yet to beat"
        return done(Outcome("promoted", ref, why))
    champ_ref = f"{champion.name}@{champion.version}"
    scorer = scorer_name(validate_spec(EvalSpec, {"dataset": "x", "models": ["x"], "scorers": [cfg.scorer]},
                                       "gate scorer").scorers[0])
    snapshot_id = resolve_snapshot(session, cfg.dataset).snapshot.id
    job = find_eval(session, snapshot_id, [ref, champ_ref], scorer)
    if job is None and force:
        return done(Outcome("forced", ref, f"forced by {by or 'unknown'} without an eval against {champ_ref}",
                            champion=champ_ref))
    if job is None:
        # A gate eval of this pair still on its way (a second `promote` while it runs): wait for it.
        running = find_eval(session, snapshot_id, [ref, champ_ref], scorer, ACTIVE)
        if running is not None:
            return Outcome("evaluating", ref, f"eval {running.id} is running: {ref} vs champion {champ_ref} on "
                           f"{cfg.dataset} ({scorer})", eval_id=running.id, champion=champ_ref)
        ev = enqueue_eval(session, _gate_spec(cfg, f"gate {ref} vs {champ_ref}", [ref, champ_ref]),
                          submitted_by=f"gate:{by or 'unknown'}", models_available=models_available,
                          owner_key_id=owner_key_id)
        return Outcome("evaluating", ref, f"eval {ev.id} queued: {ref} vs champion {champ_ref} on {cfg.dataset} "
                       f"({scorer})", eval_id=ev.id, champion=champ_ref)
    cand, champ = _mean(session, job.id, ref, scorer), _mean(session, job.id, champ_ref, scorer)
    verdict = (f"{scorer} {_fmt(cand)} vs champion {champ_ref} {_fmt(champ)} on {cfg.dataset} "
               f"(eval {job.id}, margin {cfg.margin:g})")
    beats = cand is not None and (champ is None or cand - champ > cfg.margin)
    o = Outcome("promoted" if beats else "forced" if force else "refused", ref,
                ("beats " if beats else "does not beat; " + (f"forced by {by or 'unknown'}: " if force else ""))
                + verdict, eval_id=job.id, candidate_score=cand, champion_score=champ, champion=champ_ref)
    return done(o)


# An eval still on its way: active, or FAILED with a retry to come (find_eval keeps only those).
ACTIVE = ("QUEUED", "STARTING", "RUNNING", "CHECKPOINTING", "RETRYING", "FAILED")


def effective_gate(session: Session, name: str, override: dict[str, Any] | None = None) -> GateConfig | None:
    """The name's gate with ``override``'s set values on top (a dataset alone makes a gate)."""
    override = {k: v for k, v in (override or {}).items() if v is not None}
    cfg = get_gate(session, name)
    if override.get("dataset") or (cfg and override):
        base = cfg.__dict__ if cfg else {}
        cfg = GateConfig(**{**base, **override})
        _check_scorer(cfg.scorer)
        check_margin(cfg.margin)
    return cfg


def _champion(session: Session, name: str) -> ModelVersion | None:
    return next(iter(session.scalars(select(ModelVersion).where(
        ModelVersion.name == name, ModelVersion.stage == "champion"))), None)


def _gate_spec(cfg: GateConfig, label: str, models: list[str]) -> EvalSpec:
    return EvalSpec(name=label[:128], dataset=cfg.dataset, models=models, scorers=[cfg.scorer], limit=cfg.limit,
                    generation=GenerationParams(**(cfg.generation or {"max_tokens": 64})))


def advance_after_training(session: Session, job: Job, models_available=gateway_models
                           ) -> dict[str, Any] | None:
    """The scheduler's hook for a SUCCEEDED training job with ``after_training`` (it calls it every
    pass until the state is ``done``): one step of ``after_training``, stored in the job's
    ``result.after_training``; the new state when it changed, else None."""
    result = TrainResult.of(job)
    state = after_training(session, job, models_available)
    if state == result.after_training:
        return None
    result.after_training = state
    job.result = result.dump()
    return state


def after_training(session: Session, job: Job, models_available=gateway_models) -> dict[str, Any]:
    """One step of a SUCCEEDED training job's ``after_training``: queue an eval of the registered
    version against the name's champion on the golden dataset; once it SUCCEEDED, with ``promote``
    decide through the gate (``gated_promote``: promoted, or refused and recorded), without it
    record the two means. Returns the state to store as ``result.after_training``."""
    want = AfterTrainingSpec.model_validate((job.spec or {}).get("after_training") or {})
    result = TrainResult.of(job)
    state = dict(result.after_training or {})
    ref = result.model or ""

    def end(outcome: str, reason: str, **kw: Any) -> dict[str, Any]:
        return {**state, "done": True, "outcome": outcome, "reason": reason, **kw}

    if "@" not in ref:
        return end("skipped", "the job registered no model version")
    try:
        return _after_training_step(session, job, want, state, ref, end, models_available)
    except StudioError as e:
        if e.status_code >= 500:
            raise  # the gateway or the database is briefly away: the next pass tries again
        # a 4xx cannot get better by asking again (a version or dataset gone, a model not served)
        return end("refused", f"{e.problem}{' (' + e.fix + ')' if e.fix else ''}")


def _after_training_step(session: Session, job: Job, want: AfterTrainingSpec, state: dict[str, Any], ref: str,
                         end: Any, models_available: Any) -> dict[str, Any]:
    by = f"job:{job.id}"
    mv = get_version(session, ref)
    scorer = want.scorer.model_dump(mode="json", by_alias=True, exclude_none=True) if want.scorer else None
    override = {"dataset": want.dataset, "scorer": scorer, "margin": want.margin, "limit": want.limit,
                "generation": {"max_tokens": want.max_tokens} if want.max_tokens else None}
    cfg = effective_gate(session, mv.name, override)
    if cfg is None:
        return end("skipped", f"no golden dataset: set a gate (`studio models gate {mv.name} --dataset D`) "
                   "or after_training.dataset in the recipe")
    ev = session.get(Job, state["eval_id"]) if state.get("eval_id") else None
    if ev is not None and ev.status in (JobStatus.FAILED, JobStatus.CANCELLED) and not (
            ev.status == JobStatus.FAILED and will_retry(ev)):
        why = f"eval {ev.id} ended {ev.status}" + (f": {ev.error.splitlines()[0]}" if ev.error else "")
        return end("eval_failed", why + (f"; {ref} was not promoted" if want.promote else ""))
    if want.promote:
        o = gated_promote(session, ref, force=False, by=by, override=override, models_available=models_available)
        if o.outcome == "evaluating":
            return {**state, "done": False, "outcome": "evaluating", "eval_id": o.eval_id, "reason": o.reason}
        return end(o.outcome, o.reason, eval_id=o.eval_id, candidate_score=o.candidate_score,
                   champion_score=o.champion_score, champion=o.champion)
    # auto-eval only: the new version (and the champion, to compare with) on the golden dataset
    champion = _champion(session, mv.name)
    champ_ref = f"{champion.name}@{champion.version}" if champion and champion.id != mv.id else None
    models = [ref, *([champ_ref] if champ_ref else [])]
    if ev is None:
        ev = enqueue_eval(session, _gate_spec(cfg, f"after job {job.id}: {' vs '.join(models)}", models),
                          submitted_by=by, models_available=models_available)
        return {**state, "done": False, "outcome": "evaluating", "eval_id": ev.id,
                "reason": f"eval {ev.id} queued: {' vs '.join(models)} on {cfg.dataset}"}
    if ev.status != JobStatus.SUCCEEDED:
        return state
    ev_spec = stored_spec(ev)
    name = scorer_name(ev_spec.scorers[0])
    means = {m: _mean(session, ev.id, m, name) for m in ev_spec.models}
    return end("evaluated", f"eval {ev.id}: " + ", ".join(f"{m} {_fmt(v)}" for m, v in means.items())
               + f" ({name} on {cfg.dataset})", means=means)


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def _version(mv: ModelVersion) -> dict[str, Any]:
    from studio.registry.versions import version_dict

    return version_dict(mv)


def promotion_history(session: Session, name: str) -> list[dict[str, Any]]:
    return [{"version": e.version, "to_stage": e.to_stage, "outcome": e.outcome, "forced": e.forced,
             "eval_id": e.eval_job_id, "reason": e.reason, "by": e.by, "at": e.at.isoformat()}
            for e in session.scalars(select(PromotionEvent).where(PromotionEvent.name == name)
                                     .order_by(PromotionEvent.id))]
