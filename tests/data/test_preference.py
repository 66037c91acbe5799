"""Preference snapshots from the pairwise judge verdicts an evaluation run stored."""

from __future__ import annotations

import pytest

from studio.evals.preference import preference_from_eval
from studio.data.snapshots import load_split, resolve_snapshot
from studio.data.tools import dropped_rows
from studio.errors import StudioError
from studio.jobs.status import create_job
from studio.store.db import session_scope
from studio.store.models import EvalOutput, EvalScore


def _eval_run(settings) -> int:
    spec = {"dataset": "d@1", "models": ["base", "tuned"], "scorers": [
        {"type": "judge", "name": "pair", "mode": "pairwise", "model": "judge"},
        {"type": "exact_match"}]}
    with session_scope(settings.db_url) as s:
        job = create_job(s, name="ev", spec=spec, max_retries=0, submitted_by="t", kind="eval")
        jid = job.id
        msgs = lambda q: [{"role": "user", "content": q}]  # noqa: E731
        for dp, (q, base, tuned, verdict) in enumerate([
                ("reverse: 1 2", "1 2", "2 1", 1.0), ("reverse: 3 4", "4 3", "3 3", 0.0),
                ("reverse: 5 6", "6 5", "6 5", 0.5), ("reverse: 7 8", "8 7", None, None)]):
            s.add(EvalOutput(job_id=jid, datapoint=dp, model="base", input=msgs(q), output=base))
            s.add(EvalOutput(job_id=jid, datapoint=dp, model="tuned", input=msgs(q), output=tuned,
                             error=None if tuned else "timeout"))
            s.add(EvalScore(job_id=jid, datapoint=dp, model="tuned", scorer="pair", score=verdict,
                            status="scored" if verdict is not None else "error",
                            reason=None if verdict is not None else "judge failed"))
    return jid


def test_wins_and_losses_become_preference_rows(settings):
    jid = _eval_run(settings)
    out = preference_from_eval(settings, jid, "prefs")
    assert (out["rows"], out["dropped"]) == (2, 2)
    with session_scope(settings.db_url) as s:
        snap = resolve_snapshot(s, "prefs").snapshot
        rows = load_split(snap.uri).to_pylist()
        assert (snap.kind, snap.transform, snap.params["baseline"]) == ("preference", "eval-preference", "base")
    assert rows == [{"prompt": "reverse: 1 2", "chosen": "2 1", "rejected": "1 2"},
                    {"prompt": "reverse: 3 4", "chosen": "4 3", "rejected": "3 3"}]
    reasons = sorted(r["reason"] for r in dropped_rows(settings, "prefs")["rows"])
    assert reasons[0].startswith("tie or mixed verdict (0.5)") and reasons[1].startswith("unscored (error)")
    assert preference_from_eval(settings, jid, "prefs")["snapshot_id"] == out["snapshot_id"]
    with pytest.raises(StudioError, match="not a pairwise judge"):
        preference_from_eval(settings, jid, "x", scorer="exact_match")
