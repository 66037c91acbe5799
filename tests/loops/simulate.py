"""Simulated canaries for the decision rule: rated thumbs up/down arriving per look interval, split
by the canary step's weight, counted cumulatively as the runner's looks count them. Vectorised over
generations with numpy and seeded. ``first_actions`` applies the confidence-sequence part of the
rule to every look at once; ``decide_first_action`` sends one generation's looks through ``decide``
itself (the tests check the two agree)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from studio.loops.stats import Action, ArmCounts, DecisionRule, Look, confidence_sequence, decide


@dataclass(frozen=True)
class Plan:
    weights: tuple[float, ...] = (0.10, 0.25, 0.50)  # the canary steps (the shipped loop's: SHIPPED_CANARY)
    looks_per_step: int = 10  # the last step lasts until the end
    looks: int = 60
    rated_per_look: int = 20  # rated completions per interval, both arms together
    interval_s: float = 30.0

    def step_of_look(self) -> np.ndarray:
        return np.minimum(np.arange(self.looks) // self.looks_per_step, len(self.weights) - 1)

    def weight_of_look(self) -> np.ndarray:
        return np.asarray(self.weights)[self.step_of_look()]


# The canary the shipped loop (configs/loops/reverse_tiny.yaml) gets on this machine: a look every
# 10 s for its 180 s deadline, 10 rated answers per look, 25 % for 3 looks then 50 %.
SHIPPED_CANARY = Plan(weights=(0.25, 0.50), looks_per_step=3, looks=18, rated_per_look=10, interval_s=10.0)


@dataclass
class Counts:
    """Cumulative counts at each look, shape (generations, looks)."""

    n_champion: np.ndarray
    up_champion: np.ndarray
    n_candidate: np.ndarray
    up_candidate: np.ndarray


def simulate(p_champion: float, p_candidate: float, *, generations: int = 1000, plan: Plan = Plan(),
             seed: int = 0) -> Counts:
    rng = np.random.default_rng(seed)
    n_b = rng.binomial(plan.rated_per_look, plan.weight_of_look(), size=(generations, plan.looks))
    n_a = plan.rated_per_look - n_b
    up_a, up_b = rng.binomial(n_a, p_champion), rng.binomial(n_b, p_candidate)
    return Counts(*(np.cumsum(x, axis=1) for x in (n_a, up_a, n_b, up_b)))


def first_actions(c: Counts, rule: DecisionRule) -> np.ndarray:
    """The first non-WAIT action of each generation under the rule's confidence sequence (every
    guardrail clear, no pause), as strings; "wait" if none came."""
    enough = np.minimum(c.n_champion, c.n_candidate) >= rule.min_rated_per_arm
    with np.errstate(divide="ignore", invalid="ignore"):
        _, lo, hi = confidence_sequence(c.up_champion, np.maximum(c.n_champion, 1), c.up_candidate,
                                        np.maximum(c.n_candidate, 1), rule.alpha, rule.tuning_n)
    rollback, promote = enough & (hi < 0), enough & (lo > -rule.noninferiority_margin)
    out = np.full(c.n_champion.shape[0], Action.WAIT.value, dtype=object)
    for g in range(len(out)):
        hits = np.flatnonzero(rollback[g] | promote[g])
        if hits.size:
            out[g] = Action.ROLL_BACK.value if rollback[g, hits[0]] else Action.PROMOTE.value
    return out


def looks_of(c: Counts, g: int, plan: Plan = Plan()) -> list[Look]:
    """Generation ``g``'s looks as the runner would store them (every answer rated; guardrail
    inputs equal on both arms: the questions here are about the thumbs-up rate alone)."""
    steps, weights = plan.step_of_look(), plan.weight_of_look()
    looks = []
    for t in range(plan.looks):
        a = ArmCounts(completions=int(c.n_champion[g, t]), rated=int(c.n_champion[g, t]),
                      thumbs_up=int(c.up_champion[g, t]), latency_p95_ms=100.0, tokens_per_answer=8.0)
        b = ArmCounts(completions=int(c.n_candidate[g, t]), rated=int(c.n_candidate[g, t]),
                      thumbs_up=int(c.up_candidate[g, t]), latency_p95_ms=100.0, tokens_per_answer=8.0)
        looks.append(Look(at_s=(t + 1) * plan.interval_s, step=int(steps[t]), weight=float(weights[t]),
                          champion=a, candidate=b))
    return looks


def decide_first_action(c: Counts, g: int, rule: DecisionRule, plan: Plan = Plan()) -> str:
    for look in looks_of(c, g, plan):
        action = decide(look, rule).action
        if action is not Action.WAIT:
            return action.value
    return Action.WAIT.value


def naive_peeking_promotions(c: Counts) -> float:
    """Share of generations a fixed-horizon 95 % z-interval would promote if looked at every
    interval: the peeking problem the confidence sequence exists for."""
    na, nb = np.maximum(c.n_champion, 1), np.maximum(c.n_candidate, 1)
    pa, pb = c.up_champion / na, c.up_candidate / nb
    se = np.sqrt(pa * (1 - pa) / na + pb * (1 - pb) / nb)
    lower = pb - pa - 1.96 * se
    return float(((lower > 0) & (se > 0) & (c.n_champion > 0) & (c.n_candidate > 0)).any(axis=1).mean())
