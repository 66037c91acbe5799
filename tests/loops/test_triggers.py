"""A loop's triggers over the database (SQLite and PostgreSQL): new feedback since the last cutoff,
the schedule against the stored time of the last generation (with its minimum-data check), drift of
the champion's thumbs-up rate since its promotion, by hand, and the cooldown."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select

from studio.loops import repository as repo
from studio.loops import triggers
from studio.loops.states import Reason, State
from studio.store.db import session_scope
from studio.store.models import PromotionEvent
from tests.loops.traffic import T0, at, completion, generation, log, loop_spec, move, rate, register


def _check(url: str, check, spec, now):
    with session_scope(url) as s:
        loop = repo.get_loop(s, spec.name)
        return check(s, loop, spec, now)


def test_new_rated_completions_and_pairs_since_the_last_cutoff_fire_the_data_trigger(settings):
    url = settings.db_url
    register(url)
    register(url, "other", versions=1)
    spec = loop_spec(**{"trigger.min_new_rated": 3, "trigger.min_new_pairs": 2})
    gen_id = generation(url, spec)
    log(url, [completion(c, "svc@1", at(i)) for i, c in enumerate("abcd")]
        + [completion("z", "other@1", at(0)), completion("e", "svc@2", at(5))])
    rate(url, "a", at(10), rating=1)
    rate(url, "a", at(11), rating=-1)  # the same completion again: one rated completion
    rate(url, "b", at(12), rating=1)
    rate(url, "z", at(13), rating=1)  # another name's
    rate(url, "c", at(500), rating=1)  # after the check's now
    fired = _check(url, triggers.data_trigger, spec, at(100))
    assert (fired.kind, fired.fired) == (Reason.TRIGGER_DATA, False)
    assert fired.reason == ("2 new rated completions and 0 new preference pairs so far (no generation yet); "
                            "waiting for 3 rated or 2 pairs")
    assert _check(url, triggers.data_trigger, spec, at(500)).fired  # c's rating is in now

    rate(url, "d", at(20), preferred="e")
    rate(url, "b", at(21), preferred="e")
    pairs = loop_spec(**{"trigger.min_new_rated": "null", "trigger.min_new_pairs": 2})
    assert _check(url, triggers.data_trigger, pairs, at(100)).fired
    assert "2 pairs are enough" in _check(url, triggers.data_trigger, pairs, at(100)).reason

    # The generation snapshotted at 11.5 s: only feedback after it is new.
    move(url, gen_id, State.WATCHING, State.TRIGGERED, Reason.TRIGGER_DATA, at(11), cutoff_at=at(11.5))
    later = _check(url, triggers.data_trigger, spec, at(600))
    assert later.reason == ("2 new rated completions and 2 new preference pairs since the last generation's cutoff "
                            "2026-03-01T12:00:11.500000+00:00; 2 pairs are enough")  # a's ratings are before it


def test_the_schedule_is_due_by_the_stored_last_run_and_still_needs_data(settings):
    url = settings.db_url
    register(url)
    spec = loop_spec(**{"trigger.every_s": 3600, "trigger.min_data_rated": 2})
    with session_scope(url) as s:
        created = repo.create_loop(s, spec, created_by="admin").created_at
    early = _check(url, triggers.schedule_trigger, spec, created + timedelta(seconds=1000))
    assert not early.fired and early.reason == "the loop was created 1000 s ago; the schedule runs every 3600 s"
    log(url, [completion("a", "svc@1", at(0)), completion("b", "svc@1", at(1))])
    rate(url, "a", at(2), rating=1)
    due = created + timedelta(seconds=3600)
    thin = _check(url, triggers.schedule_trigger, spec, due)
    assert not thin.fired and "only 1 new rated completions" in thin.reason and "min_data_rated" in thin.reason
    rate(url, "b", at(3), rating=-1)
    assert _check(url, triggers.schedule_trigger, spec, due).fired

    with session_scope(url) as s:  # a generation started: the clock runs from its start
        gen = repo.start_generation(s, repo.get_loop(s, spec.name), repo.frozen_config(spec), actor="scheduler")
        started = gen.created_at
    assert not _check(url, triggers.schedule_trigger, spec, started + timedelta(seconds=3599)).fired
    assert "the last generation started 3600 s ago" in _check(
        url, triggers.schedule_trigger, spec, started + timedelta(seconds=3600)).reason
    off = loop_spec(**{"trigger.every_s": "null"})
    assert _check(url, triggers.schedule_trigger, off, due).reason == "no schedule is set (trigger.every_s)"


def _rated_run(url: str, start, ups: list[int], prefix: str) -> None:
    log(url, [completion(f"{prefix}{i}", "svc@1", start + timedelta(seconds=i)) for i in range(len(ups))])
    for i, up in enumerate(ups):
        rate(url, f"{prefix}{i}", start + timedelta(seconds=i + 1), rating=1 if up else -1)


def test_drift_compares_the_champions_latest_rate_with_its_rate_after_promotion(settings):
    url = settings.db_url
    register(url)  # svc@1 promoted through gated_promote: a promotion event
    spec = loop_spec(**{"trigger.drift_margin": 0.2, "trigger.min_data_rated": 5})
    generation(url, spec)
    with session_scope(url) as s:
        promoted = s.scalar(select(PromotionEvent.at).where(PromotionEvent.name == "svc"))
    _rated_run(url, promoted - timedelta(seconds=100), [0] * 5, "before")  # before the promotion: not its rate
    _rated_run(url, promoted + timedelta(seconds=10), [1] * 5, "first")
    _rated_run(url, promoted + timedelta(seconds=100), [1, 1, 0, 0], "late")
    now = promoted + timedelta(seconds=1000)
    few = _check(url, triggers.drift_trigger, spec, now)
    assert not few.fired and few.reason.startswith("svc@1 has 9 rated completions since its promotion")
    _rated_run(url, promoted + timedelta(seconds=200), [1], "last")
    fell = _check(url, triggers.drift_trigger, spec, now)
    assert fell.fired and fell.kind is Reason.TRIGGER_DRIFT
    assert fell.reason == ("svc@1's thumbs-up rate is 60.0% over its latest 5 rated completions against 100.0% over "
                           "its first 5 after promotion: fell 40.0%, the margin is 20.0%")
    wide = loop_spec(**{"trigger.drift_margin": 0.5, "trigger.min_data_rated": 5})
    assert "within the margin of 50.0%" in _check(url, triggers.drift_trigger, wide, now).reason


def test_by_hand_and_the_cooldown(settings):
    url = settings.db_url
    register(url)
    spec = loop_spec(**{"trigger.min_new_rated": 1, "cooldown_s": 600})
    gen_id = generation(url, spec)
    assert triggers.manual_trigger(spec, "alice") == triggers.Fired(Reason.TRIGGER_MANUAL, True, "run by hand by alice")
    assert not triggers.manual_trigger(loop_spec(**{"trigger.manual": "false"}), "alice").fired
    log(url, [completion("a", "svc@1", T0)])
    rate(url, "a", at(1), rating=1)
    with session_scope(url) as s:
        ended = repo.move(s, gen_id, State.WATCHING, State.CANCELLED, Reason.CANCEL, actor="admin").ended_at
    with session_scope(url) as s:
        loop = repo.get_loop(s, spec.name)
        quiet = triggers.evaluate(s, loop, ended + timedelta(seconds=10))
        later = triggers.evaluate(s, loop, ended + timedelta(seconds=700))
    assert [r.kind for r in quiet] == [Reason.TRIGGER_DATA, Reason.TRIGGER_SCHEDULE, Reason.TRIGGER_DRIFT]
    assert not quiet[0].fired and quiet[0].reason.endswith(
        "; but generation 1 ended 10 s ago; the cooldown is 600 s (cooldown_s)")
    assert later[0].fired and not later[1].fired
