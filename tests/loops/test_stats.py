"""The decision rule (``studio.loops.stats``): the confidence sequence's error rate under peeking,
its power, and the fault cases — on simulated canaries with a virtual clock (the look's ``at_s``)."""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from studio.loops.spec import load_loop_recipe
from studio.loops.states import Reason
from studio.loops.stats import (Action, ArmCounts, DecisionRule, Look, ShadowRule, confidence_sequence, decide,
                                decide_shadow, sequential_rho, sign_test_e_value, srm_p_value, step_done)
from tests.loops.simulate import (SHIPPED_CANARY, Plan, decide_first_action, first_actions, naive_peeking_promotions,
                                  simulate)

RECIPE = Path(__file__).resolve().parents[2] / "configs" / "loops" / "reverse_tiny.yaml"
GENERATIONS = 1000


@pytest.fixture(scope="module")
def rule() -> DecisionRule:
    """The shipped loop's rule, with the clocks out of the way (these tests are about the counts)."""
    spec, _ = load_loop_recipe(RECIPE)
    return spec.decision.model_copy(update={"deadline_s": 1e9, "no_feedback_s": 1e8, "no_traffic_s": 1e8})


def _mc_bound(alpha: float, n: int = GENERATIONS) -> float:
    return alpha + 3 * math.sqrt(alpha * (1 - alpha) / n)  # α plus three Monte Carlo standard errors


@pytest.mark.parametrize("p", [0.5, 0.85])
def test_aa_generations_looked_at_every_interval_promote_at_most_alpha(rule, p):
    """1,000 A/A canaries (candidate = champion), each looked at 60 times as the split goes 10 → 25
    → 50 %, stopping at the first verdict: the share promoted stays within α (plus Monte Carlo
    error), and so does the share wrongly decided either way."""
    counts = simulate(p, p, generations=GENERATIONS, seed=7)
    outcomes = Counter(first_actions(counts, rule))
    promoted, rolled_back = outcomes["promote"] / GENERATIONS, outcomes["roll_back"] / GENERATIONS
    print(f"\nA/A at p={p}: false promotions {promoted:.3f}, false rollbacks {rolled_back:.3f} "
          f"over {GENERATIONS} generations × {Plan().looks} looks (alpha {rule.alpha})")
    assert promoted <= _mc_bound(rule.alpha)
    assert promoted + rolled_back <= _mc_bound(rule.alpha)


def test_the_same_looks_with_a_fixed_horizon_interval_promote_far_more_often(rule):
    """The simulation can tell: a 95 % z-interval looked at every interval promotes A/A candidates
    many times more often than α (the peeking problem)."""
    counts = simulate(0.5, 0.5, generations=GENERATIONS, seed=7)
    naive = naive_peeking_promotions(counts)
    print(f"\nA/A, fixed-horizon z-interval at every look: {naive:.3f} promoted")
    assert naive > 3 * rule.alpha


def test_power_at_a_ten_point_true_difference(rule):
    counts = simulate(0.5, 0.6, generations=GENERATIONS, seed=11)
    outcomes = Counter(first_actions(counts, rule))
    power = outcomes["promote"] / GENERATIONS
    rated = Plan().looks * Plan().rated_per_look
    print(f"\npower at +10 points (0.50 → 0.60), {rated} rated completions over {Plan().looks} looks: {power:.3f} "
          f"promoted, {outcomes['roll_back'] / GENERATIONS:.3f} rolled back")
    assert power >= 0.6
    assert outcomes["roll_back"] == 0


def test_the_shipped_loops_own_small_canary(rule):
    """The shipped loop's rule on the canary it gets here (``SHIPPED_CANARY``: 18 looks, 180 rated),
    2,000 generations each (docs/loops.md, "The shipped loop's sizes, and why"): A/A promotes at most
    α, the end-to-end test's better candidate (36 % → 78 % up) is promoted and a broken one (81.5 % →
    15 %) rolled back nearly always, and +10 points is mostly left to the deadline (too small a
    canary to tell)."""
    n = 2 * GENERATIONS
    share = {}
    for label, p_champ, p_cand, seed in (("A/A 0.50", 0.5, 0.5, 21), ("A/A 0.85", 0.85, 0.85, 22),
                                         ("A/A 0.15", 0.15, 0.15, 23), ("better 0.36 → 0.78", 0.36, 0.78, 24),
                                         ("broken 0.815 → 0.15", 0.815, 0.15, 25), ("+10 points", 0.5, 0.6, 26)):
        out = Counter(first_actions(simulate(p_champ, p_cand, generations=n, plan=SHIPPED_CANARY, seed=seed), rule))
        share[label] = (out["promote"] / n, out["roll_back"] / n)
        print(f"\nshipped canary, {label}: promoted {share[label][0]:.4f}, rolled back {share[label][1]:.4f} "
              f"over {n} generations × {SHIPPED_CANARY.looks} looks")
    for label in ("A/A 0.50", "A/A 0.85", "A/A 0.15"):
        assert share[label][0] <= _mc_bound(rule.alpha, n)
        assert sum(share[label]) <= _mc_bound(rule.alpha, n)
    assert share["better 0.36 → 0.78"][0] >= 0.99 and share["broken 0.815 → 0.15"][1] >= 0.99
    assert share["+10 points"][0] < 0.5 and share["+10 points"][1] == 0


def test_decide_agrees_with_the_vectorised_rule_on_every_look(rule):
    """The simulation's vectorised verdicts are decide()'s: same first action for each generation."""
    for p_cand, seed in ((0.5, 7), (0.6, 11), (0.4, 3)):
        counts = simulate(0.5, p_cand, generations=40, seed=seed)
        vectorised = first_actions(counts, rule)
        assert [decide_first_action(counts, g, rule) for g in range(40)] == list(vectorised)


def test_the_confidence_sequence_matches_the_published_formula():
    # GrowthBook's sequential_interval_halfwidth with s2 = SE² · n (the per-observation variance).
    alpha, n_star = 0.05, 5000.0
    rho = sequential_rho(alpha, n_star)
    assert rho == pytest.approx(math.sqrt((-2 * math.log(alpha) + math.log(-2 * math.log(alpha) + 1)) / n_star))
    est, lo, hi = confidence_sequence(400, 1000, 450, 1000, alpha, n_star)
    pa, pb = 401 / 1002, 451 / 1002
    n = 2000
    s2 = (pa * (1 - pa) / 1000 + pb * (1 - pb) / 1000) * n
    half = math.sqrt(s2) * math.sqrt(2 * (n * rho**2 + 1) * math.log(math.sqrt(n * rho**2 + 1) / alpha) / (n * rho) ** 2)
    assert est == pytest.approx(0.05)
    assert (lo, hi) == (pytest.approx(0.05 - half), pytest.approx(0.05 + half))
    # wider than the fixed-horizon interval at the same counts: the price of looking often
    assert half > 1.96 * math.sqrt(s2 / n)
    # narrows as data grows
    assert confidence_sequence(4000, 10000, 4500, 10000, alpha, n_star)[1] > lo
    # vectorised and scalar agree
    arr = confidence_sequence(np.array([400]), np.array([1000]), np.array([450]), np.array([1000]), alpha, n_star)
    assert float(arr[1][0]) == pytest.approx(lo)


def _look(at_s=600.0, weight=0.25, champ=None, cand=None, **kw) -> Look:
    champ = champ or ArmCounts(completions=300, rated=150, thumbs_up=75, latency_p95_ms=100, tokens_per_answer=8)
    cand = cand or ArmCounts(completions=100, rated=50, thumbs_up=25, latency_p95_ms=100, tokens_per_answer=8)
    kw.setdefault("step_assigned_champion", 300)
    kw.setdefault("step_assigned_candidate", 100)
    return Look(at_s=at_s, weight=weight, champion=champ, candidate=cand, **kw)


def _arm(completions, rated, up, errors=0, latency=100.0, tokens=8.0) -> ArmCounts:
    return ArmCounts(completions=completions, rated=rated, thumbs_up=up, errors=errors,
                     latency_p95_ms=latency, tokens_per_answer=tokens)


def test_zero_feedback_pauses_and_never_rolls_back_on_a_virtual_clock():
    """Traffic flows, nobody rates: every look waits until the feedback timeout, then pauses —
    before, at and after the deadline; never a rollback or a promotion."""
    rule = DecisionRule(min_rated_per_arm=30, no_feedback_s=600, deadline_s=1800)
    verdicts = []
    for minute in range(0, 61):
        t = minute * 60.0
        served = 20 * minute
        look = _look(at_s=t, champ=_arm(served * 3 // 4, 0, 0), cand=_arm(served // 4, 0, 0),
                     step_assigned_champion=served * 3 // 4, step_assigned_candidate=served // 4,
                     idle_feedback_s=t, idle_traffic_s=0.0)
        verdicts.append(decide(look, rule))
    assert {v.action for v in verdicts} == {Action.WAIT, Action.PAUSE}
    paused = [v for v in verdicts if v.action is Action.PAUSE]
    assert all(v.reason is Reason.NO_FEEDBACK for v in paused)
    assert verdicts[9].action is Action.WAIT and verdicts[10].action is Action.PAUSE  # at 600 s
    assert verdicts[-1].action is Action.PAUSE  # past the deadline too: no verdict on missing data


def test_no_traffic_pauses():
    v = decide(_look(idle_traffic_s=1000.0), DecisionRule(no_traffic_s=900))
    assert (v.action, v.reason) == (Action.PAUSE, Reason.NO_TRAFFIC)


def test_a_sample_ratio_mismatch_pauses():
    rule = DecisionRule()
    ok = decide(_look(weight=0.1, step_assigned_champion=1790, step_assigned_candidate=210), rule)
    assert ok.action is Action.WAIT and ok.srm_p_value > 0.1
    bad = decide(_look(weight=0.1, step_assigned_champion=1600, step_assigned_candidate=400), rule)
    assert (bad.action, bad.reason) == (Action.PAUSE, Reason.SRM)
    assert bad.srm_p_value < 1e-6 and "sample-ratio mismatch" in bad.detail
    assert srm_p_value(3, 1, 0.1) is None  # too few to test


def test_a_candidate_that_errors_on_every_request_rolls_back_within_one_look():
    rule = DecisionRule()
    broken = _arm(completions=25, rated=0, up=0, errors=25)
    v = decide(_look(cand=broken, step_assigned_candidate=25), rule)
    assert (v.action, v.reason) == (Action.ROLL_BACK, Reason.GUARDRAIL)
    assert "error_rate" in v.detail


@pytest.mark.parametrize("cand,name", [
    (_arm(100, 50, 25, latency=180.0), "latency_p95"),
    (_arm(100, 50, 25, tokens=20.0), "tokens_per_answer"),
])
def test_latency_and_length_guardrails_roll_back(cand, name):
    v = decide(_look(cand=cand), DecisionRule())
    assert v.action is Action.ROLL_BACK and name in v.detail


def test_promote_needs_the_minimum_per_arm_the_bound_and_every_guardrail_judged():
    rule = DecisionRule(min_rated_per_arm=100, tuning_n=400)
    good = dict(champ=_arm(400, 300, 150), cand=_arm(400, 300, 240),
                step_assigned_champion=400, step_assigned_candidate=400, weight=0.5)
    v = decide(_look(**good), rule)
    assert (v.action, v.reason) == (Action.PROMOTE, Reason.VERDICT_PROMOTE) and v.lower > 0
    few = decide(_look(**{**good, "cand": _arm(400, 60, 55)}), rule)
    assert few.action is Action.WAIT and "needs 100 rated per arm" in few.detail
    unmeasured = decide(_look(**{**good, "cand": _arm(400, 300, 240, latency=None)}), rule)
    assert unmeasured.action is Action.WAIT and "guardrail" in unmeasured.detail


def test_a_clearly_worse_candidate_rolls_back_and_a_tie_at_the_deadline_keeps_the_champion():
    rule = DecisionRule(min_rated_per_arm=100, tuning_n=400, deadline_s=3600, no_feedback_s=1800)
    worse = decide(_look(champ=_arm(400, 300, 240), cand=_arm(400, 300, 150)), rule)
    assert (worse.action, worse.reason) == (Action.ROLL_BACK, Reason.VERDICT_ROLLBACK) and worse.upper < 0
    tie = dict(champ=_arm(400, 300, 150), cand=_arm(400, 300, 152))
    assert decide(_look(at_s=3000, **tie), rule).action is Action.WAIT
    kept = decide(_look(at_s=3600, **tie), rule)
    assert (kept.action, kept.reason) == (Action.KEEP_CHAMPION, Reason.INCONCLUSIVE)
    assert kept.lower is not None  # the numbers behind it are kept


def test_a_noninferiority_margin_promotes_a_candidate_no_worse_than_it():
    same = dict(champ=_arm(4000, 3000, 1500), cand=_arm(4000, 3000, 1510), weight=0.5,
                step_assigned_champion=4000, step_assigned_candidate=4000)
    assert decide(_look(**same), DecisionRule(tuning_n=400)).action is Action.WAIT
    assert decide(_look(**same), DecisionRule(tuning_n=400, noninferiority_margin=0.05)).action is Action.PROMOTE


def test_a_canary_step_is_done_after_its_hold_and_its_ratings():
    look = _look(step_held_s=700, step_rated_champion=40, step_rated_candidate=31)
    assert step_done(look, min_hold_s=600, min_rated_per_arm=30)
    assert not step_done(look, min_hold_s=800, min_rated_per_arm=30)
    assert not step_done(look, min_hold_s=600, min_rated_per_arm=35)


def test_a_look_and_its_verdict_round_trip_through_json_and_recompute_the_same():
    rule = DecisionRule(min_rated_per_arm=100, tuning_n=400)
    look = _look(champ=_arm(400, 300, 150), cand=_arm(400, 300, 240), weight=0.5,
                 step_assigned_champion=400, step_assigned_candidate=400)
    stored = decide(look, rule).model_dump(mode="json")
    again = decide(Look.model_validate(look.model_dump(mode="json")), DecisionRule.model_validate(rule.model_dump()))
    assert again.model_dump(mode="json") == stored


def test_inconsistent_counts_are_refused():
    with pytest.raises(ValueError, match="inconsistent counts"):
        ArmCounts(completions=10, rated=11, thumbs_up=0)


# --- shadow ---------------------------------------------------------------------------------


def test_the_sign_test_keeps_alpha_under_continuous_looks():
    """1,000 shadows of an equal candidate, looked at after every one of 300 judged pairs: the share
    that ever calls it worse or better stays within α (Ville's inequality; exact)."""
    alpha, rng = 0.05, np.random.default_rng(5)
    wins = np.cumsum(rng.random((GENERATIONS, 300)) < 0.5, axis=1)
    n = np.arange(1, 301)
    rule = ShadowRule(alpha=alpha, max_pairs=10_000)
    decided = 0
    for g in range(GENERATIONS):
        for t in range(300):
            if decide_shadow(int(wins[g, t]), int(n[t] - wins[g, t]), rule).action is not Action.WAIT:
                decided += 1
                break
    print(f"\nshadow sign test, equal candidate: {decided / GENERATIONS:.3f} decided (alpha {alpha})")
    assert decided / GENERATIONS <= _mc_bound(alpha)


def test_the_sign_test_finds_a_worse_candidate_and_passes_a_better_one():
    rule = ShadowRule(alpha=0.05, max_pairs=200)
    assert decide_shadow(5, 30, rule).action is Action.ROLL_BACK
    assert decide_shadow(5, 30, rule).reason is Reason.SHADOW_HARM
    assert decide_shadow(30, 5, rule).reason is Reason.SHADOW_PASSED
    assert decide_shadow(10, 9, rule).action is Action.WAIT
    assert decide_shadow(101, 99, rule).action is Action.PROMOTE  # max_pairs without harm
    assert sign_test_e_value(0, 0) == pytest.approx(1.0)
    # e = 2^n · w! · l! / (n+1)!: 3 wins, 1 loss → 16 · 6 / 120
    assert sign_test_e_value(3, 1) == pytest.approx(16 * 6 / 120)
