"""Rows for the loop's data tests, made through the studio's own service functions: registry versions
(``register_version``, ``gated_promote``), the canary's experiment (``create_experiment``), the
completion log (``write_completions``, the Router's writer) and feedback (``add_feedback``, what
``/v1/feedback`` calls). Times are a virtual clock: each row carries the time it is given."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import yaml
from sqlalchemy import select

from studio.evals.gate import gated_promote
from studio.experiments.ab import ArmSpec, ExperimentSpec, create_experiment
from studio.experiments.completions import FeedbackSpec, add_feedback, prompt_text, write_completions, write_log_rows
from studio.loops import repository as repo
from studio.loops.spec import LoopSpec
from studio.loops.states import Reason, State
from studio.recipes import apply_overrides
from studio.registry.versions import register_version
from studio.store.db import session_scope
from studio.store.log_models import RequestFailure
from studio.store.loop_models import LoopTransition

SHIPPED = Path(__file__).resolve().parents[2] / "configs" / "loops" / "reverse_tiny.yaml"
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=timezone.utc)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def loop_spec(served: str = "svc", name: str = "svc-loop", **changes) -> LoopSpec:
    data = yaml.safe_load(SHIPPED.read_text())
    data.update(name=name, served_name=served)
    return LoopSpec.model_validate(apply_overrides(data, [f"{k}={v}" for k, v in changes.items()]))


def register(url: str, name: str = "svc", versions: int = 2, champion: int = 1) -> None:
    with session_scope(url) as s:
        for _ in range(versions):
            register_version(s, name=name, base_model="tiny", method="sft", adapter_type="lora", uri=f"/a/{name}")
        gated_promote(s, f"{name}@{champion}", by="admin")


def completion(cid: str, version: str, when: datetime, *, experiment: str | None = None, user: str | None = None,
               prompt: str = "reverse: 1 2", response: str = "2 1", latency_ms: float = 100.0,
               tokens: int | None = 4) -> dict:
    messages = [{"role": "user", "content": prompt}]
    return {"id": cid, "endpoint": "chat", "requested_model": experiment or version, "experiment": experiment,
            "arm": version if experiment else None, "model_version": version, "prompt": messages,
            "prompt_text": prompt_text("chat", messages), "response": response, "latency_ms": latency_ms,
            "ttft_ms": 10.0, "output_tokens": tokens, "user": user, "owner_key_id": None, "created_at": when}


def log(url: str, rows: list[dict]) -> None:
    assert write_completions(url, rows) == len(rows)


def failure(version: str, when: datetime, *, experiment: str | None = None, user: str | None = None,
            code: int = 500, latency_ms: float = 50.0) -> dict:
    """A routed request that failed, as ``RouterClient`` reports it to the Router's recorder."""
    return {"endpoint": "chat", "requested_model": experiment or version, "experiment": experiment,
            "arm": version if experiment else None, "model_version": version, "error_code": code,
            "error": "model version cannot be served", "latency_ms": latency_ms, "user": user,
            "owner_key_id": None, "created_at": when}


def log_failures(url: str, rows: list[dict]) -> None:
    assert write_log_rows(url, [(RequestFailure, r) for r in rows]) == len(rows)


def rate(url: str, cid: str, when: datetime, rating: float | None = None, preferred: str | None = None) -> None:
    with session_scope(url) as s:
        fb = add_feedback(s, FeedbackSpec(completion_id=cid, rating=rating, preferred_completion_id=preferred),
                          key_name="user")
        fb.created_at = when  # the virtual clock


def experiment(url: str, alias: str, arms: dict[str, float]) -> None:
    with session_scope(url) as s:
        create_experiment(s, ExperimentSpec(alias=alias, arms=[ArmSpec(model=m, weight=w) for m, w in arms.items()]))


def generation(url: str, spec: LoopSpec) -> int:
    with session_scope(url) as s:
        loop = repo.create_loop(s, spec, created_by="admin")
        return repo.start_generation(s, loop, repo.frozen_config(spec), actor="scheduler").id


TO_CANARY = [(State.WATCHING, State.TRIGGERED, Reason.TRIGGER_MANUAL), (State.TRIGGERED, State.SNAPSHOT, Reason.STEP_DONE),
             (State.SNAPSHOT, State.TRAINING, Reason.STEP_DONE), (State.TRAINING, State.GATE, Reason.STEP_DONE),
             (State.GATE, State.CANARY, Reason.SHADOW_SKIPPED)]


def move(url: str, gen_id: int, frm: State, to: State, why: Reason, when: datetime, **values) -> None:
    """A move of the generation through the repository, its transition row dated ``when``."""
    with session_scope(url) as s:
        repo.move(s, gen_id, frm, to, why, actor="scheduler", values=values or None)
        row = s.scalars(select(LoopTransition).where(LoopTransition.generation_id == gen_id)
                        .order_by(LoopTransition.id.desc()).limit(1)).one()
        row.at = when
