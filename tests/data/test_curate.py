"""Curation on real snapshots: every step drops or changes the right rows with a recorded reason,
results carry lineage, and re-runs give identical snapshot ids."""

from __future__ import annotations

import pytest

from studio.data.curate import CurateSpec, curate, load_curate_spec, rerun
from studio.data.ingest import ingest_file
from studio.data.snapshots import load_split, resolve_snapshot
from studio.data.tools import dropped_rows
from studio.errors import StudioError
from studio.models.tiny import TinyModelSpec, build_tokenizer
from studio.store.db import session_scope


def rows_of(settings, ref: str) -> list[dict]:
    with session_scope(settings.db_url) as s:
        uri = resolve_snapshot(s, ref).snapshot.uri
    return load_split(uri).to_pylist()


def pc(prompt: str, completion: str) -> dict:
    return {"prompt": prompt, "completion": completion}


LONG = "the quick brown fox jumps over the lazy dog near the river bank at dawn today"


@pytest.fixture
def noisy(settings, write_rows):
    rows = [
        pc("What is 2+2?", "4"),
        pc("what is 2+2?", "4"),                       # exact duplicate after normalization
        pc("Tell me a story", LONG),
        pc("Tell me a story", LONG.replace("today", "again")),  # near duplicate
        pc("Mail me", "write to jane.doe@example.com or call +1 (555) 010-9999"),
        pc("Broken", "caf\ufffd au lait"),
        pc("Ctrl", "bell\x07 rings"),
        pc("Order id", "your order 12345678901 ships"),  # digits without separators: not a phone
    ]
    ingest_file(write_rows("noisy.jsonl", rows), "noisy", settings)
    return rows


def test_steps_drop_with_reasons_and_redact(settings, noisy):
    spec = CurateSpec(source="noisy", steps=[
        {"type": "dedupe", "near_threshold": 0.6},
        {"type": "charset"},
        {"type": "redact"},
    ])
    out = curate(spec, settings)
    assert (out["name"], out["version"], out["rows"], out["dropped"]) == ("noisy-curated", 1, 4, 4)
    kept = rows_of(settings, "noisy-curated")
    assert [r["prompt"] for r in kept] == ["What is 2+2?", "Tell me a story", "Mail me", "Order id"]
    assert kept[2]["completion"] == "write to [EMAIL] or call [PHONE]"
    assert kept[3]["completion"] == "your order 12345678901 ships"
    dropped = dropped_rows(settings, "noisy-curated")
    reasons = {r["row"]: (r["step"], r["reason"]) for r in dropped["rows"]}
    assert dropped["total"] == 4
    assert reasons[2] == ("dedupe", "exact duplicate of row 1 (after lower-casing and collapsing whitespace)")
    assert reasons[4][0] == "dedupe" and reasons[4][1].startswith("near-duplicate of row 3")
    assert "U+FFFD" in reasons[6][1] and "U+0007" in reasons[7][1]
    assert dropped["rows"][0]["data"] == pc("what is 2+2?", "4")  # the dropped row itself is kept


def test_identical_input_gives_identical_ids_and_lineage(settings, noisy):
    spec = CurateSpec(source="noisy", name="clean", steps=[{"type": "dedupe", "near_threshold": None}])
    first = curate(spec, settings)
    again = curate(spec, settings)
    assert again["snapshot_id"] == first["snapshot_id"]
    assert (again["version"], again["created"]) == (1, False)
    with session_scope(settings.db_url) as s:
        snap = resolve_snapshot(s, "clean").snapshot
        src = resolve_snapshot(s, "noisy").snapshot
        assert (snap.parent_id, snap.transform) == (src.id, "curate")
        assert snap.params["steps"][0]["type"] == "dedupe"
    # Other parameters keeping other rows: another snapshot, the name gets a new version.
    other = curate(CurateSpec(source="noisy", name="clean",
                              steps=[{"type": "dedupe", "near_threshold": 0.5}]), settings)
    assert other["snapshot_id"] != first["snapshot_id"] and other["version"] == 2
    # The recorded steps re-run on the same source give the same snapshot.
    assert rerun(first["snapshot_id"][:12], "noisy", settings, name="clean2")["snapshot_id"] == first["snapshot_id"]


def test_length_bounds_use_the_models_tokenizer(settings, write_rows, tmp_path):
    tok_dir = tmp_path / "tok"
    build_tokenizer(TinyModelSpec()).save_pretrained(tok_dir)
    rows = [pc("reverse: 1 2 3", "3 2 1"), pc("reverse: 1 2 3 4 5 6 7 8 9", "9 8 7 6 5 4 3 2 1")]
    ingest_file(write_rows("rev.jsonl", rows), "rev", settings)
    out = curate(CurateSpec(source="rev", steps=[
        {"type": "length", "tokenizer": str(tok_dir), "max_tokens": 20}]), settings)
    assert out["rows"] == 1
    reason = dropped_rows(settings, "rev-curated")["rows"][0]["reason"]
    assert reason.endswith("tokens, more than max_tokens 20"), reason
    words = curate(CurateSpec(source="rev", name="w", steps=[{"type": "length", "max_tokens": 8}]), settings)
    assert words["rows"] == 1
    assert "words" in dropped_rows(settings, "w")["rows"][0]["reason"]


def test_broken_chat_turns_are_dropped(settings, write_rows):
    def chat(*turns):
        return {"messages": [{"role": r, "content": c} for r, c in turns]}
    rows = [chat(("user", "hi"), ("assistant", "hello")),
            chat(("user", "hi"), ("assistant", "   ")),
            chat(("user", "hi"), ("user", "again"), ("assistant", "ok")),
            chat(("user", "hi"))]
    ingest_file(write_rows("chat.jsonl", rows), "chat", settings)
    out = curate(CurateSpec(source="chat", steps=[{"type": "turns"}]), settings)
    assert out["rows"] == 1
    reasons = [r["reason"] for r in dropped_rows(settings, "chat-curated")["rows"]]
    assert reasons == ["messages[1] (assistant) is empty", "messages[0] and [1] are both user turns",
                       "last turn is user, not assistant"]


def test_mix_adds_the_share_of_general_rows(settings, write_rows):
    ingest_file(write_rows("task.jsonl", [pc(f"t{i}", "x") for i in range(30)]), "task", settings)
    ingest_file(write_rows("gen.jsonl", [pc(f"g{i}", "y") for i in range(100)]), "general", settings)
    out = curate(CurateSpec(source="task", steps=[{"type": "mix", "snapshot": "general", "share": 0.25}]),
                 settings)
    rows = rows_of(settings, "task-curated")
    assert out["rows"] == 40 and sum(r["prompt"].startswith("g") for r in rows) == 10
    again = curate(CurateSpec(source="task", steps=[{"type": "mix", "snapshot": "general", "share": 0.25}]),
                   settings)
    assert again["snapshot_id"] == out["snapshot_id"]
    ingest_file(write_rows("txt.jsonl", [{"text": "a"}]), "texts", settings)
    with pytest.raises(StudioError, match="holds text rows, the source holds prompt_completion"):
        curate(CurateSpec(source="task", steps=[{"type": "mix", "snapshot": "texts", "share": 0.1}]), settings)


def test_everything_dropped_stores_nothing(settings, write_rows):
    ingest_file(write_rows("a.jsonl", [pc("a", "b")]), "tiny", settings)
    with pytest.raises(StudioError, match="dropped every row"):
        curate(CurateSpec(source="tiny", steps=[{"type": "length", "min_chars": 100}]), settings)


def test_recipe_validates_fields(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text("source: x\nsteps:\n  - type: dedupe\n    near: 0.5\n")
    with pytest.raises(StudioError, match="near"):
        load_curate_spec(str(p))


def test_every_step_reruns_to_the_same_id_in_another_process(settings, noisy, write_rows, tmp_path):
    """The whole chain (turns, charset, redact, near-dedupe, token bounds with the model's tokenizer,
    mix) on identical input gives an identical snapshot id — here, in this process and in a fresh
    one with another hash seed (set iteration order differs there), from another ingest of the
    same content."""
    import json
    import os
    import subprocess
    import sys

    tok = tmp_path / "tok"
    build_tokenizer(TinyModelSpec()).save_pretrained(tok)
    ingest_file(write_rows("general.jsonl", [pc(f"general {i}", "text") for i in range(20)]), "general", settings)
    steps = [{"type": "turns"}, {"type": "charset"}, {"type": "redact"},
             {"type": "dedupe", "near_threshold": 0.6},
             {"type": "length", "tokenizer": str(tok), "min_tokens": 2, "max_tokens": 400},
             {"type": "mix", "snapshot": "general", "share": 0.3, "seed": 3}]
    first = curate(CurateSpec(source="noisy", name="chain", steps=steps), settings)
    ingest_file(write_rows("copy.jsonl", noisy), "noisy-copy", settings)  # same content, other name
    script = ("import json, sys\nfrom studio.data.curate import CurateSpec, curate\n"
              "from studio.settings import StudioSettings\n"
              "s = StudioSettings(home=sys.argv[1], database_url=sys.argv[2], artifacts_uri=None)\n"
              "print(json.dumps(curate(CurateSpec.model_validate(json.loads(sys.argv[3])), s)))\n")
    spec = {"source": "noisy-copy", "name": "chain-again", "steps": steps}
    out = subprocess.run([sys.executable, "-c", script, str(settings.home), settings.db_url, json.dumps(spec)],
                         env={**os.environ, "PYTHONHASHSEED": "12345"}, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    again = json.loads(out.stdout.strip().splitlines()[-1])
    assert again["snapshot_id"] == first["snapshot_id"] and again["rows"] == first["rows"]
    assert [(r["row"], r["step"], r["reason"]) for r in dropped_rows(settings, "chain-again")["rows"]] == \
        [(r["row"], r["step"], r["reason"]) for r in dropped_rows(settings, "chain")["rows"]]
