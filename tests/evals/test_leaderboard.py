"""Leaderboard arithmetic: mean with a Student-t 95% interval, win rates with ties, latency and
cost aggregates (cache hits and errors kept out of latency)."""

from __future__ import annotations

import math

import pytest

from studio.evals.leaderboard import build, mean_ci


def test_mean_ci_matches_student_t():
    values = [1.0, 0.0, 1.0, 1.0, 0.0, 1.0, 1.0, 1.0]
    out = mean_ci(values)
    mean, sd, n = 0.75, 0.4629100498862757, 8
    half = 2.3646242515927844 * sd / math.sqrt(n)  # t(0.975, 7)
    assert out["n"] == 8 and out["mean"] == pytest.approx(mean)
    assert out["ci95"] == pytest.approx([mean - half, mean + half])
    assert mean_ci([]) == {"n": 0, "mean": None, "ci95": None}
    assert mean_ci([0.5])["ci95"] is None  # one sample: no interval


def test_build_scores_win_rates_and_model_costs():
    scores = [  # (run, datapoint, model, scorer, score, status)
        (1, 0, "a", "em", 1.0, "scored"), (1, 0, "b", "em", 0.0, "scored"),
        (1, 1, "a", "em", 1.0, "scored"), (1, 1, "b", "em", 1.0, "scored"),
        (1, 2, "a", "em", 0.0, "scored"), (1, 2, "b", "em", 1.0, "scored"),
        (1, 3, "a", "em", 1.0, "scored"), (1, 3, "b", "em", None, "unscored"),
    ]
    outputs = [("a", 100.0, 0.001, False, None), ("a", 5.0, 0.0, True, None), ("a", 300.0, 0.001, False, None),
               ("b", 50.0, 0.002, False, None), ("b", None, 0.0, False, "gateway answered 502")]
    board = build(scores, outputs, ["a", "b"])
    by = {(r["model"], r["scorer"]): r for r in board["scores"]}
    assert by[("a", "em")]["mean"] == 0.75 and by[("a", "em")]["n"] == 4
    assert by[("b", "em")]["mean"] == pytest.approx(2 / 3) and by[("b", "em")]["unscored"] == 1
    win = {(w["model"], w["opponent"]): w for w in board["win_rates"]}
    # common datapoints 0..2: a wins 0, ties 1, loses 2
    assert win[("a", "b")]["n"] == 3 and win[("a", "b")]["win_rate"] == pytest.approx(0.5)
    assert win[("b", "a")]["win_rate"] == pytest.approx(0.5)
    perf = {m["model"]: m for m in board["models"]}
    assert perf["a"]["answers"] == 3 and perf["a"]["cache_hits"] == 1
    assert perf["a"]["latency_ms_mean"] == 200.0  # the cache hit is not a latency sample
    assert perf["a"]["cost_usd"] == pytest.approx(0.002)
    assert perf["b"]["errors"] == 1 and perf["b"]["latency_ms_mean"] == 50.0
