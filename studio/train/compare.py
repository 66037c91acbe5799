"""Compare training runs (``studio jobs compare A B …``, ``GET /api/jobs/compare?ids=A,B``, the UI's
compare view): their recipes side by side (nested fields flattened to dotted keys, the differing ones
marked), their loss curves (every logged series whose name holds "loss": loss, eval_loss, …), final
metrics, wall time, tokens/s, peak memory, and the eval scores of the versions they registered.

A number a run did not record is null (shown as "—"), never a guess. The queries are per comparison,
not per run: a handful whatever the number of runs (2 to ``MAX_RUNS``).
"""

from __future__ import annotations

import re
import statistics
from collections.abc import Callable
from datetime import datetime
from typing import Any

from pydantic import Field
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from studio.errors import StudioError
from studio.jobs.queue import HIDDEN_SPEC, get_job, visible_spec
from studio.jobs.status import JobStatus
from studio.jobs.views import IsoDateTime, MetricPoint, View
from studio.store.models import ApiKey, Job, JobEvent, JobMetric, ModelVersion, utcnow
from studio.train.spec import TrainResult

MIN_RUNS, MAX_RUNS = 2, 8
MAX_JOB_ID = 2**31 - 1  # the jobs.id column's range on PostgreSQL
CURVE = re.compile(r"loss", re.I)  # loss, eval_loss, train/loss, …: whatever the run logged
PEAK_MEMORY = re.compile(r"peak.*(mem|rss)|mem.*peak|max_memory", re.I)
TERMINAL = (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED)


class RecipeField(View):
    """One dotted field of the recipes (``hyper.learning_rate``), one value per run."""

    key: str = Field(description="The field, nested keys joined with dots (lists are one value).")
    values: list[Any] = Field(description="Its value in each run, in the order the runs were asked for; null "
                              "where the recipe lacks it or is hidden from the caller.")
    differs: bool = Field(description="True when the runs whose recipe the caller sees do not all agree.")


class VersionScore(View):
    """The mean of one scorer over one eval run of a registered version."""

    eval_id: int = Field(description="The eval job.")
    dataset: str | None = Field(description="The eval's dataset, as its spec names it.")
    snapshot_id: str | None = Field(description="The snapshot the eval read.")
    scorer: str = Field(description="The scorer's name.")
    mean: float | None = Field(description="Mean score over the scored answers; null when none was scored.")
    n: int = Field(description="Answers scored.")


# name@N refs → each ref's eval scores, newest eval first (``studio.evals.leaderboard.version_scores``).
VersionScores = Callable[[Session, list[str]], dict[str, list[VersionScore]]]


class RegisteredVersion(View):
    """A version the run registered, with the eval scores the studio holds for it."""

    ref: str = Field(description="name@N.")
    stage: str = Field(description="candidate, champion or archived.")
    metrics: dict[str, float] = Field(description="The numbers recorded at registration (e.g. eval_after's "
                                      "exact_match).")
    scores: list[VersionScore] = Field(description="Its eval runs' scores (registry + evals), newest eval first.")


class PeakMemory(View):
    key: str = Field(description="The metric the run recorded it under (e.g. peak_memory_mb).")
    value: float = Field(description="Its value, in the unit its name says.")


class ComparedRun(View):
    """One run of a comparison."""

    id: int = Field(description="The job.")
    name: str = Field(description="The name given at submission (the registry name).")
    method: str | None = Field(description="sft, dpo, grpo, cpt (the job list shows it to every team key).")
    status: JobStatus = Field(description="Where the job is in its state machine.")
    submitted_by: str | None = Field(description="The key that submitted it.")
    recipe_hidden: str | None = Field(default=None, description="Present when the recipe is hidden from the "
                                      "caller: why (a job's spec is its owner's and admins').")
    started_at: IsoDateTime | None = Field(description="Its first attempt's start (STARTING), if it started.")
    ended_at: IsoDateTime | None = Field(description="When it ended (its last terminal event), if it did.")
    wall_s: float | None = Field(description="Seconds from the first start to the end (to now while it runs).")
    tokens_per_s: float | None = Field(description="The run's training throughput: the final figure it "
                                       "recorded, else the mean of the logged tokens_per_s; null when none.")
    peak_memory: PeakMemory | None = Field(description="A peak-memory figure the run recorded; null when none.")
    final_metrics: dict[str, float] = Field(description="The last logged value of every metric (at its highest "
                                            "step), overridden by the final numbers of its result.")
    curves: dict[str, list[MetricPoint]] = Field(description="Every logged series whose name holds 'loss', one "
                                                 "point per step (a resumed step: the latest attempt's).")
    versions: list[RegisteredVersion] = Field(description="The versions it registered.")


class Comparison(View):
    """Training runs side by side (``GET /api/jobs/compare``)."""

    runs: list[ComparedRun] = Field(description="The runs, in the order asked for.")
    recipe: list[RecipeField] = Field(description="Every recipe field of any run, in key order.")
    curve_keys: list[str] = Field(description="The series any run logged that hold 'loss' (one chart each).")


def parse_ids(raw: list[str]) -> list[int]:
    """Job ids from ``A,B,C`` (and/or repeated values), checked: 2 to 8 distinct positive integers."""
    parts = [p.strip() for item in raw for p in item.split(",") if p.strip()]
    fix = f"name {MIN_RUNS} to {MAX_RUNS} training job ids, e.g. ids=12,15 (`studio jobs ls` lists them)"
    ids = []
    for p in parts:
        if not (p.isascii() and p.isdigit()) or not 0 < int(p) <= MAX_JOB_ID:
            raise StudioError(f"{p!r} is not a job id", fix)
        ids.append(int(p))
    if len(ids) < MIN_RUNS:
        raise StudioError(f"compare needs at least {MIN_RUNS} jobs, got {len(ids)}", fix)
    if len(ids) > MAX_RUNS:
        raise StudioError(f"compare takes at most {MAX_RUNS} jobs, got {len(ids)}", fix)
    twice = sorted({i for i in ids if ids.count(i) > 1})
    if twice:
        raise StudioError(f"job {twice[0]} is listed twice", "name each job once")
    return ids


def flatten(spec: Any, prefix: str = "") -> dict[str, Any]:
    """``{"hyper": {"epochs": 3}}`` → ``{"hyper.epochs": 3}``; lists and scalars are leaves."""
    if not isinstance(spec, dict):
        return {prefix: spec} if prefix else {}
    out: dict[str, Any] = {}
    for k, v in spec.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, dict) and v:
            out.update(flatten(v, key))
        else:
            out[key] = v
    return out


_ABSENT = object()  # a field one recipe lacks differs from a field set to null


def recipe_fields(recipes: list[dict[str, Any] | None]) -> list[RecipeField]:
    """The union of the recipes' dotted fields; a hidden recipe (None) neither agrees nor differs."""
    flat = [None if r is None else flatten(r) for r in recipes]
    keys = sorted({k for f in flat if f is not None for k in f})
    out = []
    for key in keys:
        values = [None if f is None else f.get(key) for f in flat]
        seen = [f.get(key, _ABSENT) for f in flat if f is not None]
        out.append(RecipeField(key=key, values=values, differs=any(v != seen[0] for v in seen[1:])))
    return out



def _training_jobs(session: Session, ids: list[int]) -> list[Job]:
    jobs = [get_job(session, i) for i in ids]  # 404 naming the first unknown id
    for job in jobs:
        if job.kind != "train":
            raise StudioError(f"job {job.id} is not a training job (its kind is {job.kind}); compare takes "
                              "training jobs",
                              f"drop {job.id} from the ids (`studio jobs ls` shows each job's kind)")
    return jobs


def _times(session: Session, ids: list[int]) -> dict[int, tuple[datetime | None, datetime | None]]:
    """Each job's first STARTING and last terminal event."""
    first = dict(session.execute(select(JobEvent.job_id, func.min(JobEvent.at)).where(
        JobEvent.job_id.in_(ids), JobEvent.to_status == JobStatus.STARTING).group_by(JobEvent.job_id)).all())
    end = dict(session.execute(select(JobEvent.job_id, func.max(JobEvent.at)).where(
        JobEvent.job_id.in_(ids), JobEvent.to_status.in_(TERMINAL)).group_by(JobEvent.job_id)).all())
    return {i: (first.get(i), end.get(i)) for i in ids}


def _series(session: Session, ids: list[int]) -> dict[int, dict[str, list[MetricPoint]]]:
    """Each job's metrics, one point per (key, step): the latest attempt's where a resume repeated it."""
    out: dict[int, dict[str, dict[int, MetricPoint]]] = {i: {} for i in ids}
    for m in session.scalars(select(JobMetric).where(JobMetric.job_id.in_(ids))
                             .order_by(JobMetric.attempt, JobMetric.step, JobMetric.id)):
        out[m.job_id].setdefault(m.key, {})[m.step] = MetricPoint(step=m.step, value=m.value, attempt=m.attempt,
                                                                  at=m.at)
    return {i: {k: [by_step[s] for s in sorted(by_step)] for k, by_step in keys.items()} for i, keys in out.items()}


def _versions(session: Session, jobs: list[Job], scores: VersionScores) -> dict[int, list[RegisteredVersion]]:
    """The versions each job registered (by ``model_versions.job_id``) and every eval score of each."""
    ids = [j.id for j in jobs]
    rows = list(session.scalars(select(ModelVersion).where(ModelVersion.job_id.in_(ids))
                                .order_by(ModelVersion.job_id, ModelVersion.version)))
    by_ref = scores(session, [f"{mv.name}@{mv.version}" for mv in rows]) if rows else {}
    out: dict[int, list[RegisteredVersion]] = {i: [] for i in ids}
    for mv in rows:
        ref = f"{mv.name}@{mv.version}"
        out[mv.job_id].append(RegisteredVersion(ref=ref, stage=mv.stage, metrics={
            k: float(v) for k, v in (mv.metrics or {}).items() if isinstance(v, (int, float))},
            scores=by_ref.get(ref, [])))
    return out


def _final_metrics(job: Job, series: dict[str, list[MetricPoint]]) -> dict[str, float]:
    last = {k: ps[-1].value for k, ps in series.items() if ps}
    recorded = {k: float(v) for k, v in TrainResult.of(job).metrics.items() if isinstance(v, (int, float))}
    return dict(sorted({**last, **recorded}.items()))


def _tokens_per_s(job: Job, series: dict[str, list[MetricPoint]]) -> float | None:
    final = TrainResult.of(job).metrics.get("tokens_per_s")
    if isinstance(final, (int, float)) and final > 0:
        return float(final)
    logged = [p.value for p in series.get("tokens_per_s", [])]
    return statistics.fmean(logged) if logged else None


def _peak_memory(final: dict[str, float]) -> PeakMemory | None:
    key = next((k for k in final if PEAK_MEMORY.search(k)), None)
    return None if key is None else PeakMemory(key=key, value=final[key])


def compare_runs(session: Session, ids: list[int], key: ApiKey | None = None, now: datetime | None = None, *,
                 scores: VersionScores) -> Comparison:
    """Runs ``ids`` side by side, as ``key`` may see them (None: trusted, the CLI in-process): the
    recipe of a job ``key`` does not own is hidden, as GET /api/jobs/{id} hides it. ``scores`` gives
    the eval scores of the registered versions (``studio.evals.leaderboard.version_scores``, handed in
    by the caller: evaluation sits above training)."""
    now = now or utcnow()
    jobs = _training_jobs(session, ids)
    times, series, versions = _times(session, ids), _series(session, ids), _versions(session, jobs, scores)
    recipes = [visible_spec(j, key) for j in jobs]
    runs = []
    for job, recipe in zip(jobs, recipes):
        started, ended = times[job.id]
        if ended is not None and job.status not in TERMINAL:
            ended = None  # a failed attempt that is being retried has not ended the run
        final = _final_metrics(job, series[job.id])
        runs.append(ComparedRun(
            id=job.id, name=job.name, method=(job.spec or {}).get("method"), status=job.status,
            submitted_by=job.submitted_by, recipe_hidden=HIDDEN_SPEC if recipe is None else None,
            started_at=started, ended_at=ended,
            wall_s=None if started is None else ((ended or now) - started).total_seconds(),
            tokens_per_s=_tokens_per_s(job, series[job.id]), peak_memory=_peak_memory(final), final_metrics=final,
            curves={k: ps for k, ps in series[job.id].items() if CURVE.search(k)}, versions=versions[job.id]))
    curve_keys = sorted({k for r in runs for k in r.curves}, key=lambda k: (k != "loss", k))
    return Comparison(runs=runs, recipe=recipe_fields(recipes), curve_keys=curve_keys)
