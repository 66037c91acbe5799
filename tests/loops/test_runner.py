"""The loop's runner on a virtual clock (SQLite and PostgreSQL): generations driven through every
path by real passes over a real database — triggers, snapshot, the training and gate jobs' rows,
the canary's experiment, looks and verdicts — with only the outside world played by the test
(``tests/loops/world.py``: Ray ending jobs, users of the canary, ``/v1/models``)."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from studio.errors import Conflict, NotFound
from studio.experiments.ab import get_experiment
from studio.jobs.submission import submitter_key
from studio.keys import create_key
from studio.loops import control
from studio.loops import repository as repo
from studio.loops.actions import ServiceActions
from studio.loops.runner import Runner
from studio.registry.versions import get_version, lineage
from studio.store.db import session_scope
from studio.store.loop_models import LoopLook
from studio.store.models import Job, PromotionEvent
from studio.train.spec import TrainSpec
from tests.loops.traffic import at
from tests.loops.world import EdgeActions, World

pytestmark = pytest.mark.both_databases  # PostgreSQL too: locking, concurrent writers, constraints

TO_CANARY = [(None, "WATCHING", "step_done"), ("WATCHING", "TRIGGERED", "trigger_data"),
             ("TRIGGERED", "SNAPSHOT", "step_done"), ("SNAPSHOT", "TRAINING", "step_done"),
             ("TRAINING", "GATE", "step_done"), ("GATE", "CANARY", "shadow_skipped")]


def _looks(world: World, gen_id: int) -> list[LoopLook]:
    with session_scope(world.url) as s:
        rows = list(s.scalars(select(LoopLook).where(LoopLook.generation_id == gen_id).order_by(LoopLook.id)))
        for r in rows:
            s.expunge(r)
        return rows


def _stage(world: World, ref: str) -> str:
    with session_scope(world.url) as s:
        return get_version(s, ref).stage


def test_a_better_candidate_goes_from_new_feedback_to_promoted(settings, write_rows):
    world = World(settings)
    world.setup(write_rows)
    with session_scope(world.url) as s:
        create_key(s, "root", "admin")
    world.run_until({"PROMOTED", "REFUSED", "ROLLED_BACK", "FAILED", "CANCELLED", "PAUSED"})
    gen = world.generation()
    assert gen.state == "PROMOTED", world.timeline()
    timeline = world.timeline()
    assert timeline[:6] == TO_CANARY
    assert ("CANARY", "CANARY", "canary_step") in timeline
    assert timeline[-2:] == [("CANARY", "PROMOTING", "verdict_promote"), ("PROMOTING", "PROMOTED", "done")]
    # One training job and one gate eval, each keyed by generation and attempt.
    assert world.jobs() == [("train", "cli:loop:svc-loop:g1:train:a1", "SUCCEEDED"),
                            ("eval", "cli:loop:svc-loop:g1:gate:a1", "SUCCEEDED")]
    with session_scope(world.url) as s:
        job = s.scalars(select(Job).where(Job.kind == "train")).one()
        # A loop the operator created from the CLI has no owner key: its jobs spend as the CLI's do.
        assert submitter_key(s, job).name == "root"
        spec = TrainSpec.model_validate(job.spec)
        # from the champion's adapter, on the generation's snapshot, registered under the served name
        assert (spec.name, spec.init_adapter, spec.data.dataset, spec.max_retries) == ("svc", "svc@1", gen.snapshot_id, 0)
        with pytest.raises(NotFound):  # the split is gone: the bare name is the new champion's again
            get_experiment(s, gen.canary_alias)
        event = s.scalars(select(PromotionEvent).where(PromotionEvent.version == 2)).one()
        assert (event.to_stage, event.outcome, event.by) == ("champion", "promoted", "loop:svc-loop")
        # The new version's lineage names the generation that trained it (issue 23, item 4).
        assert lineage(s, "svc@2")["loop_generation"] == {"loop": "svc-loop", "number": 1, "state": "PROMOTED",
                                                          "champion": "svc@1", "snapshot_id": gen.snapshot_id}
        assert lineage(s, "svc@1")["loop_generation"] is None
        gate_move = [t for t in repo.transitions(s, gen.id) if t.to_state == "CANARY"][0]
        assert "bootstrap interval" in gate_move.detail and "exact_match 0.900 vs champion svc@1 0.500" in gate_move.detail
    assert (gen.candidate, gen.champion, _stage(world, "svc@2"), _stage(world, "svc@1")) == (
        "svc@2", "svc@1", "champion", "archived")
    # The split of the bare served name was set once per step, absolutely, and ended once.
    assert world.actions.splits == [("svc", {"svc@1": 80.0, "svc@2": 20.0}),
                                    ("svc", {"svc@1": 50.0, "svc@2": 50.0})]
    assert world.actions.ended == ["svc"] and world.actions.promoted == ["svc@2"]
    looks = _looks(world, gen.id)
    assert looks[-1].action == "promote" and all(x.action == "wait" for x in looks[:-1])
    with session_scope(world.url) as s:
        assert all(e.agrees for e in repo.explain(s, gen.id))
    assert world.loop().rollbacks_in_a_row == 0


def test_a_candidate_the_gate_refuses_never_takes_traffic(settings, write_rows):
    world = World(settings, gate=(0.4, 0.5))
    world.setup(write_rows)
    world.run_until({"REFUSED"})
    gen = world.generation()
    assert world.timeline()[-1] == ("GATE", "REFUSED", "gate_refused")
    with session_scope(world.url) as s:
        assert "does not beat the champion: exact_match 0.400 vs champion svc@1 0.500" in repo.transitions(s, gen.id)[-1].detail
    assert world.actions.splits == [] and gen.canary_alias is None and gen.active_loop_id is None
    assert _stage(world, "svc@1") == "champion"


def test_a_harmful_candidate_is_rolled_back_at_the_first_look_with_enough_answers(settings, write_rows):
    world = World(settings, empty_candidate=True, per_tick=60)
    world.setup(write_rows)
    world.run_until({"ROLLED_BACK", "PROMOTED", "PAUSED"})
    gen = world.generation()
    assert world.timeline()[-2:] == [("CANARY", "ROLLING_BACK", "guardrail"), ("ROLLING_BACK", "ROLLED_BACK", "done")]
    looks = _looks(world, gen.id)
    # Every earlier look lacked the guardrail's minimum on an arm; the first that had it rolled back.
    assert looks[-1].action == "roll_back" and "error_rate" in looks[-1].verdict["detail"]
    minimum = world.spec.decision.guardrails.min_completions
    assert min(looks[-1].look["champion"]["completions"], looks[-1].look["candidate"]["completions"]) >= minimum
    assert all(min(x.look["champion"]["completions"], x.look["candidate"]["completions"]) < minimum
               for x in looks[:-1])
    assert world.actions.archived == ["svc@2"] and world.actions.ended == ["svc"]
    assert (_stage(world, "svc@1"), _stage(world, "svc@2")) == ("champion", "archived")
    assert world.loop().rollbacks_in_a_row == 1 and world.loop().status == "active"


def test_no_feedback_pauses_and_never_rolls_back_or_promotes(settings, write_rows):
    world = World(settings, rated_share=0.0)
    world.setup(write_rows)
    t = world.run_until({"PAUSED", "ROLLED_BACK", "PROMOTED"})
    assert world.timeline()[-1] == ("CANARY", "PAUSED", "no_feedback")
    for k in range(1, 6):  # still answered, still unrated: held, not decided
        world.tick(t + 60 * k)
    gen = world.generation()
    assert gen.state == "PAUSED" and gen.paused_from == "CANARY"
    assert not {"PROMOTING", "ROLLING_BACK"} & {to for _, to, _ in world.timeline()}
    world.rated_share = 1.0  # the ratings come back: the runner resumes the canary by itself
    world.run_until({"PROMOTED", "ROLLED_BACK"}, start=t + 360)
    timeline = world.timeline()
    assert ("PAUSED", "CANARY", "resume") in timeline and timeline[-1] == ("PROMOTING", "PROMOTED", "done")


def test_cancelling_a_loop_while_it_trains_cancels_the_job(settings, write_rows):
    world = World(settings)
    world.setup(write_rows)
    world.runner.run_pass(at(0))  # the job is queued; Ray has not started it
    with session_scope(world.url) as s:
        control.cancel_loop(s, "svc-loop", actor="admin", reason="wrong recipe")
    assert world.generation().state == "CANCELLED"
    assert world.jobs() == [("train", "cli:loop:svc-loop:g1:train:a1", "CANCELLED")]
    assert not world.tick(60).started  # a cancelled loop starts nothing


def test_a_split_off_its_weights_pauses_for_sample_ratio_mismatch(settings, write_rows):
    world = World(settings, follow_weights=False, p_up={"champion": 0.5, "candidate": 0.5})
    world.setup(write_rows)
    world.run_until({"PAUSED", "ROLLED_BACK", "PROMOTED"})
    assert world.timeline()[-1] == ("CANARY", "PAUSED", "srm")
    look = _looks(world, world.generation().id)[-1]
    assert look.verdict["srm_p_value"] < world.spec.decision.srm_p_value


def test_a_canary_that_cannot_be_looked_at_pauses_for_metric_errors_until_a_person_resumes(settings, write_rows,
                                                                                              monkeypatch):
    """A look that cannot be built (the tables unreadable, the experiment changed by hand) pauses the
    canary (``metric_errors``): never a verdict on counts it could not read, and no resume by the
    runner — a person looks first; resumed, the canary goes on to its verdict."""
    import studio.loops.runner_traffic as runner_traffic

    world = World(settings)
    world.setup(write_rows)
    t = world.run_until({"CANARY"})
    real = runner_traffic.build_look

    def unreadable(session, gen, now):
        raise Conflict("the completion log cannot be read", "check the database")

    monkeypatch.setattr(runner_traffic, "build_look", unreadable)
    t = world.run_until({"PAUSED", "ROLLING_BACK", "PROMOTING"}, start=t + 60)
    assert world.timeline()[-1] == ("CANARY", "PAUSED", "metric_errors")
    gen = world.generation()
    with session_scope(world.url) as s:
        assert "cannot look at the canary: the completion log cannot be read" in repo.transitions(s, gen.id)[-1].detail
    monkeypatch.setattr(runner_traffic, "build_look", real)  # readable again: still held for a person
    for k in range(1, 4):
        world.tick(t + 60 * k)
    assert world.generation().state == "PAUSED" and world.timeline()[-1][2] == "metric_errors"
    with session_scope(world.url) as s:
        control.resume_loop(s, "svc-loop", actor="admin", reason="the database is back")
    assert world.timeline()[-1] == ("PAUSED", "CANARY", "resume")
    world.run_until({"PROMOTED", "ROLLED_BACK", "PAUSED"}, start=t + 240)
    assert world.generation().state == "PROMOTED", world.timeline()


def test_a_runner_killed_and_restarted_in_every_state_does_nothing_twice(settings, write_rows):
    """Each tick's pass runs in a fresh runner and then again in another one at the same moment (a
    scheduler restarted mid-pass): the second finds nothing to do, and the generation ends as an
    uninterrupted one does, with one training job, one gate eval and one change per weight."""
    world = World(settings)
    world.setup(write_rows, cooldown_s=3600)  # no second generation once it ends
    world.run_until({"PROMOTED", "REFUSED", "ROLLED_BACK", "FAILED", "PAUSED"}, restart=True)
    assert world.generation().state == "PROMOTED", world.timeline()
    assert world.jobs() == [("train", "cli:loop:svc-loop:g1:train:a1", "SUCCEEDED"),
                            ("eval", "cli:loop:svc-loop:g1:gate:a1", "SUCCEEDED")]
    assert [arms for _, arms in world.actions.splits] == [{"svc@1": 80.0, "svc@2": 20.0}, {"svc@1": 50.0, "svc@2": 50.0}]
    assert world.actions.queued == ["cli:loop:svc-loop:g1:train:a1"] and world.actions.promoted == ["svc@2"]


def test_a_restart_while_training_finds_the_queued_job(settings, write_rows):
    world = World(settings)
    world.setup(write_rows)
    world.runner.run_pass(at(0))  # queues the job; Ray has not run it
    assert world.generation().state == "TRAINING"
    for _ in range(3):  # restarted schedulers reconciling before Ray answers
        report = Runner(settings, world.actions).run_pass(at(5))
        assert not report.moves and any("is QUEUED" in n for n in report.notes)
    assert world.actions.queued == ["cli:loop:svc-loop:g1:train:a1"]
    world.run_jobs()
    Runner(settings, world.actions).run_pass(at(10))
    assert world.generation().state == "GATE"  # its gate eval is queued now


def test_two_harm_rollbacks_in_a_row_pause_the_loop(settings, write_rows):
    world = World(settings, empty_candidate=True, per_tick=60)
    world.setup(write_rows)
    t = world.run_until({"ROLLED_BACK"})
    t = world.run_until({"ROLLED_BACK"}, start=t + 60, number=2)
    second = world.generation()
    assert (second.number, second.state) == (2, "ROLLED_BACK")
    loop = world.loop()
    assert (loop.status, loop.rollbacks_in_a_row) == ("paused", 2)
    assert "2 rollbacks in a row" in loop.status_reason
    world.feedback(t + 30)
    for k in range(1, 4):  # new feedback, but a paused loop starts nothing
        assert not world.tick(t + 60 * k).started
    assert world.generation().number == 2


def test_a_failing_training_job_is_retried_with_backoff_then_fails(settings, write_rows):
    world = World(settings, train_ok=[False, False, False])
    world.setup(write_rows)
    seen = []
    for t in range(0, 400, 5):
        world.tick(t)
        seen.append((t, len(world.jobs())))
        if world.generation().state == "FAILED":
            break
    gen = world.generation()
    assert gen.state == "FAILED" and gen.active_loop_id is None, world.timeline()
    assert [j[1] for j in world.jobs()] == [f"cli:loop:svc-loop:g1:train:a{k}" for k in (1, 2, 3)]
    # attempt 2 waited 30 s after the failure at 0 s, attempt 3 another 60 s after its own
    first_with = {n: next(t for t, count in seen if count >= n) for n in (2, 3)}
    assert first_with == {2: 35, 3: 100}
    assert world.timeline()[-3:] == [("TRAINING", "TRAINING", "retry"), ("TRAINING", "TRAINING", "retry"),
                                     ("TRAINING", "FAILED", "infra_failure")]
    assert world.loop().status == "active"


def test_a_training_job_that_fails_once_is_retried_and_goes_on(settings, write_rows):
    world = World(settings, train_ok=[False])
    world.setup(write_rows)
    world.run_until({"CANARY", "FAILED"}, every_s=30)
    assert world.generation().attempt == 1 and world.generation().candidate == "svc@2"
    assert [j[2] for j in world.jobs() if j[0] == "train"] == ["FAILED", "SUCCEEDED"]


def test_a_training_recipe_preflight_refuses_fails_the_generation_without_retries(settings, write_rows):
    world = World(settings)
    world.setup(write_rows)
    runner = Runner(settings, ServiceActions(models_available=lambda: ["svc"], cluster_gpus=lambda: None))
    runner.run_pass(at(0))
    gen = world.generation()
    assert gen.state == "FAILED" and world.jobs() == []
    with session_scope(world.url) as s:
        assert "the training job was refused: base_model" in repo.transitions(s, gen.id)[-1].detail


def test_a_candidate_not_on_v1_models_waits_out_backoffs_before_the_canary(settings, write_rows):
    world = World(settings)
    world.setup(write_rows)
    world.tick(0)  # trained
    world.tick(10)  # the gate's eval queued (the name is served) and run
    world.actions.served = []  # then the candidate's adapter does not answer
    moved_at = {}
    for t in range(20, 200, 10):
        if t == 60:
            world.actions.served = ["svc"]
        for move in world.tick(t).moves:
            moved_at.setdefault(move.split(": ", 1)[1].split(":")[0], t)
        if world.generation().state == "CANARY":
            break
    # attempt 1 at 20 s, attempt 2 after a 30 s backoff, attempt 3 after 60 s more: then in
    assert moved_at == {"GATE → GATE (retry)": 20, "GATE → CANARY (shadow_skipped)": 110}, moved_at
    retries = [t for t in world.timeline() if t[2] == "retry"]
    assert retries == [("GATE", "GATE", "retry")] * 2 and world.actions.splits[0][0] == "svc"
    with session_scope(world.url) as s:
        assert "svc@2 is not on /v1/models yet" in repo.transitions(s, world.generation().id)[-2].detail


def test_a_candidate_never_on_v1_models_fails_the_generation(settings, write_rows):
    world = World(settings, actions=EdgeActions(served=[]))
    world.setup(write_rows)
    world.run_until({"FAILED", "CANARY"}, every_s=120)
    assert world.timeline()[-1] == ("GATE", "FAILED", "infra_failure") and world.actions.splits == []


def test_shadow_harm_rolls_back_before_any_split(settings, write_rows):
    world = World(settings, actions=EdgeActions(shadow=(1, 12)))
    world.setup(write_rows, **{"shadow.share": 0.1, "shadow.judge": "judge"})
    world.run_until({"ROLLED_BACK", "CANARY"})
    assert ("GATE", "SHADOW", "gate_passed") in world.timeline()
    assert world.timeline()[-2][1:] == ("ROLLING_BACK", "shadow_harm") and world.actions.splits == []


def test_by_hand_a_generation_starts_triggered_unless_the_loop_is_held(settings, write_rows):
    world = World(settings)
    world.setup(write_rows, **{"trigger.min_new_rated": 1000})
    assert not world.runner.run_pass(at(0)).started  # too little data for the trigger
    with session_scope(world.url) as s:
        control.pause_loop(s, "svc-loop", actor="admin")
    with session_scope(world.url) as s, pytest.raises(Conflict) as e:
        control.run_loop(s, "svc-loop", actor="admin", now=at(10))
    assert "resume it first" in e.value.fix
    with session_scope(world.url) as s:
        control.resume_loop(s, "svc-loop", actor="admin")
        gen = control.run_loop(s, "svc-loop", actor="admin", now=at(20))
        assert gen.state == "TRIGGERED"
    with session_scope(world.url) as s, pytest.raises(Conflict):
        control.run_loop(s, "svc-loop", actor="admin", now=at(30))  # one active generation per loop
    world.run_until({"TRAINING"}, start=40)
    assert world.timeline()[1] == ("WATCHING", "TRIGGERED", "trigger_manual")
    assert [(kind, by) for kind, by, _ in world.jobs()] == [("train", "cli:loop:svc-loop:g1:train:a1")]


def test_job_keys_name_the_generation_and_whose_key_the_jobs_spend_on():
    from studio.loops.control import job_key_prefix
    from studio.store.loop_models import Loop

    assert job_key_prefix(Loop(id=3, name="svc-loop", owner_key_id=7), 2) == "loop:svc-loop:g2:"  # the owner's key
    assert job_key_prefix(Loop(id=3, name="svc-loop", owner_key_id=None), 2) == "cli:loop:svc-loop:g2:"
    long = job_key_prefix(Loop(id=3, name="x" * 128, owner_key_id=None), 12345)
    assert long == "cli:loop:#3:g12345:" and len(long + "train:a99") <= 128  # jobs.submitted_by's width


class _Flaky(EdgeActions):
    """Queues the training job only on the second try: the first raises an error no step foresaw."""

    def enqueue_training(self, session, spec, *, submitted_by, owner_key_id):
        if not getattr(self, "_tried", False):
            self._tried = True
            super().enqueue_training(session, spec, submitted_by=submitted_by, owner_key_id=owner_key_id)
            raise KeyError("an unforeseen bug")
        return super().enqueue_training(session, spec, submitted_by=submitted_by, owner_key_id=owner_key_id)


def test_an_unforeseen_error_is_a_failed_attempt_on_the_timeline_and_leaves_no_job(settings, write_rows):
    world = World(settings, actions=_Flaky())
    world.setup(write_rows)
    world.run_until({"GATE", "FAILED"}, every_s=30)
    retry = [t for t in world.timeline() if t[2] == "retry"]
    assert retry == [("TRAINING", "TRAINING", "retry")]
    with session_scope(world.url) as s:
        assert "KeyError: 'an unforeseen bug'" in [t for t in repo.transitions(s, world.generation().id)
                                                    if t.reason == "retry"][0].detail
    # the job the failed transaction wrote is gone with it: attempt 2's is the only one
    assert world.jobs()[0][:2] == ("train", "cli:loop:svc-loop:g1:train:a2") and len(world.actions.queued) == 2


# The gate's own checks (issue 23, item 5): must-pass items and a non-inferiority guard.
FORMAT_GUARD = {"gate.guards": "[{name: format, scorer: {type: regex, name: format, pattern: '\\d( \\d)*', "
                "full_match: true}, margin: 0.15}]"}
MUST_PASS = {"gate.must_pass": "{dataset: must-pass, min_score: 1.0}"}


def _last_detail(world: World) -> str:
    with session_scope(world.url) as s:
        return repo.transitions(s, world.generation().id)[-1].detail


def test_a_candidate_that_beats_the_champion_but_fails_a_must_pass_item_is_refused_naming_it(settings, write_rows):
    world = World(settings, must_pass_wrong={2})
    world.setup(write_rows, **MUST_PASS)
    world.run_until({"REFUSED", "CANARY", "FAILED"})
    assert world.timeline()[-1] == ("GATE", "REFUSED", "gate_refused")
    detail = _last_detail(world)
    assert "fails 1 of 4 must-pass items on must-pass" in detail and "exact_match must be ≥ 1" in detail
    assert "item 2: prompt 'reverse: 7 2 3', expected '3 2 7', answered '3 7', score 0.000" in detail
    assert "it beats the champion: exact_match 0.900 vs champion svc@1 0.500" in detail
    # the must-pass eval is the candidate's alone, keyed like the gate's; nothing took traffic
    assert world.jobs()[1:] == [("eval", "cli:loop:svc-loop:g1:gate:a1", "SUCCEEDED"),
                                ("eval", "cli:loop:svc-loop:g1:must_pass:a1", "SUCCEEDED")]
    with session_scope(world.url) as s:
        assert s.scalars(select(Job).where(Job.submitted_by.endswith("must_pass:a1"))).one().spec["models"] == ["svc@2"]
    assert world.actions.splits == [] and _stage(world, "svc@1") == "champion"


def test_a_candidate_worse_on_a_guard_by_more_than_its_margin_is_refused_naming_the_guard(settings, write_rows):
    world = World(settings, guards={"format": (0.7, 0.9)})  # 0.7 < 0.9 − 0.15
    world.setup(write_rows, **FORMAT_GUARD)
    world.run_until({"REFUSED", "CANARY", "FAILED"})
    assert world.timeline()[-1] == ("GATE", "REFUSED", "gate_refused")
    detail = _last_detail(world)
    assert ("guard format: the candidate is worse than the champion by more than the margin (candidate 0.700 "
            "vs champion 0.900 by format, margin 0.15)") in detail
    assert "it beats the champion: exact_match 0.900" in detail
    # one eval scored both, on the same items
    with session_scope(world.url) as s:
        gate_eval = s.scalars(select(Job).where(Job.kind == "eval")).one()
        assert [sc.get("name") or sc["type"] for sc in gate_eval.spec["scorers"]] == ["exact_match", "format"]
    assert world.actions.splits == []


def test_a_candidate_that_passes_its_guards_and_must_pass_items_goes_on_with_their_figures(settings, write_rows):
    world = World(settings, guards={"format": (0.8, 0.9)})  # 0.1 worse, within the margin of 0.15
    world.setup(write_rows, **FORMAT_GUARD, **MUST_PASS)
    world.run_until({"REFUSED", "CANARY", "FAILED"})
    assert world.timeline()[-1] == ("GATE", "CANARY", "shadow_skipped")
    detail = _last_detail(world)
    assert detail.startswith("beats the champion: exact_match 0.900 vs champion svc@1 0.500")
    assert "guard format: candidate 0.800 vs champion 0.900 by format, margin 0.15" in detail
    assert "all 4 must-pass items on must-pass ≥ 1" in detail


def test_a_restart_in_gate_finds_the_queued_must_pass_eval(settings, write_rows):
    world = World(settings)
    world.setup(write_rows, **MUST_PASS)
    world.tick(0)  # trained
    world.runner.run_pass(at(10))  # both evals queued; Ray has run neither
    assert world.generation().state == "GATE"
    world.run_jobs(only=":gate:")  # the gate's eval ends; the must-pass eval is still queued
    for t in (15, 20, 25):  # restarted schedulers reconciling before Ray runs it
        report = Runner(settings, world.actions).run_pass(at(t))
        assert not report.moves and any("must-pass eval" in n and "is QUEUED" in n for n in report.notes), report
    assert [by for kind, by, _ in world.jobs() if kind == "eval"] == ["cli:loop:svc-loop:g1:gate:a1",
                                                                       "cli:loop:svc-loop:g1:must_pass:a1"]
    world.run_jobs()
    Runner(settings, world.actions).run_pass(at(30))
    assert world.generation().state == "CANARY"
    assert len([j for j in world.jobs() if j[0] == "eval"]) == 2
