"""A/B experiments, feedback and preference export through the real API and database (no Serve:
/v1 serving of aliases is tested live in tests/deployments/test_experiments_serving.py)."""

from __future__ import annotations

import json
from collections import Counter

import pytest
from typer.testing import CliRunner

from studio.experiments.ab import pick_arm
from studio.experiments.completions import ResponseCapture, prompt_text

pytestmark = pytest.mark.both_databases  # PostgreSQL too: locking, concurrent writers, constraints

ARMS = [{"model": "tiny", "weight": 0.5}, {"model": "reverse-tiny@1", "weight": 0.5}]


def test_weighted_split_is_sticky_per_user_and_honours_weights():
    arms = [{"model": "a", "weight": 3}, {"model": "b", "weight": 1}]
    picks = {f"user-{i}": pick_arm("exp", arms, f"user-{i}") for i in range(4000)}
    share_a = Counter(picks.values())["a"] / len(picks)
    assert 0.72 < share_a < 0.78, share_a  # 0.75 ± 5 standard deviations over 4000 users
    assert all(pick_arm("exp", arms, u) == arm for u, arm in list(picks.items())[:200])
    # Another alias splits the same users independently.
    other = [pick_arm("exp2", arms, u) for u in list(picks)[:400]]
    assert other != [picks[u] for u in list(picks)[:400]]
    random_picks = Counter(pick_arm("exp", arms, None) for _ in range(2000))
    assert set(random_picks) == {"a", "b"}


def test_create_list_show_update_stop(client, headers, registry):
    r = client.post("/api/experiments", json={"alias": "rev-ab", "arms": ARMS}, headers=headers)
    assert r.status_code == 201, r.text
    assert [(a["model"], a["share"]) for a in r.json()["arms"]] == [("tiny", 0.5),
                                                                   ("reverse-tiny@1", 0.5)]
    assert r.json()["status"] == "active" and r.json()["created_by"] == "alice"
    again = client.post("/api/experiments", json={"alias": "rev-ab", "arms": ARMS}, headers=headers)
    assert again.status_code == 409 and "exists" in again.json()["detail"]

    assert [e["alias"] for e in client.get("/api/experiments", headers=headers).json()] == ["rev-ab"]
    shown = client.get("/api/experiments/rev-ab", headers=headers).json()
    assert shown["requests"] == 0 and shown["arms"][0]["requests"] == 0

    patched = client.patch("/api/experiments/rev-ab", headers=headers, json={
        "arms": [{"model": "reverse-tiny@1", "weight": 3}, {"model": "reverse-tiny@2", "weight": 1}]})
    assert patched.status_code == 200, patched.text
    assert [a["share"] for a in patched.json()["arms"]] == [0.75, 0.25]
    stopped = client.post("/api/experiments/rev-ab/stop", headers=headers).json()
    assert stopped["status"] == "stopped"
    assert client.get("/api/experiments?status=active", headers=headers).json() == []
    assert client.patch("/api/experiments/rev-ab", headers=headers,
                        json={"status": "active"}).json()["status"] == "active"
    assert client.get("/api/experiments/nope", headers=headers).status_code == 404


@pytest.mark.parametrize("body, status, words", [
    ({"alias": "x@1", "arms": ARMS}, 422, "alias"),
    ({"alias": "x", "arms": []}, 422, "arms"),
    ({"alias": "x", "arms": [{"model": "tiny", "weight": 0}]}, 422, "greater than 0"),
    ({"alias": "x", "arms": [{"model": "tiny", "weight": 1}, {"model": "tiny", "weight": 1}]},
     422, "listed twice"),
    ({"alias": "x", "arms": [{"model": "reverse-tiny@9", "weight": 1}]}, 404, "reverse-tiny@9"),
    ({"alias": "reverse-tiny", "arms": ARMS}, 409, "registered model name"),
    ({"alias": "x", "arms": ARMS, "extra": 1}, 422, "extra"),
])
def test_bad_experiments_are_refused_naming_the_problem(client, headers, registry, body, status,
                                                        words):
    r = client.post("/api/experiments", json=body, headers=headers)
    assert r.status_code == status, r.text
    assert words in r.text


def test_feedback_is_stored_and_unknown_ids_are_404s(client, headers, registry, log_completions):
    client.post("/api/experiments", json={"alias": "rev-ab", "arms": ARMS}, headers=headers)
    log_completions([("c1", "rev-ab", "tiny", "tiny", "reverse: 1 2 3", "1 2 3"),
                     ("c2", "rev-ab", "reverse-tiny@1", "reverse-tiny@1", "reverse: 1 2 3", "3 2 1"),
                     ("c3", None, None, "tiny", "hello", "hi")])
    r = client.post("/v1/feedback", headers=headers, json={"completion_id": "c2", "rating": 1,
                                                            "comment": "right"})
    assert r.status_code == 200, r.text
    assert (r.json()["model_version"], r.json()["arm"], r.json()["rating"]) == (
        "reverse-tiny@1", "reverse-tiny@1", 1.0)
    r = client.post("/v1/feedback", headers=headers,
                    json={"completion_id": "c1", "preferred_completion_id": "c2"})
    assert r.status_code == 200, r.text

    missing = client.post("/v1/feedback", headers=headers, json={"completion_id": "nope-1",
                                                                  "rating": 1})
    assert missing.status_code == 404 and "nope-1" in missing.json()["error"]["message"]
    other_prompt = client.post("/v1/feedback", headers=headers,
                               json={"completion_id": "c1", "preferred_completion_id": "c3"})
    assert other_prompt.status_code == 400
    assert "different prompts" in other_prompt.json()["error"]["message"]
    empty = client.post("/v1/feedback", headers=headers, json={"completion_id": "c1"})
    assert empty.status_code == 400 and "needs a rating" in empty.json()["error"]["message"]
    assert client.post("/v1/feedback", json={"completion_id": "c1", "rating": 1}).status_code == 401

    stats = client.get("/api/experiments/rev-ab", headers=headers).json()
    arms = {a["model"]: a for a in stats["arms"]}
    assert stats["requests"] == 2 and stats["feedback"] == 2
    assert arms["tiny"]["requests"] == 1 and arms["tiny"]["not_preferred"] == 1
    assert arms["reverse-tiny@1"]["rating_mean"] == 1.0 and arms["reverse-tiny@1"]["preferred"] == 1
    assert arms["reverse-tiny@1"]["latency_ms_p50"] == 15.0
    logged = client.get("/api/experiments/rev-ab/completions", headers=headers).json()
    assert {c["id"] for c in logged} == {"c1", "c2"}


def test_export_builds_a_preference_snapshot_from_pairs_and_ratings(
        client, headers, registry, log_completions, settings):
    from studio.data.snapshots import read_table, resolve_snapshot
    from studio.store.db import session_scope

    client.post("/api/experiments", json={"alias": "rev-ab", "arms": ARMS}, headers=headers)
    nothing = client.post("/api/experiments/rev-ab/export", json={"name": "rev-pref"},
                          headers=headers)
    assert nothing.status_code == 400 and "no rated pairs" in nothing.json()["detail"]

    log_completions([
        ("a1", "rev-ab", "tiny", "tiny", "reverse: 1 2", "1 2"),
        ("a2", "rev-ab", "reverse-tiny@1", "reverse-tiny@1", "reverse: 1 2", "2 1"),
        ("b1", "rev-ab", "tiny", "tiny", "reverse: 3 4", "3 4"),
        ("b2", "rev-ab", "reverse-tiny@1", "reverse-tiny@1", "reverse: 3 4", "4 3"),
        ("c1", "rev-ab", "tiny", "tiny", "reverse: 5 6", "5 6")])  # rated alone: no pair
    feedback = [{"completion_id": "a1", "preferred_completion_id": "a2"},
                {"completion_id": "b2", "rating": 1}, {"completion_id": "b1", "rating": -1},
                {"completion_id": "c1", "rating": -1}]
    for body in feedback:
        assert client.post("/v1/feedback", json=body, headers=headers).status_code == 200
    only_one_sided = client.post("/api/experiments/rev-ab/export", json={"name": "rev-pref"},
                                 headers=headers)
    assert only_one_sided.status_code == 201, only_one_sided.text
    info = only_one_sided.json()
    assert (info["ref"], info["kind"], info["rows"]) == ("rev-pref@1", "preference", 2)
    assert (info["explicit"], info["from_ratings"]) == (1, 1)
    with session_scope(settings.db_url) as s:
        snap = resolve_snapshot(s, "rev-pref").snapshot
        assert snap.kind == "preference" and snap.columns == ["prompt", "chosen", "rejected"]
        rows = read_table(snap.uri).to_pylist()
    assert sorted(rows, key=lambda r: r["prompt"]) == [
        {"prompt": "reverse: 1 2", "chosen": "2 1", "rejected": "1 2"},
        {"prompt": "reverse: 3 4", "chosen": "4 3", "rejected": "3 4"}]


def test_export_feeds_the_dpo_recipe(client, headers, registry, log_completions, settings,
                                     tmp_path):
    """The exported dataset passes DPO's preflight (kind and columns the runner reads)."""
    from studio.models.tiny import make_tiny
    from studio.recipes import load_recipe
    from studio.store.db import session_scope
    from studio.train.preflight import preflight
    from studio.train.spec import TrainSpec

    client.post("/api/experiments", json={"alias": "rev-ab", "arms": ARMS}, headers=headers)
    log_completions([("p1", "rev-ab", "tiny", "tiny", "reverse: 7 8", "7 8"),
                     ("p2", "rev-ab", "reverse-tiny@1", "reverse-tiny@1", "reverse: 7 8", "8 7")])
    client.post("/v1/feedback", json={"completion_id": "p1", "preferred_completion_id": "p2"},
                headers=headers)
    assert client.post("/api/experiments/rev-ab/export", json={"name": "ab-pref"},
                       headers=headers).status_code == 201
    base = make_tiny(tmp_path / "tiny")
    spec = load_recipe("configs/train/dpo_reverse_tiny.yaml", TrainSpec,
                       ["data.dataset=ab-pref", f"base_model={base}"])
    with session_scope(settings.db_url) as s:
        inputs = preflight(spec, s)
    assert inputs.snapshot_kind == "preference" and inputs.dataset_ref == "ab-pref@1"


def test_cli_create_ls_show_stop_export(settings, registry, log_completions, monkeypatch):
    from studio.cli.main import app
    from studio.settings import get_settings

    monkeypatch.setenv("STUDIO_HOME", str(settings.home))
    monkeypatch.setenv("STUDIO_DATABASE_URL", settings.db_url)
    get_settings.cache_clear()
    runner = CliRunner()
    try:
        r = runner.invoke(app, ["experiments", "create", "rev-ab", "--arm", "tiny=0.5",
                                "--arm", "reverse-tiny@1=0.5"])
        assert r.exit_code == 0, r.output
        assert "tiny 50%" in r.output and "reverse-tiny@1 50%" in r.output
        bad = runner.invoke(app, ["experiments", "create", "x", "--arm", "tiny"])
        assert bad.exit_code != 0 and "MODEL=WEIGHT" in str(bad.exception)
        assert "rev-ab" in runner.invoke(app, ["experiments", "ls"]).output
        log_completions([("k1", "rev-ab", "tiny", "tiny", "hi", "x")])
        shown = runner.invoke(app, ["experiments", "show", "rev-ab", "--json"])
        assert shown.exit_code == 0 and json.loads(shown.output)["arms"][0]["requests"] == 1
        empty = runner.invoke(app, ["experiments", "export", "rev-ab", "--name", "p"])
        assert empty.exit_code != 0 and "no rated pairs" in str(empty.exception)
        assert "stopped" in runner.invoke(app, ["experiments", "stop", "rev-ab"]).output
    finally:
        get_settings.cache_clear()


def test_response_capture_reads_bodies_and_streams():
    body = ResponseCapture()
    body.add({"id": "chatcmpl-1", "choices": [{"message": {"content": "4 3"}}],
              "usage": {"completion_tokens": 3}})
    assert (body.id, body.text, body.tokens, body.error) == ("chatcmpl-1", "4 3", 3, None)
    stream = ResponseCapture()
    for piece in ("", "4", " 3"):
        stream.add("data: " + json.dumps({"id": "chatcmpl-2", "choices": [
            {"index": 0, "delta": {"content": piece}}]}) + "\n\n")
    stream.add("data: [DONE]\n\n")
    assert (stream.id, stream.text, stream.tokens) == ("chatcmpl-2", "4 3", 2)
    failed = ResponseCapture()
    failed.add({"error": {"code": 404, "message": "nope"}})
    assert failed.error["code"] == 404
    assert prompt_text("chat", [{"role": "user", "content": "hi"}]) == "hi"
    assert prompt_text("chat", [{"role": "system", "content": "s"},
                                {"role": "user", "content": "hi"}]) == "system: s\nuser: hi"
    assert prompt_text("completions", "reverse: 1 2") == "reverse: 1 2"
