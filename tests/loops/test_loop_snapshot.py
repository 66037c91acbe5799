"""A generation's snapshot (SQLite and PostgreSQL): the served name's feedback up to the cutoff (as
preference pairs for a DPO loop, thumbs-up answers for an SFT loop), de-duplicated, without the
golden eval set's prompts, recorded on the generation, and the same snapshot when taken again after
a crash."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from studio.data.ingest import ingest_file
from studio.data.snapshots import read_table, resolve_snapshot
from studio.errors import StudioError
from studio.loops import repository as repo
from studio.loops.snapshot import take_snapshot
from studio.store.db import session_scope
from studio.store.loop_models import LoopGeneration
from studio.store.models import ModelVersion
from tests.loops.traffic import at, completion, generation, log, loop_spec, rate, register

GOLDEN = [{"messages": [{"role": "user", "content": "reverse: 9 9 8"}, {"role": "assistant", "content": "8 9 9"}]},
          {"messages": [{"role": "user", "content": "reverse: 7 7"}, {"role": "assistant", "content": "7 7"}]}]


def test_the_snapshot_holds_the_served_names_pairs_to_the_cutoff_without_golden_prompts(settings, write_rows):
    url = settings.db_url
    register(url)
    register(url, "other", versions=1)
    ingest_file(write_rows("golden.jsonl", GOLDEN), "golden", settings)
    spec = loop_spec(**{"gate.dataset": "golden"})
    gen_id = generation(url, spec)
    p1, p2, gold, late = "reverse: 1 2", "reverse: 3 4", "reverse: 9 9 8", "reverse: 5 6"
    log(url, [
        completion("a1", "svc@1", at(0), prompt=p1, response="1 2"),
        completion("a2", "svc@2", at(1), prompt=p1, response="2 1", experiment=None),
        completion("a3", "svc@2", at(2), prompt=p1, response="2 1"),  # the same pair again
        completion("b1", "svc@1", at(3), prompt=p2, response="3 4"),
        completion("b2", "svc@1", at(4), prompt=p2, response="4 3"),
        completion("g1", "svc@1", at(5), prompt=gold, response="8 9 9"),
        completion("g2", "svc@2", at(6), prompt=gold, response="9 9 8"),
        completion("d1", "svc@1", at(7), prompt=late, response="6 5"),
        completion("d2", "svc@1", at(8), prompt=late, response="5 6"),
        completion("o1", "other@1", at(9), prompt="reverse: 0 1", response="1 0"),
        completion("o2", "other@1", at(9), prompt="reverse: 0 1", response="0 1"),
    ])
    for cid, rating, s in [("a1", -1, 10), ("a2", 1, 11), ("a3", 1, 12), ("g1", 1, 13), ("g2", -1, 14),
                           ("d1", 1, 150), ("d2", -1, 151), ("o1", 1, 15), ("o2", -1, 16)]:
        rate(url, cid, at(s), rating=rating)
    rate(url, "b1", at(17), preferred="b2")

    done = take_snapshot(settings, gen_id, at(100))
    assert (done["name"], done["version"], done["rows"], done["golden_dropped"]) == ("svc-loop-preferences", 1, 2, 1)
    assert (done["found"], done["explicit"], done["from_ratings"], done["duplicates"]) == (3, 1, 3, 1)
    assert done["cutoff"] == "2026-03-01T12:01:40+00:00"
    with session_scope(url) as s:
        snap = resolve_snapshot(s, "svc-loop-preferences").snapshot
        rows = read_table(snap.uri).to_pylist()
        gen = repo.get_generation(s, gen_id)
        assert (gen.snapshot_id, gen.cutoff_at) == (snap.id, at(100))
        assert (snap.kind, snap.transform, snap.dropped_count) == ("preference", "loop-preference", 1)
        assert snap.params["golden"] == "golden" and snap.params["generation"] == 1
    assert sorted(rows, key=lambda r: r["prompt"]) == [
        {"prompt": p1, "chosen": "2 1", "rejected": "1 2"},
        {"prompt": p2, "chosen": "4 3", "rejected": "3 4"}]

    # Taken again (a retry after a crash, a later clock): the recorded cutoff wins, nothing new is stored.
    again = take_snapshot(settings, gen_id, at(500))
    assert (again["snapshot_id"], again["version"], again["cutoff"]) == (snap.id, 1, done["cutoff"])


def test_no_pairs_at_the_cutoff_stores_nothing_and_says_why(settings):
    url = settings.db_url
    register(url)
    gen_id = generation(url, loop_spec(**{"gate.dataset": "null"}))
    log(url, [completion("a", "svc@1", at(0)), completion("b", "svc@1", at(1), response="1 2")])
    rate(url, "a", at(2), rating=1)
    rate(url, "b", at(200), rating=-1)  # after the cutoff: no pair yet
    with pytest.raises(StudioError) as e:
        take_snapshot(settings, gen_id, at(100))
    assert "no preference pairs to train on at the cutoff 2026-03-01T12:01:40+00:00 (0 pairs" in e.value.problem
    with session_scope(url) as s:
        gen = repo.get_generation(s, gen_id)
        assert gen.snapshot_id is None and gen.cutoff_at == at(100)


def test_a_replay_share_of_the_champions_own_preference_data_is_mixed_in_the_same_on_a_retry(settings, write_rows):
    url = settings.db_url
    register(url)
    old = [{"prompt": f"reverse: {i} 0", "chosen": f"0 {i}", "rejected": f"{i} 0"} for i in range(10)]
    old.append({"prompt": "reverse: 9 9 8", "chosen": "8 9 9", "rejected": "9 9 8"})  # a golden prompt
    ingest_file(write_rows("old.jsonl", old), "old-prefs", settings)
    ingest_file(write_rows("golden.jsonl", GOLDEN), "golden", settings)
    with session_scope(url) as s:
        champion = s.scalars(select(ModelVersion).where(ModelVersion.name == "svc", ModelVersion.version == 1)).one()
        champion.dataset_snapshot_id = resolve_snapshot(s, "old-prefs").snapshot.id
    gen_id = generation(url, loop_spec(**{"gate.dataset": "golden", "train.replay_share": 0.5}))
    with session_scope(url) as s:
        s.get(LoopGeneration, gen_id).champion = "svc@1"
    log(url, [completion(f"n{i}{j}", "svc@1", at(i), prompt=f"reverse: {i} 5", response=r)
              for i in range(3) for j, r in enumerate((f"5 {i}", f"{i} 5"))])
    for i in range(3):
        rate(url, f"n{i}0", at(10), rating=1)
        rate(url, f"n{i}1", at(10), rating=-1)

    done = take_snapshot(settings, gen_id, at(100))
    # 3 new pairs at a share of 0.5: 3 drawn from the champion's 11 (a golden one would be dropped)
    assert (done["replayed"], done["rows"] + done["golden_dropped"]) == (3, 6)
    with session_scope(url) as s:
        snap = resolve_snapshot(s, done["snapshot_id"]).snapshot
        assert snap.params["replay_from"] == resolve_snapshot(s, "old-prefs").snapshot.id
        rows = read_table(snap.uri).to_pylist()
    assert sum(r["prompt"].endswith(" 0") or r["prompt"] == "reverse: 9 9 8" for r in rows) + done["golden_dropped"] == 3
    with session_scope(url) as s:  # a retry (the snapshot id forgotten) draws the same rows: the same snapshot
        s.get(LoopGeneration, gen_id).snapshot_id = None
    assert take_snapshot(settings, gen_id, at(500))["snapshot_id"] == done["snapshot_id"]


def _sft_generation(url: str, spec) -> int:
    """A generation of a loop whose training recipe is SFT (only its method matters to the snapshot)."""
    with session_scope(url) as s:
        loop = repo.create_loop(s, spec, created_by="admin")
        gen = repo.start_generation(s, loop, repo.frozen_config(spec, {"method": "sft"}), actor="scheduler")
        gen.champion = "svc@1"
        return gen.id


def test_an_sft_loops_snapshot_holds_the_thumbs_up_answers_and_replays_the_champions_own(settings, write_rows):
    url = settings.db_url
    register(url)
    register(url, "other", versions=1)
    ingest_file(write_rows("golden.jsonl", GOLDEN), "golden", settings)
    old = [{"prompt": f"reverse: {i} 0", "completion": f"0 {i}"} for i in range(10)]
    ingest_file(write_rows("old.jsonl", old), "old-sft", settings)
    with session_scope(url) as s:
        champion = s.scalars(select(ModelVersion).where(ModelVersion.name == "svc", ModelVersion.version == 1)).one()
        champion.dataset_snapshot_id = resolve_snapshot(s, "old-sft").snapshot.id
    gen_id = _sft_generation(url, loop_spec(**{"gate.dataset": "golden", "train.replay_share": 0.25}))
    p1, p2, gold = "reverse: 1 2", "reverse: 3 4", "reverse: 9 9 8"
    log(url, [
        completion("a1", "svc@1", at(0), prompt=p1, response="2 1"),
        completion("a2", "svc@2", at(1), prompt=p1, response="2 1"),  # the same answer again: one row
        completion("a3", "svc@1", at(2), prompt=p1, response="1 2"),  # thumbs down: not trained on
        completion("b1", "svc@1", at(3), prompt=p2, response="4 3"),  # one up, one down: mean 0, not endorsed
        completion("b2", "svc@1", at(4), prompt=p2, response="3 4"),
        completion("b3", "svc@2", at(5), prompt=p2, response="4 3 "),  # preferred to b2 by a person
        completion("g1", "svc@1", at(6), prompt=gold, response="8 9 9"),  # a golden prompt: dropped
        completion("d1", "svc@1", at(7), prompt="reverse: 5 6", response="6 5"),  # rated after the cutoff
        completion("o1", "other@1", at(8), prompt="reverse: 0 1", response="1 0"),  # another name's
    ])
    for cid, rating, sec in [("a1", 1, 10), ("a2", 1, 11), ("a3", -1, 12), ("b1", 1, 13), ("b1", -1, 14),
                             ("g1", 1, 15), ("d1", 1, 150), ("o1", 1, 16)]:
        rate(url, cid, at(sec), rating=rating)
    rate(url, "b2", at(17), preferred="b3")

    done = take_snapshot(settings, gen_id, at(100))
    assert (done["name"], done["kind"], done["what"]) == ("svc-loop-answers", "prompt_completion", "thumbs-up answers")
    assert (done["found"], done["rated_up"], done["preferred"], done["duplicates"]) == (3, 3, 1, 1)
    # 3 new answers at a share of 0.25: 1 drawn from the champion's own 10
    assert (done["rows"], done["golden_dropped"], done["replayed"]) == (3, 1, 1)
    with session_scope(url) as s:
        snap = resolve_snapshot(s, "svc-loop-answers").snapshot
        rows = read_table(snap.uri).to_pylist()
        assert (snap.kind, snap.transform, snap.id) == ("prompt_completion", "loop-thumbs-up", done["snapshot_id"])
        assert snap.params["replay_from"] == resolve_snapshot(s, "old-sft").snapshot.id
        assert repo.get_generation(s, gen_id).snapshot_id == snap.id
    new = sorted((r["prompt"], r["completion"]) for r in rows if not r["prompt"].endswith(" 0"))
    assert new == [(p1, "2 1"), (p2, "4 3 ")]
    # What an SFT training job accepts (preflight checks the method's dataset kinds).
    from studio.train.spec import METHOD_KINDS
    assert snap.kind in METHOD_KINDS["sft"]
    assert take_snapshot(settings, gen_id, at(500))["snapshot_id"] == done["snapshot_id"]


def test_an_sft_loop_with_no_thumbs_up_answer_stores_nothing_and_says_why(settings):
    url = settings.db_url
    register(url)
    gen_id = _sft_generation(url, loop_spec(**{"gate.dataset": "null"}))
    log(url, [completion("a", "svc@1", at(0)), completion("b", "svc@1", at(1), response="1 2")])
    rate(url, "a", at(2), rating=-1)
    rate(url, "b", at(200), rating=1)  # after the cutoff
    with pytest.raises(StudioError) as e:
        take_snapshot(settings, gen_id, at(100))
    assert "no thumbs-up answers to train on at the cutoff" in e.value.problem


def test_the_gates_must_pass_items_are_never_trained_on_either(settings, write_rows):
    url = settings.db_url
    register(url)
    ingest_file(write_rows("must.jsonl", [{"prompt": "reverse: 4 4 2", "completion": "2 4 4"}]), "must", settings)
    gen_id = generation(url, loop_spec(**{"gate.dataset": "null", "gate.must_pass": "{dataset: must}"}))
    kept, must = "reverse: 1 2", "reverse: 4 4 2"
    log(url, [completion("a1", "svc@1", at(0), prompt=kept, response="1 2"),
              completion("a2", "svc@1", at(1), prompt=kept, response="2 1"),
              completion("m1", "svc@1", at(2), prompt=must, response="4 4 2"),
              completion("m2", "svc@1", at(3), prompt=must, response="2 4 4")])
    for cid, rating in (("a1", -1), ("a2", 1), ("m1", -1), ("m2", 1)):
        rate(url, cid, at(10), rating=rating)
    done = take_snapshot(settings, gen_id, at(100))
    assert (done["rows"], done["golden_dropped"]) == (1, 1)
    with session_scope(url) as s:
        snap = resolve_snapshot(s, done["snapshot_id"]).snapshot
        assert read_table(snap.uri).to_pylist() == [{"prompt": kept, "chosen": "2 1", "rejected": "1 2"}]
        assert snap.params["must_pass"] == "must"
