"""Train/serve parity (studio.evals.parity): the comparison, the record stored once on the version,
the gate refusing a mismatch (``force`` overrides it), and the answers a training job records at
registration (studio.train.parity) used instead of loading the folder. PEFT + transformers run for real on the
tiny model; the served side is handed in (the shared-stack e2e, tests/evals/test_eval_e2e.py, asks
the real `/v1`)."""

from __future__ import annotations

import pytest

from studio.evals.gate import GateConfig, gated_promote, set_gate
from studio.evals.parity import check_parity, compare_answers, local_dir, normalize
from studio.train.parity import RECORD_MAX_TOKENS, peft_answers, training_record
from studio.registry.versions import get_version, register_version, version_dict
from studio.store.db import session_scope
from tests.evals.conftest import write_jsonl

PROMPTS = [[{"role": "user", "content": f"reverse: {p}"}] for p in ("1 2", "3 4 5", "6 7", "8 9 0")]


def test_compare_answers_is_text_exact_and_names_the_first_difference():
    assert normalize(" 4 3\n") == "4 3" and normalize("4 3 \ufffd") == "4 3"
    ok = compare_answers(PROMPTS, ["2 1", "5 4 3 ", "7 6", "x\ufffd"], ["2 1", "5 4 3", "7 6", "x"])
    assert (ok["status"], ok["first_mismatch"], ok["compare"], ok["prompts"]) == ("ok", None, "text", 4)
    bad = compare_answers(PROMPTS, ["2 1", "5 4 3", "7 6", "0 9 8"], ["2 1", "5 4", "6 7", "0 9 8"])
    assert bad["status"] == "mismatch"
    assert bad["first_mismatch"] == {"index": 1, "prompt": "reverse: 3 4 5", "peft": "5 4 3", "served": "5 4"}


@pytest.fixture(scope="module")
def tiny_adapter(tmp_path_factory):
    from studio.models.tiny import make_tiny
    from tests.deployments.conftest import make_adapter

    root = tmp_path_factory.mktemp("parity")
    model = make_tiny(root / "tiny")
    return model, make_adapter(model, root / "adapter", seed=7)


def test_the_record_is_stored_once_and_a_mismatch_is_refused_unless_forced(settings, tmp_path, tiny_adapter):
    from studio.data.ingest import ingest_file

    model, adapter = tiny_adapter
    rows = [{"prompt": m[0]["content"], "completion": "?"} for m in PROMPTS] * 3
    ingest_file(write_jsonl(tmp_path / "train.jsonl", rows), "parity-train", settings)
    with session_scope(settings.db_url) as s:
        from studio.data.snapshots import resolve_snapshot

        snap = resolve_snapshot(s, "parity-train").snapshot.id
        for _ in range(2):
            register_version(s, name="par", base_model=str(model), method="sft", adapter_type="lora",
                             uri=str(adapter), dataset_snapshot_id=snap)
        register_version(s, name="par", base_model=str(model), method="sft", adapter_type="lora", uri="file:///x")
        set_gate(s, "par", GateConfig(dataset="parity-train", generation={"max_tokens": 8}))
        peft = peft_answers(str(model), local_dir(str(adapter)), PROMPTS, 8)
    asked = []

    def like_peft(ref, prompts, max_tokens):  # a served model that answers as PEFT does
        asked.append(ref)
        assert (prompts, max_tokens) == (PROMPTS, 8)  # the training snapshot's prompts, the gate's max_tokens
        return [a + " " for a in peft]

    def one_off(ref, prompts, max_tokens):  # a served model whose third answer differs
        asked.append(ref)
        return [*peft[:2], peft[2] + " extra", peft[3]]

    with session_scope(settings.db_url) as s:
        o = gated_promote(s, "par@1", by="t", parity=lambda *a: check_parity(*a, served=like_peft))
        assert o.outcome == "promoted" and "parity ok (4 prompts, text-exact)" in o.reason
        rec = version_dict(get_version(s, "par@1"))["parity"]
        assert rec["status"] == "ok" and rec["source"] == f"snapshot {snap}" and rec["max_tokens"] == 8
        o = gated_promote(s, "par@2", by="t", parity=lambda *a: check_parity(*a, served=one_off))
        assert o.outcome == "refused" and "parity check failed" in o.reason and "'reverse: 6 7'" in o.reason
        assert o.parity["first_mismatch"]["served"] == peft[2] + " extra"
    with session_scope(settings.db_url) as s:  # stored: the next decision asks nobody
        o = gated_promote(s, "par@2", by="t", force=True, parity=lambda *a: check_parity(*a, served=one_off))
        assert o.outcome == "forced" and "forced by t: parity check failed" in o.reason
        assert get_version(s, "par").version == 2 and asked == ["par@1", "par@2"]
        # files that are not here: unchecked, not stored, not blocking
        rec = check_parity(s, get_version(s, "par@3"), "parity-train", 8, served=one_off)
        assert rec["status"] == "unchecked" and "file:///x" in rec["reason"]
        assert get_version(s, "par@3").parity is None


def test_answers_recorded_at_registration_are_compared_without_loading_the_folder(settings, tmp_path, tiny_adapter):
    """What a training job stores (training_record: its snapshot's prompts, RECORD_MAX_TOKENS): the
    gate asks /v1 those prompts with that max_tokens and compares; the version's files need not be
    here (its uri is not a local folder, which the local check could not load)."""
    from studio.data.ingest import ingest_file
    from studio.data.snapshots import resolve_snapshot

    model, adapter = tiny_adapter
    rows = [{"prompt": m[0]["content"], "completion": "?"} for m in PROMPTS] * 3
    ingest_file(write_jsonl(tmp_path / "train.jsonl", rows), "parity-rec", settings)
    with session_scope(settings.db_url) as s:
        snap = resolve_snapshot(s, "parity-rec").snapshot
        record = training_record(snap.uri, snap.id, str(model), local_dir(str(adapter)), job_id=41)
        assert record["status"] == "recorded" and record["prompts"] == PROMPTS
        assert record["peft"] == peft_answers(str(model), local_dir(str(adapter)), PROMPTS, RECORD_MAX_TOKENS)
        for _ in range(2):
            register_version(s, name="rec", base_model=str(model), method="sft", adapter_type="lora",
                             uri="file:///not/here", dataset_snapshot_id=snap.id, parity=record)
    asked = []

    def served(answers):
        def ask(ref, prompts, max_tokens):
            asked.append((ref, max_tokens))
            assert prompts == PROMPTS
            return answers
        return ask

    with session_scope(settings.db_url) as s:
        ok = check_parity(s, get_version(s, "rec@1"), "parity-rec", 8, served=served(record["peft"]))
        assert (ok["status"], ok["peft_by"], ok["source"], ok["max_tokens"]) == ("ok", "job 41", f"snapshot {snap.id}",
                                                                               RECORD_MAX_TOKENS)
        bad = check_parity(s, get_version(s, "rec@2"), "parity-rec", 8,
                           served=served([*record["peft"][:3], record["peft"][3] + " extra"]))
        assert bad["status"] == "mismatch" and bad["first_mismatch"]["index"] == 3
        assert asked == [("rec@1", RECORD_MAX_TOKENS), ("rec@2", RECORD_MAX_TOKENS)]
    with session_scope(settings.db_url) as s:
        assert [get_version(s, f"rec@{v}").parity["status"] for v in (1, 2)] == ["ok", "mismatch"]


def test_a_preference_snapshot_records_answers_to_its_distinct_prompts(settings, tmp_path, tiny_adapter):
    """A DPO job's snapshot (preference pairs, several to one prompt as feedback gives them): its first
    distinct prompts, one user turn each, as DPO trains on them."""
    from studio.data.ingest import ingest_file
    from studio.data.snapshots import resolve_snapshot

    model, adapter = tiny_adapter
    rows = [{"prompt": m[0]["content"], "chosen": f"good {i}", "rejected": f"bad {i}"}
            for m in PROMPTS for i in range(2)]
    ingest_file(write_jsonl(tmp_path / "pref.jsonl", rows), "parity-pref", settings)
    with session_scope(settings.db_url) as s:
        snap = resolve_snapshot(s, "parity-pref").snapshot
        assert snap.kind == "preference"
        record = training_record(snap.uri, snap.id, str(model), local_dir(str(adapter)), job_id=7)
    assert record["status"] == "recorded" and record["prompts"] == PROMPTS and record["peft_by"] == "job 7"
    assert record["peft"] == peft_answers(str(model), local_dir(str(adapter)), PROMPTS, RECORD_MAX_TOKENS)


def test_no_answers_are_recorded_for_a_snapshot_without_prompts(settings, tmp_path, tiny_adapter):
    from studio.data.ingest import ingest_file
    from studio.data.snapshots import resolve_snapshot

    model, adapter = tiny_adapter
    ingest_file(write_jsonl(tmp_path / "corpus.jsonl", [{"text": f"some text {i}"} for i in range(8)]),
                "parity-corpus", settings)
    with session_scope(settings.db_url) as s:
        snap = resolve_snapshot(s, "parity-corpus").snapshot
        assert training_record(snap.uri, snap.id, str(model), local_dir(str(adapter)), job_id=1) is None
