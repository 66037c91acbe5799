"""A small world for the loop runner's tests, on a virtual clock: a real database, the real runner,
repository, looks, statistics, triggers, snapshot, registry, experiments, eval and job rows. Fakes
stand only where the world outside is: ``EdgeActions`` queues the training job as the training
queue stores it but without preflight's look at model files, answers ``/v1/models`` from a list and
records each change it makes; ``World.run_jobs`` plays Ray (it ends queued training and eval jobs
as the job entrypoints would record them); ``World.serve`` plays users of the canary's experiment
(each request routed by the Router's own ``pick_arm`` from the stored weights)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

import numpy as np
from sqlalchemy import select

from studio.data.ingest import ingest_file
from studio.evals.spec import EvalResult
from studio.experiments.ab import pick_arm
from studio.experiments.completions import FeedbackSpec, add_feedback
from studio.jobs.status import JobStatus, create_job, transition
from studio.loops import repository as repo
from studio.loops.actions import ServiceActions
from studio.loops.runner import Runner, RunnerConfig
from studio.registry.versions import register_version
from studio.store.db import session_scope
from studio.store.loop_models import Loop, LoopGeneration
from studio.store.models import EvalOutput, EvalScore, Experiment, Job
from studio.train.spec import TrainResult, TrainSpec
from tests.loops.traffic import at, completion, failure, log, log_failures, loop_spec, rate, register

GOLDEN = [{"messages": [{"role": "user", "content": f"reverse: {i} 9"}, {"role": "assistant", "content": f"9 {i}"}]}
          for i in range(10)]
# Regression cases for a loop's ``gate.must_pass`` (``must-pass``; its prompts are not the feedback's).
MUST_PASS = [{"prompt": f"reverse: 7 {i} 3", "completion": f"3 {i} 7"} for i in range(4)]
TRAIN = TrainSpec(name="svc-dpo", method="dpo", base_model="/models/tiny", data={"dataset": "placeholder"})
# Small enough to decide in a few dozen virtual minutes, with the shipped rule's shape.
FAST = {"gate.dataset": "golden", "trigger.min_new_rated": 4, "trigger.drift_margin": "null", "canary.steps": "[20, 50]",
        "canary.min_hold_s": 60, "canary.min_rated_per_arm": 8, "decision.min_rated_per_arm": 30,
        "decision.tuning_n": 200, "decision.guardrails.min_completions": 10, "decision.no_traffic_s": 600,
        "decision.no_feedback_s": 900, "decision.deadline_s": 1800, "canary.look_every_s": "null", "cooldown_s": 0,
        "train.max_retries": 2}


class EdgeActions(ServiceActions):
    """The real actions on the studio's services, with the outside edges replaced and every change
    that was made recorded (a repeat that changes nothing records nothing)."""

    def __init__(self, served: list[str] | None = None, shadow: tuple[int, int] | None = None):
        super().__init__(models_available=lambda: list(self.served), cluster_gpus=lambda: None)
        self.served = served if served is not None else ["svc"]
        self.shadow = shadow
        self.queued: list[str] = []
        self.splits: list[tuple[str, dict[str, float]]] = []
        self.ended: list[str] = []
        self.promoted: list[str] = []
        self.archived: list[str] = []

    def enqueue_training(self, session, spec, *, submitted_by, owner_key_id):
        self.queued.append(submitted_by)
        return create_job(session, name=spec.name, spec=spec.model_dump(mode="json", by_alias=True),
                          max_retries=spec.max_retries, submitted_by=submitted_by, owner_key_id=owner_key_id)

    def set_split(self, session, alias, arms):
        changed = super().set_split(session, alias, arms)
        if changed:
            self.splits.append((alias, dict(arms)))
        return changed

    def end_split(self, session, alias):
        changed = super().end_split(session, alias)
        if changed:
            self.ended.append(alias)
        return changed

    def promote(self, session, ref, *, by, reason):
        changed = super().promote(session, ref, by=by, reason=reason)
        if changed:
            self.promoted.append(ref)
        return changed

    def archive(self, session, ref, *, by, reason):
        changed = super().archive(session, ref, by=by, reason=reason)
        if changed:
            self.archived.append(ref)
        return changed

    def shadow_pairs(self, session, gen):
        return self.shadow


@dataclass
class World:
    settings: object
    actions: EdgeActions = field(default_factory=EdgeActions)
    train_ok: list[bool] = field(default_factory=list)  # outcome of each training job in turn (default: ok)
    gate: tuple[float, float] = (0.9, 0.5)  # exact match of candidate and champion on the golden set
    guards: dict[str, tuple[float, float]] = field(default_factory=dict)  # another scorer's means (default 1, 1)
    must_pass_wrong: set[int] = field(default_factory=set)  # must-pass items the candidate answers wrong
    p_up: dict[str, float] = field(default_factory=lambda: {"champion": 0.3, "candidate": 0.9})
    rated_share: float = 1.0
    per_tick: int = 40  # requests to the canary's experiment per tick
    empty_candidate: bool = False  # the candidate answers with nothing (an invalid answer)
    failing_candidate: bool = False  # the candidate's engine fails every request (logged as failures)
    follow_weights: bool = True  # False: the split ignores the weights (a broken router)
    seed: int = 0

    def __post_init__(self):
        self.url = self.settings.db_url
        self.rng = np.random.default_rng(self.seed)
        # Users seeded too (their own stream, so the ratings' draws are as before): with random users
        # the split's sample-ratio test saw a chance mismatch in about 1 run in 100 (PAUSED 'srm').
        self.user_rng = np.random.default_rng(self.seed + 10_000)
        self.runner = Runner(self.settings, self.actions, RunnerConfig())

    # --- set-up ---------------------------------------------------------------------------------

    def setup(self, write_rows, **changes) -> None:
        """svc@1 the champion, a golden set and must-pass items, a loop on svc, and a few preference
        pairs on svc@1."""
        register(self.url, versions=1)
        ingest_file(write_rows("golden.jsonl", GOLDEN), "golden", self.settings)
        ingest_file(write_rows("must_pass.jsonl", MUST_PASS), "must-pass", self.settings)
        self.spec = loop_spec(**{**FAST, **changes})
        with session_scope(self.url) as s:
            repo.create_loop(s, self.spec, train=TRAIN.model_dump(mode="json"), created_by="admin")
        self.feedback(-600)

    def feedback(self, t: float, pairs: int = 3) -> None:
        """Answers of the champion to ``pairs`` prompts, one rated up and one down: preference pairs."""
        rows = []
        for i in range(pairs):
            prompt = f"reverse: {i} {int(t) % 97} 1"
            rows += [completion(f"p{uuid.uuid4().hex}", "svc@1", at(t), prompt=prompt, response=f"1 {i}"),
                     completion(f"p{uuid.uuid4().hex}", "svc@1", at(t), prompt=prompt, response=f"{i} 1")]
        log(self.url, rows)
        for j, row in enumerate(rows):
            rate(self.url, row["id"], at(t + 1), rating=1 if j % 2 else -1)

    # --- the clock ------------------------------------------------------------------------------

    def tick(self, t: float, restart: bool = False):
        """One tick at ``t`` seconds: users of the canary (while there is one), a runner pass, Ray.
        ``restart``: the pass runs in a fresh runner, and once more in another fresh one at the same
        moment (a scheduler killed and restarted mid-pass), which must find nothing to do."""
        self.serve(t)
        if restart:
            report = Runner(self.settings, self.actions).run_pass(at(t))
            again = Runner(self.settings, self.actions).run_pass(at(t))
            assert not again.moves and not again.started and not again.errors, again
        else:
            report = self.runner.run_pass(at(t))
        assert not report.errors, report.errors
        self.run_jobs()
        return report

    def run_until(self, states: set[str], ticks: int = 80, every_s: float = 60.0, start: float = 0.0,
                  number: int = 1, restart: bool = False) -> float:
        """Tick until generation ``number`` is in one of ``states``; the time it got there."""
        t = start
        for _ in range(ticks):
            self.tick(t, restart)
            gen = self.generation(number)
            if gen is not None and gen.state in states:
                return t
            t += every_s
        raise AssertionError(f"generation {number} reached none of {states} in {ticks} ticks: {self.timeline(number)}")

    # --- the world outside ----------------------------------------------------------------------

    def serve(self, t: float) -> None:
        """The half minute before ``t``: requests to the canary's experiment at the weights in force
        (set by the last pass), most of them rated before ``t``."""
        gen = self.generation()
        if gen is None or gen.state not in ("CANARY", "PAUSED") or not gen.canary_alias:
            return
        with session_scope(self.url) as s:
            exp = s.scalars(select(Experiment).where(Experiment.alias == gen.canary_alias)).first()
            if exp is None or exp.status != "active":
                return
            arms = exp.arms
        rows, failed = [], []
        for i in range(self.per_tick):
            user = f"user-{int(self.user_rng.integers(1 << 40)):010x}"
            ref = pick_arm(gen.canary_alias, arms, user) if self.follow_weights else arms[i % 2]["model"]
            empty = self.empty_candidate and ref == gen.candidate
            when = at(t - 30 + i * 30 / self.per_tick)
            if self.failing_candidate and ref == gen.candidate:
                failed.append(failure(ref, when, experiment=gen.canary_alias, user=user))
                continue
            rows.append(completion(f"c{uuid.uuid4().hex}", ref, when, experiment=gen.canary_alias,
                                   user=user, response="" if empty else "2 1"))
        log(self.url, rows)
        log_failures(self.url, failed)
        with session_scope(self.url) as s:
            for row in rows:
                if self.rng.random() >= self.rated_share:
                    continue
                p = self.p_up["candidate" if row["model_version"] == gen.candidate else "champion"]
                fb = add_feedback(s, FeedbackSpec(completion_id=row["id"], rating=1 if self.rng.random() < p else -1),
                                  key_name="user")
                fb.created_at = at(t - 1)

    def run_jobs(self, only: str | None = None) -> None:
        """Ray's side: every queued job (whose key contains ``only``, if given) runs to its end,
        recorded as its entrypoint records it."""
        with session_scope(self.url) as s:
            for job in s.scalars(select(Job).where(Job.status == JobStatus.QUEUED.value).order_by(Job.id)).all():
                if only is not None and only not in (job.submitted_by or ""):
                    continue
                transition(s, job.id, JobStatus.STARTING, "submitted")
                transition(s, job.id, JobStatus.RUNNING, "running")
                job.attempts += 1
                if job.kind == "eval":
                    self._score(s, job)
                    transition(s, job.id, JobStatus.CHECKPOINTING, "writing scores")
                    transition(s, job.id, JobStatus.SUCCEEDED, "scored")
                    continue
                ok = self.train_ok.pop(0) if self.train_ok else True
                if ok:
                    spec = TrainSpec.model_validate(job.spec)
                    mv = register_version(s, name=spec.name, base_model=spec.base_model, method="dpo",
                                          adapter_type="lora", uri=f"/a/{spec.name}", job_id=job.id)
                    s.flush()
                    job.result = TrainResult(model=f"{mv.name}@{mv.version}").dump()
                    transition(s, job.id, JobStatus.CHECKPOINTING, "saving")
                    transition(s, job.id, JobStatus.SUCCEEDED, "registered")
                else:
                    transition(s, job.id, JobStatus.FAILED, "the Ray node died")

    def _score(self, s, job: Job) -> None:
        models, scorers = job.spec["models"], [sc.get("name") or sc["type"] for sc in job.spec["scorers"]]
        rows = EvalResult.of(job).rows
        if job.spec["dataset"].startswith("must-pass@"):  # the candidate alone, answers stored as the runner does
            for i, row in enumerate(MUST_PASS[:rows]):
                right = i not in self.must_pass_wrong
                s.add(EvalOutput(job_id=job.id, datapoint=i, model=models[0], model_version=models[0],
                                 input=[{"role": "user", "content": row["prompt"]}], reference=row["completion"],
                                 output=row["completion"] if right else "3 7"))
                s.add(EvalScore(job_id=job.id, datapoint=i, model=models[0], scorer=scorers[0],
                                score=1.0 if right else 0.0))
            return
        for scorer in scorers:
            means = self.gate if scorer == "exact_match" else self.guards.get(scorer, (1.0, 1.0))
            for model, mean in zip(models, means):
                for i in range(rows):
                    s.add(EvalScore(job_id=job.id, datapoint=i, model=model, scorer=scorer,
                                    score=1.0 if i < round(mean * rows) else 0.0))

    # --- reading --------------------------------------------------------------------------------

    def generation(self, number: int | None = None) -> LoopGeneration | None:
        with session_scope(self.url) as s:
            q = select(LoopGeneration).order_by(LoopGeneration.number.desc())
            if number is not None:
                q = q.where(LoopGeneration.number == number)
            gen = s.scalars(q.limit(1)).first()
            if gen is not None:
                s.expunge(gen)
            return gen

    def loop(self) -> Loop:
        with session_scope(self.url) as s:
            loop = s.scalars(select(Loop)).one()
            s.expunge(loop)
            return loop

    def timeline(self, number: int | None = None) -> list[tuple[str | None, str, str]]:
        gen = self.generation(number)
        if gen is None:
            return []
        with session_scope(self.url) as s:
            return [(t.from_state, t.to_state, t.reason) for t in repo.transitions(s, gen.id)]

    def jobs(self) -> list[tuple[str, str, str]]:
        with session_scope(self.url) as s:
            return [(j.kind, j.submitted_by, j.status) for j in s.scalars(select(Job).order_by(Job.id))]
