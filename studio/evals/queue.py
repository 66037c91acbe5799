"""What the API and the CLI share about eval runs: check a spec up front, queue it as a job of kind
``eval``, list and show runs.

Everything that can be known before a run starts is checked here, so a bad spec never becomes a
job: the dataset exists and has rows, scorers that need a reference get one, every model (and
judge) is a name the gateway serves, a JSON schema is a valid schema, an lm_eval task exists."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from studio.errors import NotFound, StudioError
from studio.evals.data import load_datapoints
from studio.evals.spec import EvalResult, EvalSpec, runs_lm_eval, stored_spec
from studio.jobs.status import create_job
from studio.scorer_specs import check_http_scorer, needs_reference, scorer_name
from studio.store.models import Job

KIND = "eval"


def gateway_models() -> list[str]:
    """Model names the gateway serves (its groups and the studio Router's models)."""
    from studio.gateway import Client, GatewayError

    try:
        with Client(service="eval") as client:
            return client.models()
    except GatewayError as e:
        raise StudioError(f"cannot check the model names: {e.problem}",
                          e.fix or "start the studio with `studio up`", status_code=503) from e


def preflight(session: Session, spec: EvalSpec,
              models_available: Callable[[], list[str]] | None = gateway_models) -> dict[str, Any]:
    """Refuse a spec that cannot run (``StudioError`` naming the problem and the fix); return what
    it resolved: ``{"dataset": name@N or snapshot id, "snapshot_id", "rows"}`` (lm_eval: the
    dataset only when one is given, no rows: the tasks' documents are counted when they run)."""
    if runs_lm_eval(spec):
        return _preflight_lm_eval(session, spec, models_available)
    ref, points = load_datapoints(session, spec)
    where = f"dataset {spec.dataset!r} (split {spec.split}{f', limit {spec.limit}' if spec.limit else ''})"
    if not points:
        raise StudioError(f"{where} has 0 rows to evaluate",
                          "pick a dataset or split with rows (see `studio data show NAME`)")
    missing = sum(1 for p in points if p.reference is None)
    for s in spec.scorers:
        if s.type == "http":  # the evaluator URL passes the egress guard before a job exists
            check_http_scorer(s)
        if needs_reference(s) and missing:
            raise StudioError(
                f"scorer {scorer_name(s)!r} ({s.type}) compares with a reference, but {missing} of "
                f"{len(points)} rows of {where} have none (kind {ref.snapshot.kind})",
                "evaluate a prompt_completion dataset or chat rows ending in an assistant turn, or "
                "use scorers without a reference (regex, json, judge, http)")
        if s.type == "json" and s.json_schema is not None:
            import jsonschema

            try:
                jsonschema.validators.validator_for(s.json_schema).check_schema(s.json_schema)
            except jsonschema.SchemaError as e:
                raise StudioError(f"scorer {scorer_name(s)!r}: the JSON schema is invalid: {e.message}",
                                  "fix the schema") from e
    _check_models(spec, models_available)
    dataset = f"{ref.name}@{ref.version}" if ref.name else ref.snapshot.id
    return {"dataset": dataset, "snapshot_id": ref.snapshot.id, "rows": len(points)}


def _preflight_lm_eval(session: Session, spec: EvalSpec,
                       models_available: Callable[[], list[str]] | None) -> dict[str, Any]:
    from studio.data.snapshots import resolve_snapshot
    from studio.evals.harness import check_tasks

    check_tasks(spec)
    _check_models(spec, models_available)
    if spec.dataset is None:
        return {"dataset": None, "snapshot_id": None, "rows": None}
    ref = resolve_snapshot(session, spec.dataset)  # recorded (a gate's golden dataset), not read
    return {"dataset": f"{ref.name}@{ref.version}" if ref.name else ref.snapshot.id,
            "snapshot_id": ref.snapshot.id, "rows": None}


def _check_models(spec: EvalSpec, models_available: Callable[[], list[str]] | None) -> None:
    if models_available is not None:
        served = set(models_available())
        wanted = list(spec.models) + [s.model for s in spec.scorers if s.type == "judge"]
        unknown = [m for m in dict.fromkeys(wanted) if m not in served and not _pinned_version_of(m, served)]
        if unknown:
            raise NotFound(f"the gateway serves no model named {', '.join(map(repr, unknown))}",
                           f"use one of: {', '.join(sorted(served)) or '(none)'}; name@N for a registry "
                           "version (see `studio models ls`)")


def _pinned_version_of(model: str, served: set[str]) -> bool:
    # The gateway lists registry names; name@N of a listed name is served too (the router resolves
    # it, and answers 404 for a version that does not exist — checked against the registry here).
    name, sep, v = model.partition("@")
    return bool(sep) and name in served and v.isdigit()


def enqueue_eval(session: Session, spec: EvalSpec, submitted_by: str | None,
                 models_available: Callable[[], list[str]] | None = gateway_models,
                 owner_key_id: int | None = None) -> Job:
    """Preflight, then store the run QUEUED with the dataset pinned to name@N."""
    resolved = preflight(session, spec, models_available)
    for m in spec.models:
        if "@" in m:
            _check_registry_version(session, m)
    pinned = spec.model_copy(deep=True)
    pinned.dataset = resolved["dataset"]
    job = create_job(session, name=spec.name, spec=pinned.model_dump(mode="json", by_alias=True),
                     max_retries=spec.max_retries, submitted_by=submitted_by, kind=KIND,
                     owner_key_id=owner_key_id)
    if resolved["rows"] is not None:
        total = resolved["rows"] * len(spec.models)
    else:  # lm_eval: at most limit documents per task and model; unknown without a limit
        total = spec.limit * len(spec.models) * len(spec.scorers) if spec.limit else None
    job.result = EvalResult(snapshot_id=resolved["snapshot_id"], rows=resolved["rows"], done=0,
                            total=total).dump()
    session.flush()
    return job


def _check_registry_version(session: Session, ref: str) -> None:
    from studio.registry.versions import get_version

    name, _, v = ref.partition("@")
    try:
        get_version(session, ref)
    except NotFound:
        raise NotFound(f"model {name!r} has no version {v}", "see `studio models ls`") from None


def get_eval(session: Session, eval_id: int) -> Job:
    job = session.get(Job, eval_id)
    if job is None or job.kind != KIND:
        raise NotFound(f"eval {eval_id} does not exist", "see `studio eval ls` (or GET /api/evals)")
    return job


def list_evals(session: Session, limit: int = 100, offset: int = 0, dataset: str | None = None) -> list[Job]:
    stmt = select(Job).where(Job.kind == KIND).order_by(Job.id.desc()).limit(limit).offset(offset)
    jobs = list(session.scalars(stmt))
    if dataset:
        jobs = [j for j in jobs if (stored_spec(j).dataset or "").partition("@")[0] == dataset.partition("@")[0]]
    return jobs
