"""The leaderboard: per model × scorer the mean with a 95% confidence interval (Student's t on the
per-datapoint scores), pairwise win rates, and latency / cost / cache hits per model — for one run,
or pooled over every run on one dataset snapshot."""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from typing import Any

from sqlalchemy import and_, func, select
from sqlalchemy.orm import Session

from studio.evals.spec import EvalResult, stored_spec
from studio.jobs.progress import row_progress
from studio.jobs.views import Progress
from studio.store.models import EvalOutput, EvalScore, Job, utcnow
from studio.train.compare import VersionScore


def t_critical(n: int) -> float:
    """Two-sided 95% Student-t quantile for n samples (n-1 degrees of freedom)."""
    if n < 2:
        return float("nan")
    try:
        from scipy.stats import t

        return float(t.ppf(0.975, n - 1))
    except ImportError:  # scipy is optional; the normal quantile is close from n ≈ 30
        return 1.959964


def mean_ci(values: list[float]) -> dict[str, Any]:
    n = len(values)
    if n == 0:
        return {"n": 0, "mean": None, "ci95": None}
    mean = statistics.fmean(values)
    if n < 2:
        return {"n": n, "mean": mean, "ci95": None}
    half = t_critical(n) * statistics.stdev(values) / math.sqrt(n)
    return {"n": n, "mean": mean, "ci95": [mean - half, mean + half]}


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    k = (len(s) - 1) * q
    lo, hi = math.floor(k), math.ceil(k)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def build(scores: list[tuple], outputs: list[tuple], models: list[str]) -> dict[str, Any]:
    """``scores``: (run, datapoint, model, scorer, score, status) rows; ``outputs``: (model,
    latency_ms, cost_usd, cache_hit, error) rows. ``run`` keeps datapoints of different runs apart
    when comparing models pairwise."""
    by_ms: dict[tuple[str, str], list[float]] = defaultdict(list)
    unscored: dict[tuple[str, str], int] = defaultdict(int)
    per_dp: dict[str, dict[str, dict[tuple, float]]] = defaultdict(lambda: defaultdict(dict))
    scorers: list[str] = []
    for run, dp, model, scorer, score, status in scores:
        if scorer not in scorers:
            scorers.append(scorer)
        if score is None:
            unscored[(model, scorer)] += 1
            continue
        by_ms[(model, scorer)].append(score)
        per_dp[scorer][model][(run, dp)] = score
    seen = list(dict.fromkeys([*models, *(m for m, *_ in outputs), *(m for _, m in by_ms)]))
    table = []
    for model in seen:
        for scorer in scorers:
            if (model, scorer) not in by_ms and (model, scorer) not in unscored:
                continue
            table.append({"model": model, "scorer": scorer, **mean_ci(by_ms[(model, scorer)]),
                          "unscored": unscored[(model, scorer)]})
    win_rates = []
    for scorer in scorers:
        for a in seen:
            for b in seen:
                if a == b or not per_dp[scorer][a] or not per_dp[scorer][b]:
                    continue
                common = per_dp[scorer][a].keys() & per_dp[scorer][b].keys()
                if not common:
                    continue
                wins = sum(per_dp[scorer][a][k] > per_dp[scorer][b][k] for k in common)
                ties = sum(per_dp[scorer][a][k] == per_dp[scorer][b][k] for k in common)
                win_rates.append({"scorer": scorer, "model": a, "opponent": b, "n": len(common),
                                  "wins": wins, "ties": ties, "win_rate": (wins + 0.5 * ties) / len(common)})
    perf: dict[str, dict[str, Any]] = {}
    lat: dict[str, list[float]] = defaultdict(list)
    for model, latency, cost, hit, error in outputs:
        p = perf.setdefault(model, {"model": model, "answers": 0, "errors": 0, "cache_hits": 0, "cost_usd": 0.0})
        p["answers"] += 1
        p["errors"] += error is not None
        p["cache_hits"] += bool(hit)
        p["cost_usd"] += cost or 0.0
        if latency is not None and error is None and not hit:
            lat[model].append(latency)
    for model, p in perf.items():
        p["latency_ms_mean"] = statistics.fmean(lat[model]) if lat[model] else None
        p["latency_ms_p50"] = percentile(lat[model], 0.5)
        p["latency_ms_p95"] = percentile(lat[model], 0.95)
        p["cost_usd_per_answer"] = p["cost_usd"] / p["answers"] if p["answers"] else None
    return {"scores": table, "win_rates": win_rates, "models": [perf[m] for m in seen if m in perf]}


def run_leaderboard(session: Session, job: Job) -> dict[str, Any]:
    scores = session.execute(select(EvalScore.job_id, EvalScore.datapoint, EvalScore.model, EvalScore.scorer,
                                    EvalScore.score, EvalScore.status)
                             .where(EvalScore.job_id == job.id).order_by(EvalScore.id)).all()
    outputs = session.execute(select(EvalOutput.model, EvalOutput.latency_ms, EvalOutput.cost_usd,
                                     EvalOutput.cache_hit, EvalOutput.error)
                              .where(EvalOutput.job_id == job.id).order_by(EvalOutput.id)).all()
    return build(scores, outputs, list(stored_spec(job).models))


def progress(session: Session, job: Job) -> Progress:
    """Answers stored of rows × models, with this attempt's rate and ETA (``studio.jobs.progress``)."""
    return row_progress(session, job, utcnow())


def dataset_leaderboard(session: Session, snapshot_id: str, limit_runs: int = 200) -> dict[str, Any]:
    """Every finished-or-running eval on one snapshot, pooled. Models are keyed by the version that
    answered (``rev@2``, not ``rev``), so runs months apart compare the same weights."""
    jobs = [j for j in session.scalars(select(Job).where(Job.kind == "eval").order_by(Job.id.desc())
                                       .limit(limit_runs)) if EvalResult.of(j).snapshot_id == snapshot_id]
    ids = [j.id for j in jobs]
    if not ids:
        return {"snapshot_id": snapshot_id, "runs": [], **build([], [], [])}
    version = {(r.job_id, r.datapoint, r.model): r.model_version or r.model for r in session.execute(
        select(EvalOutput.job_id, EvalOutput.datapoint, EvalOutput.model, EvalOutput.model_version)
        .where(EvalOutput.job_id.in_(ids)))}
    scores = [(job_id, dp, version.get((job_id, dp, model), model), scorer, score, status)
              for job_id, dp, model, scorer, score, status in session.execute(
                  select(EvalScore.job_id, EvalScore.datapoint, EvalScore.model, EvalScore.scorer,
                         EvalScore.score, EvalScore.status).where(EvalScore.job_id.in_(ids)))]
    outputs = [(mv or m, lat, cost, hit, err) for m, mv, lat, cost, hit, err in session.execute(
        select(EvalOutput.model, EvalOutput.model_version, EvalOutput.latency_ms, EvalOutput.cost_usd,
               EvalOutput.cache_hit, EvalOutput.error).where(EvalOutput.job_id.in_(ids)))]
    return {"snapshot_id": snapshot_id, "runs": ids, **build(scores, outputs, [])}


def version_scores(session: Session, refs: list[str]) -> dict[str, list[VersionScore]]:
    """Each registered version's eval scores (``name@N`` → the mean of every scorer of every eval
    that answered as it, newest eval first): what ``studio jobs compare`` shows of a run's versions
    (``studio.train.compare`` is handed this function)."""
    answered = func.coalesce(EvalOutput.model_version, EvalOutput.model)
    scores: dict[str, list[tuple]] = {}
    if refs:
        for ref, eval_id, scorer, mean, n in session.execute(
                select(answered, EvalScore.job_id, EvalScore.scorer, func.avg(EvalScore.score),
                       func.count(EvalScore.score))
                .join(EvalOutput, and_(EvalOutput.job_id == EvalScore.job_id,
                                       EvalOutput.datapoint == EvalScore.datapoint,
                                       EvalOutput.model == EvalScore.model))
                .where(answered.in_(refs))
                .group_by(answered, EvalScore.job_id, EvalScore.scorer)
                .order_by(EvalScore.job_id.desc(), EvalScore.scorer)):
            scores.setdefault(ref, []).append((eval_id, scorer, mean, n))
    evals = {j.id: j for j in session.scalars(select(Job).where(
        Job.id.in_({e for rows_ in scores.values() for e, *_ in rows_})))} if scores else {}
    return {ref: [VersionScore(eval_id=e, dataset=stored_spec(evals[e]).dataset if e in evals else None,
                               snapshot_id=EvalResult.of(evals[e]).snapshot_id if e in evals else None,
                               scorer=scorer, mean=None if mean is None else float(mean), n=n)
                  for e, scorer, mean, n in rows_]
            for ref, rows_ in scores.items()}
