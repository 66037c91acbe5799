"""The loop's decision rules as pure functions of stored counts (docs/loops.md, "The statistics").

Canary: an always-valid (asymptotic) confidence sequence for the difference of the thumbs-up rates,
candidate − champion, by Waudby-Smith, Arnold, Wu, McAuliffe and Ramdas, "Time-uniform central limit
theory and asymptotic confidence sequences" (arXiv:2103.06476, eq. 9 for the half-width), in the
form GrowthBook's sequential testing uses (gbstats ``sequential_interval_halfwidth``: per-observation
variance ``SE² · (n_T + n_C)`` over the combined count; ``rho`` from its tuning parameter N*, the
combined count at which the sequence is narrowest). Looked at as often as you like, it covers the
true difference at every look at once with probability ≥ 1 − α (asymptotically), so stopping on
the first look that clears a bound keeps the false-promotion rate ≤ α.

Shadow: a sequential sign test on judged pairs (wins vs losses, ties dropped): the e-value of a
uniform (Beta(1, 1)) mixture over the win probability against p = ½; by Ville's inequality it
crosses 1/α with probability ≤ α under p = ½ however often it is looked at (exact, not asymptotic).

Every input is a ``Look`` (plain data, stored as JSON) and every rule is a ``DecisionRule`` (the
loop recipe's frozen section), so ``decide(look, rule)`` can be recomputed from the store later.
"""

from __future__ import annotations

import math
from enum import StrEnum

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from studio.loops.states import Reason
from studio.recipes import Spec


def _alpha_in_unit_interval(v: float) -> float:
    if not 0.0 < v < 1.0:
        raise ValueError("alpha must lie strictly between 0 and 1: it is the false-promotion rate you "
                         "accept, e.g. 0.05")
    return v


class Guardrails(Spec):
    """Limits the candidate must keep beside the champion in the same window. A breach rolls back;
    promotion needs every guardrail judged (both arms ≥ ``min_completions``) and clear."""

    max_error_rate_increase: float = Field(
        default=0.05, ge=0.0, le=1.0,
        description="Largest allowed rise of the error/invalid-format rate over the champion's, in "
                    "absolute points (0.05: 2% → 7% is the limit).")
    max_latency_p95_ratio: float = Field(
        default=1.5, ge=1.0, description="The candidate's p95 latency may be at most this times the champion's.")
    max_tokens_ratio: float = Field(
        default=1.5, ge=1.0, description="The candidate's mean tokens per answer may be at most this times the champion's.")
    min_completions: int = Field(
        default=20, ge=1, description="Completions each arm needs before a guardrail is judged.")


class DecisionRule(Spec):
    """When a canary promotes, rolls back, pauses or keeps the champion (docs/loops.md)."""

    alpha: float = Field(default=0.05, description="Error rate of the confidence sequence, in (0, 1).")
    tuning_n: float = Field(
        default=5000.0, gt=0,
        description="N*: the number of rated completions (both arms) at which the confidence sequence is "
                    "narrowest (GrowthBook's sequential tuning parameter; its default is 5000).")
    noninferiority_margin: float = Field(
        default=0.0, ge=0.0, lt=1.0,
        description="Promote when the lower bound of candidate − champion exceeds −margin (0: the "
                    "candidate must be better).")
    min_rated_per_arm: int = Field(default=100, ge=1, description="No verdict before each arm has this many rated completions.")
    deadline_s: float = Field(default=86_400.0, gt=0, description="No verdict by then (seconds since the canary began): the champion stays.")
    no_traffic_s: float = Field(default=900.0, gt=0, description="No completion on the served name for this long: pause.")
    no_feedback_s: float = Field(default=3_600.0, gt=0, description="No rating on either arm for this long: pause.")
    srm_p_value: float = Field(
        default=0.001, description="Pause when the chi-square test of the split against the weights in force "
                                   "gives a p-value below this (sample-ratio mismatch).")
    guardrails: Guardrails = Field(default_factory=Guardrails, description="Error, latency and length limits.")

    @field_validator("alpha")
    @classmethod
    def _alpha(cls, v: float) -> float:
        return _alpha_in_unit_interval(v)

    @field_validator("srm_p_value")
    @classmethod
    def _srm_in_unit_interval(cls, v: float) -> float:
        if not 0.0 < v < 1.0:
            raise ValueError("srm_p_value must lie strictly between 0 and 1, e.g. 0.001")
        return v

    @model_validator(mode="after")
    def _pause_before_deadline(self) -> DecisionRule:
        if self.no_feedback_s >= self.deadline_s:
            raise ValueError(f"no_feedback_s ({self.no_feedback_s:g}) must be shorter than deadline_s "
                             f"({self.deadline_s:g}), or missing feedback would end at the deadline "
                             "instead of pausing: lower no_feedback_s or raise deadline_s")
        return self


class ArmCounts(BaseModel):
    """One arm's counts since the canary began (cumulative over its steps)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    completions: int = Field(default=0, ge=0, description="Requests it ended: answers and errors alike.")
    rated: int = Field(default=0, ge=0, description="Answers with a thumbs up or down.")
    thumbs_up: int = Field(default=0, ge=0, description="Answers rated up.")
    errors: int = Field(default=0, ge=0, description="Errors and answers in an invalid format.")
    latency_p95_ms: float | None = Field(default=None, ge=0, description="p95 latency of its answers.")
    tokens_per_answer: float | None = Field(default=None, ge=0, description="Mean output tokens per answer.")

    @model_validator(mode="after")
    def _consistent(self) -> ArmCounts:
        if self.thumbs_up > self.rated or self.rated > self.completions or self.errors > self.completions:
            raise ValueError(f"inconsistent counts: thumbs_up {self.thumbs_up} ≤ rated {self.rated} ≤ completions "
                             f"{self.completions} and errors {self.errors} ≤ completions must hold")
        return self


class Look(BaseModel):
    """Everything one look at a canary knows: the counts per arm, the split in force and the clocks."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    at_s: float = Field(ge=0, description="Seconds since the canary began.")
    step: int = Field(default=0, ge=0, description="Canary step index in force.")
    weight: float = Field(gt=0, lt=1, description="The candidate's share of the served name in force.")
    champion: ArmCounts
    candidate: ArmCounts
    step_assigned_champion: int = Field(default=0, ge=0, description="Units (users, or requests without one) routed to the champion in this step.")
    step_assigned_candidate: int = Field(default=0, ge=0, description="Units routed to the candidate in this step.")
    step_held_s: float = Field(default=0.0, ge=0, description="Seconds the step in force has been held.")
    step_rated_champion: int = Field(default=0, ge=0, description="The champion's rated completions in this step.")
    step_rated_candidate: int = Field(default=0, ge=0, description="The candidate's rated completions in this step.")
    idle_traffic_s: float = Field(default=0.0, ge=0, description="Seconds since the last completion on either arm.")
    idle_feedback_s: float = Field(default=0.0, ge=0, description="Seconds since the last rating on either arm.")


class Action(StrEnum):
    WAIT = "wait"  # look again later
    PROMOTE = "promote"
    ROLL_BACK = "roll_back"
    PAUSE = "pause"
    KEEP_CHAMPION = "keep_champion"  # inconclusive at the deadline: unwind the split, no harm found


class GuardrailCheck(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str
    status: str  # clear | breached | not_judged
    detail: str


class Verdict(BaseModel):
    """The outcome of one look, with the numbers behind it (stored beside the look)."""

    model_config = ConfigDict(frozen=True)

    action: Action
    reason: Reason | None = None  # the transition's reason kind, None for WAIT
    detail: str
    estimate: float | None = None
    lower: float | None = None
    upper: float | None = None
    srm_p_value: float | None = None
    guardrails: list[GuardrailCheck] = Field(default_factory=list)


def sequential_rho(alpha: float, tuning_n: float) -> float:
    """GrowthBook's rho for N* (arXiv:2103.06476 eq. 161, two-sided): the sequence is narrowest near
    a combined count of N*."""
    log_a = math.log(alpha)
    return math.sqrt((-2.0 * log_a + math.log(-2.0 * log_a + 1.0)) / tuning_n)


def confidence_sequence(up_a, n_a, up_b, n_b, alpha: float, tuning_n: float):
    """(estimate, lower, upper) of rate_b − rate_a at level 1 − α, always valid over looks.

    Works on numbers or numpy arrays (the simulations look at thousands at once). Every n must be
    ≥ 1. The variance uses (up + 1) / (n + 2) per arm, so an arm with all ups (or all downs) in a
    small sample does not get a zero-width interval."""
    up_a, n_a, up_b, n_b = (np.asarray(x, dtype=float) for x in (up_a, n_a, up_b, n_b))
    estimate = up_b / n_b - up_a / n_a
    pa, pb = (up_a + 1.0) / (n_a + 2.0), (up_b + 1.0) / (n_b + 2.0)
    n = n_a + n_b
    s2 = (pa * (1 - pa) / n_a + pb * (1 - pb) / n_b) * n  # per-observation variance, as gbstats
    rho2 = sequential_rho(alpha, tuning_n) ** 2
    half = np.sqrt(s2) * np.sqrt(2.0 * (n * rho2 + 1.0) * np.log(np.sqrt(n * rho2 + 1.0) / alpha) / (n * n * rho2))
    if estimate.ndim == 0:
        return float(estimate), float(estimate - half), float(estimate + half)
    return estimate, estimate - half, estimate + half


def srm_p_value(assigned_champion: int, assigned_candidate: int, weight: float) -> float | None:
    """p-value of the chi-square test (1 degree of freedom) of the split against ``weight``, or None
    while an expected count is below 5 (the test's approximation needs more)."""
    total = assigned_champion + assigned_candidate
    e_cand, e_champ = total * weight, total * (1.0 - weight)
    if e_cand < 5 or e_champ < 5:
        return None
    chi2 = (assigned_candidate - e_cand) ** 2 / e_cand + (assigned_champion - e_champ) ** 2 / e_champ
    return math.erfc(math.sqrt(chi2 / 2.0))


def check_guardrails(look: Look, g: Guardrails) -> list[GuardrailCheck]:
    a, b = look.champion, look.candidate
    if min(a.completions, b.completions) < g.min_completions:
        why = f"needs {g.min_completions} completions per arm (champion {a.completions}, candidate {b.completions})"
        return [GuardrailCheck(name=n, status="not_judged", detail=why)
                for n in ("error_rate", "latency_p95", "tokens_per_answer")]
    out = []
    ea, eb = a.errors / a.completions, b.errors / b.completions
    out.append(GuardrailCheck(
        name="error_rate", status="breached" if eb - ea > g.max_error_rate_increase else "clear",
        detail=f"candidate {eb:.3f} vs champion {ea:.3f} (limit +{g.max_error_rate_increase:g})"))
    for name, va, vb, limit in (("latency_p95", a.latency_p95_ms, b.latency_p95_ms, g.max_latency_p95_ratio),
                                ("tokens_per_answer", a.tokens_per_answer, b.tokens_per_answer, g.max_tokens_ratio)):
        if va is None or vb is None or va <= 0:
            out.append(GuardrailCheck(name=name, status="not_judged", detail="no measurement on one arm"))
            continue
        out.append(GuardrailCheck(name=name, status="breached" if vb > limit * va else "clear",
                                  detail=f"candidate {vb:g} vs champion {va:g} (limit ×{limit:g})"))
    return out


def decide(look: Look, rule: DecisionRule) -> Verdict:
    """The canary's verdict on one look. Harm first (a breached guardrail rolls back), then the
    data's health (a split off its weights, no traffic, no feedback: pause, never a verdict on
    missing data), then the confidence sequence: its upper bound below 0 rolls back; its lower bound
    above −margin promotes once every guardrail is judged clear; the deadline keeps the champion."""
    guards = check_guardrails(look, rule.guardrails)
    breached = [g for g in guards if g.status == "breached"]
    if breached:
        return Verdict(action=Action.ROLL_BACK, reason=Reason.GUARDRAIL, guardrails=guards,
                       detail="guardrail breached: " + "; ".join(f"{g.name} {g.detail}" for g in breached))
    srm = srm_p_value(look.step_assigned_champion, look.step_assigned_candidate, look.weight)
    if srm is not None and srm < rule.srm_p_value:
        return Verdict(action=Action.PAUSE, reason=Reason.SRM, srm_p_value=srm, guardrails=guards,
                       detail=f"sample-ratio mismatch: {look.step_assigned_candidate} candidate vs "
                              f"{look.step_assigned_champion} champion at weight {look.weight:g} (p = {srm:.2g})")
    if look.idle_traffic_s >= rule.no_traffic_s:
        return Verdict(action=Action.PAUSE, reason=Reason.NO_TRAFFIC, srm_p_value=srm, guardrails=guards,
                       detail=f"no completion for {look.idle_traffic_s:.0f} s (limit {rule.no_traffic_s:g} s)")
    a, b = look.champion, look.candidate
    if look.idle_feedback_s >= rule.no_feedback_s or (look.at_s >= rule.deadline_s and min(a.rated, b.rated) == 0):
        return Verdict(action=Action.PAUSE, reason=Reason.NO_FEEDBACK, srm_p_value=srm, guardrails=guards,
                       detail=f"no rating for {look.idle_feedback_s:.0f} s (limit {rule.no_feedback_s:g} s; "
                              f"rated: champion {a.rated}, candidate {b.rated})")
    past_deadline = look.at_s >= rule.deadline_s
    keep = Verdict(action=Action.KEEP_CHAMPION, reason=Reason.INCONCLUSIVE, srm_p_value=srm, guardrails=guards,
                   detail=f"no verdict by the deadline ({rule.deadline_s:g} s): the champion stays")
    if min(a.rated, b.rated) < rule.min_rated_per_arm:
        if past_deadline:
            return keep
        return Verdict(action=Action.WAIT, srm_p_value=srm, guardrails=guards,
                       detail=f"needs {rule.min_rated_per_arm} rated per arm (champion {a.rated}, candidate {b.rated})")
    est, lo, hi = confidence_sequence(a.thumbs_up, a.rated, b.thumbs_up, b.rated, rule.alpha, rule.tuning_n)
    numbers = dict(estimate=est, lower=lo, upper=hi, srm_p_value=srm, guardrails=guards)
    interval = f"candidate − champion {est:+.3f}, {1 - rule.alpha:.0%} confidence sequence [{lo:+.3f}, {hi:+.3f}]"
    if hi < 0:
        return Verdict(action=Action.ROLL_BACK, reason=Reason.VERDICT_ROLLBACK, detail=f"worse: {interval}", **numbers)
    if lo > -rule.noninferiority_margin:
        if all(g.status == "clear" for g in guards):
            return Verdict(action=Action.PROMOTE, reason=Reason.VERDICT_PROMOTE, **numbers,
                           detail=f"{interval} clears −{rule.noninferiority_margin:g}; guardrails clear")
        if not past_deadline:
            return Verdict(action=Action.WAIT, **numbers,
                           detail=f"{interval} clears the margin; waiting for every guardrail to be judged")
    if past_deadline:
        return keep.model_copy(update=numbers)
    return Verdict(action=Action.WAIT, detail=f"inconclusive: {interval}", **numbers)


def step_done(look: Look, min_hold_s: float, min_rated_per_arm: int) -> bool:
    """Whether the canary step in force has been held long enough and rated enough on each arm in
    this step to move on to the next one (the runner asks only while ``decide`` says WAIT)."""
    return look.step_held_s >= min_hold_s and min(look.step_rated_champion, look.step_rated_candidate) >= min_rated_per_arm


# --- shadow: the sequential sign test ---------------------------------------------------------


class ShadowRule(Spec):
    """The shadow phase's test on judged pairs (candidate vs champion on the same mirrored prompt)."""

    alpha: float = Field(default=0.05, description="Error rate of the sign test, in (0, 1).")
    max_pairs: int = Field(default=200, ge=1, description="Decided pairs after which shadow passes unless the candidate lost.")

    @field_validator("alpha")
    @classmethod
    def _alpha(cls, v: float) -> float:
        return _alpha_in_unit_interval(v)


class ShadowVerdict(BaseModel):
    model_config = ConfigDict(frozen=True)

    action: Action  # WAIT, PROMOTE (on to the canary), ROLL_BACK
    reason: Reason | None
    e_value: float
    detail: str


def sign_test_e_value(wins: int, losses: int) -> float:
    """E-value against "win probability ½" of ``wins`` vs ``losses`` (ties dropped): the Beta(1, 1)
    mixture likelihood ratio, 2ⁿ · w! · l! / (n + 1)!."""
    n = wins + losses
    log_e = n * math.log(2.0) + math.lgamma(wins + 1) + math.lgamma(losses + 1) - math.lgamma(n + 2)
    return math.exp(min(log_e, 700.0))


def decide_shadow(wins: int, losses: int, rule: ShadowRule) -> ShadowVerdict:
    """Candidate worse with confidence → roll back; better with confidence, or ``max_pairs`` decided
    pairs without being worse → on to the canary; otherwise wait."""
    e = sign_test_e_value(wins, losses)
    words = f"{wins} wins, {losses} losses (e-value {e:.3g}, threshold {1 / rule.alpha:g})"
    if e >= 1.0 / rule.alpha and losses > wins:
        return ShadowVerdict(action=Action.ROLL_BACK, reason=Reason.SHADOW_HARM, e_value=e, detail=f"worse: {words}")
    if e >= 1.0 / rule.alpha and wins > losses:
        return ShadowVerdict(action=Action.PROMOTE, reason=Reason.SHADOW_PASSED, e_value=e, detail=f"better: {words}")
    if wins + losses >= rule.max_pairs:
        return ShadowVerdict(action=Action.PROMOTE, reason=Reason.SHADOW_PASSED, e_value=e,
                             detail=f"not worse after {rule.max_pairs} pairs: {words}")
    return ShadowVerdict(action=Action.WAIT, reason=None, e_value=e, detail=f"inconclusive: {words}")
