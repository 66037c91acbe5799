"""A canary look built from the completion log, the feedback and the canary experiment's weights
(SQLite and PostgreSQL): exact counts per arm, the window's edges, the step in force, the clocks, and
a stored look's verdict recomputed by explain from the same rows."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pytest

from studio.errors import Conflict
from studio.experiments.ab import ArmSpec, ExperimentUpdate, update_experiment
from studio.loops import repository as repo
from studio.loops.looks import build_look
from studio.loops.states import Reason, State
from studio.loops.stats import Action, DecisionRule, decide
from studio.store.db import session_scope
from tests.loops.traffic import T0, TO_CANARY, at, completion, experiment, generation, log, loop_spec, move, rate, register

ALIAS = "svc-canary"
REFS = {"champion": "svc@1", "candidate": "svc@2"}


def _canary(url: str, spec=None, weights=(3.0, 1.0)) -> int:
    register(url)
    experiment(url, ALIAS, {"svc@1": weights[0], "svc@2": weights[1]})
    gen_id = generation(url, spec or loop_spec())
    for frm, to, why in TO_CANARY[:-1]:
        move(url, gen_id, frm, to, why, T0 - timedelta(minutes=5))
    move(url, gen_id, State.GATE, State.CANARY, Reason.SHADOW_SKIPPED, T0, canary_alias=ALIAS, **REFS)
    return gen_id


def _look(url: str, gen_id: int, seconds: float):
    with session_scope(url) as s:
        return build_look(s, repo.get_generation(s, gen_id), at(seconds))


def test_a_look_counts_each_arm_of_the_canary_window_exactly(settings):
    url = settings.db_url
    gen_id = _canary(url)
    move(url, gen_id, State.CANARY, State.CANARY, Reason.CANARY_STEP, at(100))
    c = lambda cid, v, s, **kw: completion(cid, v, at(s), experiment=ALIAS, **kw)  # noqa: E731
    log(url, [
        # the champion's answers through the canary's alias
        c("h0", "svc@1", 0, user="u1", latency_ms=100, tokens=4),  # at the canary's start: counts
        c("h1", "svc@1", 50, user="u1", latency_ms=200, tokens=6),
        c("h2", "svc@1", 120, user="u2", latency_ms=300, tokens=8),
        c("h3", "svc@1", 150, latency_ms=400, tokens=None),  # rated only after the look
        c("h4", "svc@1", 190, latency_ms=500, tokens=2),
        c("h5", "svc@1", 200, latency_ms=600, tokens=10),  # at the look itself: counts
        # the candidate's
        c("c0", "svc@2", 10, user="u3", latency_ms=1000, tokens=20, response="  "),  # an empty answer: an error
        c("c1", "svc@2", 110, user="u4", latency_ms=1100, tokens=30),
        c("c2", "svc@2", 120, user="u4", latency_ms=1200, tokens=40),
        # outside the window or not the canary's traffic
        completion("x0", "svc@1", T0 - timedelta(microseconds=1), experiment=ALIAS),
        c("x1", "svc@2", 201),
        completion("x2", "svc@1", at(50)),  # the champion asked for by name: not the control
    ])
    for cid, rating, s in [("h0", 1, 5), ("h1", -1, 60), ("h2", 1, 130), ("h2", -1, 131), ("h3", 1, 201),
                           ("h4", 1, 195), ("c0", -1, 20), ("c1", 1, 140), ("c2", 1, 170),
                           ("x0", 1, 10), ("x1", 1, 202), ("x2", 1, 60)]:
        rate(url, cid, at(s), rating=rating)

    look = _look(url, gen_id, 200)
    champ, cand = look.champion, look.candidate
    # h2's ratings cancel (mean 0): rated, not thumbs up; h3's rating came after the look.
    assert (champ.completions, champ.rated, champ.thumbs_up, champ.errors) == (6, 4, 2, 0)
    assert (cand.completions, cand.rated, cand.thumbs_up, cand.errors) == (3, 3, 2, 1)
    assert champ.latency_p95_ms == pytest.approx(float(np.percentile([100, 200, 300, 400, 500, 600], 95)))
    assert cand.latency_p95_ms == pytest.approx(1190.0)
    assert (champ.tokens_per_answer, cand.tokens_per_answer) == (6.0, 30.0)  # h3 logged no count
    assert (look.at_s, look.step, look.weight, look.step_held_s) == (200.0, 1, 0.25, 100.0)
    # Units in the step (since 100 s): u2 and three requests without a user; u4 once.
    assert (look.step_assigned_champion, look.step_assigned_candidate) == (4, 1)
    assert (look.step_rated_champion, look.step_rated_candidate) == (2, 2)
    assert (look.idle_traffic_s, look.idle_feedback_s) == (0.0, 5.0)

    earlier = _look(url, gen_id, 100)  # the same rows, looked at earlier: the window ends there
    assert (earlier.champion.completions, earlier.champion.rated, earlier.candidate.completions) == (2, 2, 1)
    assert (earlier.step_held_s, earlier.idle_traffic_s, earlier.idle_feedback_s) == (0.0, 50.0, 40.0)


def test_the_weight_in_force_is_the_experiments_and_a_quiet_canary_idles_from_its_start(settings):
    url = settings.db_url
    gen_id = _canary(url)
    with session_scope(url) as s:
        update_experiment(s, ALIAS, ExperimentUpdate(arms=[ArmSpec(model="svc@1", weight=1),
                                                           ArmSpec(model="svc@2", weight=1)]))
    look = _look(url, gen_id, 300)
    assert look.weight == 0.5 and look.champion.completions == look.candidate.completions == 0
    assert look.champion.latency_p95_ms is None and (look.idle_traffic_s, look.idle_feedback_s) == (300.0, 300.0)
    assert decide(look, DecisionRule()).action is Action.WAIT  # no data never promotes or rolls back

    with session_scope(url) as s:
        update_experiment(s, ALIAS, ExperimentUpdate(arms=[ArmSpec(model="svc@1", weight=1)]))
    with pytest.raises(Conflict) as e:
        _look(url, gen_id, 300)
    assert "do not split traffic" in e.value.problem


def test_no_look_before_the_canary(settings):
    url = settings.db_url
    register(url)
    gen_id = generation(url, loop_spec())
    with pytest.raises(Conflict) as e:
        _look(url, gen_id, 0)
    assert "no canary alias" in e.value.problem


def test_a_candidate_answering_empty_is_rolled_back_and_explain_recomputes_it_from_the_rows(settings):
    url = settings.db_url
    spec = loop_spec(**{"decision.guardrails.min_completions": 4})
    gen_id = _canary(url, spec, weights=(1.0, 1.0))
    log(url, [completion(f"h{i}", "svc@1", at(i), experiment=ALIAS, user=f"a{i}") for i in range(5)]
        + [completion(f"c{i}", "svc@2", at(i), experiment=ALIAS, user=f"b{i}", response="") for i in range(4)])
    look = _look(url, gen_id, 60)
    verdict = decide(look, spec.decision)
    assert (verdict.action, verdict.reason) == (Action.ROLL_BACK, Reason.GUARDRAIL)
    assert "error" in verdict.detail
    with session_scope(url) as s:
        repo.record_look(s, gen_id, look, verdict)
    with session_scope(url) as s:
        [explained] = repo.explain(s, gen_id)
        assert explained.agrees and explained.recomputed.reason is Reason.GUARDRAIL
        # Statistics come from the raw tables: the stored look is what a new look at that time sees.
        assert explained.look == build_look(s, repo.get_generation(s, gen_id), at(60))
