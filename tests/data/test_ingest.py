"""Ingest of real files into a real database and artifact store: good rows are kept, every bad row
is reported with its row number and reason, and failures store nothing."""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from sqlalchemy import select

from studio.data.ingest import MAX_REPORTED, MAX_ROW_BYTES, ingest_file
from studio.data.snapshots import load_split, resolve_snapshot
from studio.errors import StudioError
from studio.store.db import session_scope
from studio.store.models import DatasetSnapshot, DatasetVersion


def pc_rows(n: int, start: int = 0) -> list[dict[str, str]]:
    return [{"prompt": f"reverse: {i}", "completion": str(i)[::-1]} for i in range(start, start + n)]


def chat_row(user: str, assistant: str, role: str = "user") -> dict:
    return {"messages": [{"role": role, "content": user}, {"role": "assistant", "content": assistant}]}


def versions(settings, name: str) -> list[tuple[int, str]]:
    with session_scope(settings.db_url) as s:
        rows = s.execute(
            select(DatasetVersion.version, DatasetVersion.snapshot_id)
            .where(DatasetVersion.name == name)
            .order_by(DatasetVersion.version)
        ).all()
    return [tuple(r) for r in rows]


def snapshot_count(settings) -> int:
    with session_scope(settings.db_url) as s:
        return len(s.scalars(select(DatasetSnapshot.id)).all())


def stored_rows(settings, ref: str) -> list[dict]:
    with session_scope(settings.db_url) as s:
        uri = resolve_snapshot(s, ref).snapshot.uri
    return load_split(uri).to_pylist()


def rejected(report) -> dict[int, str]:
    return {r.row: r.reason for r in report.rejected}


# --- good files in every format -------------------------------------------------------------


def test_jsonl_round_trips_through_the_artifact_store(settings, write_rows):
    rows = pc_rows(5)
    report = ingest_file(write_rows("pc.jsonl", rows), "digits", settings)
    assert (report.kind, report.row_count, report.rejected_count, report.version) == (
        "prompt_completion", 5, 0, 1)
    assert report.created
    assert Path(report.uri).is_file()
    assert Path(report.uri).is_relative_to(Path(settings.artifacts))
    assert stored_rows(settings, "digits") == rows
    with session_scope(settings.db_url) as s:
        snap = s.get(DatasetSnapshot, report.snapshot_id)
        assert (snap.kind, snap.row_count, snap.columns) == ("prompt_completion", 5,
                                                             ["prompt", "completion"])
        assert snap.stats["rows"] == 5 and snap.stats["max_chars_prompt"] == len("reverse: 4")


def test_csv_is_ingested(settings, write_rows):
    rows = pc_rows(4)
    report = ingest_file(write_rows("pc.csv", rows), "csv", settings)
    assert (report.kind, report.row_count, report.rejected_count) == ("prompt_completion", 4, 0)
    assert stored_rows(settings, "csv") == rows


def test_csv_rows_report_their_own_problems(settings, write_rows, tmp_path):
    path = tmp_path / "inputs" / "mixed.csv"
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(
        b"prompt,completion\n"
        b"a,b\n"
        b"c,d,extra\n"  # row 2: too many fields
        b"e,\n"  # row 3: empty completion
        b"caf\xe9,x\n"  # row 4: latin-1, not UTF-8
        b"\"g, with comma\",h\n"
    )
    report = ingest_file(path, "csv-bad", settings)
    assert report.row_count == 2
    reasons = rejected(report)
    assert set(reasons) == {2, 3, 4}
    assert "more fields than the header" in reasons[2]
    assert "'completion' is empty" in reasons[3]
    assert "not valid UTF-8" in reasons[4]
    assert stored_rows(settings, "csv-bad")[1] == {"prompt": "g, with comma", "completion": "h"}


def test_csv_fields_larger_than_the_csv_module_default_are_read(settings, write_rows):
    # Python's csv module refuses fields over 128 KiB unless told otherwise.
    long = "x" * 300_000
    path = write_rows("long.csv", [{"text": long}, {"text": "short"}])
    report = ingest_file(path, "long-csv", settings)
    assert (report.row_count, report.rejected_count) == (2, 0)
    assert stored_rows(settings, "long-csv")[0]["text"] == long


def test_csv_field_over_the_row_limit_is_rejected_and_the_rest_kept(settings, write_rows):
    path = write_rows("huge.csv", [{"text": "a"}, {"text": "x" * (MAX_ROW_BYTES + 10)}, {"text": "c"}])
    report = ingest_file(path, "huge-csv", settings)
    assert report.row_count == 2
    assert list(rejected(report)) == [2]
    assert "limit" in rejected(report)[2]


def test_csv_with_a_utf8_bom_header(settings, tmp_path):
    # Spreadsheet exports start with a byte-order mark; it must not become part of the column name.
    path = tmp_path / "bom.csv"
    path.write_bytes(b"\xef\xbb\xbfprompt,completion\na,b\n")
    report = ingest_file(path, "bom-csv", settings)
    assert (report.kind, report.row_count) == ("prompt_completion", 1)


def test_jsonl_with_a_utf8_bom(settings, tmp_path):
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps({"text": "a"}).encode() + b"\n")
    report = ingest_file(path, "bom-jsonl", settings)
    assert (report.row_count, report.rejected_count) == (1, 0)


def test_csv_chat_rows_carry_messages_as_json(settings, write_rows):
    good = json.dumps(chat_row("hi", "hello")["messages"])
    path = write_rows("chat.csv", [{"messages": good}, {"messages": "not json"}])
    report = ingest_file(path, "chat-csv", settings)
    assert (report.kind, report.row_count) == ("chat", 1)
    assert "not a JSON list" in rejected(report)[2]
    assert stored_rows(settings, "chat-csv") == [chat_row("hi", "hello")]


def test_parquet_is_ingested(settings, write_rows):
    rows = [chat_row("q1", "a1"), chat_row("q2", "a2"), chat_row("q3", "a3", role="robot")]
    report = ingest_file(write_rows("chat.parquet", rows), "chat-pq", settings)
    assert (report.kind, report.row_count) == ("chat", 2)
    assert "role 'robot'" in rejected(report)[3]
    assert stored_rows(settings, "chat-pq") == rows[:2]


def test_unreadable_parquet_is_a_studio_error(settings, tmp_path):
    path = tmp_path / "broken.parquet"
    path.write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(StudioError, match="not a readable Parquet file"):
        ingest_file(path, "broken", settings)
    assert snapshot_count(settings) == 0


def test_json_array_is_ingested_and_non_objects_rejected(settings, write_rows):
    path = write_rows("rows.json", [{"text": "one"}, "just a string", {"text": "three"}])
    report = ingest_file(path, "arr", settings)
    assert (report.kind, report.row_count) == ("text", 2)
    assert "must be a JSON object, got str" in rejected(report)[2]


@pytest.mark.parametrize(
    "content, message",
    [
        ('{"text": "an object, not an array"}', "must hold a JSON array"),
        ('{"text": "a"}\n{"text": "b"}\n', "not a JSON document"),  # JSONL saved as .json
    ],
)
def test_json_that_is_not_an_array_is_a_studio_error(settings, tmp_path, content, message):
    path = tmp_path / "x.json"
    path.write_text(content)
    with pytest.raises(StudioError, match=message):
        ingest_file(path, "x", settings)


# --- the bad inputs -------------------------------------------------------------------------


def test_broken_json_lines_are_reported_by_row_number(settings, write_rows):
    rows = [*pc_rows(2), '{"prompt": "x", "completion": ', *pc_rows(1, 2), "not json at all", "",
            *pc_rows(1, 3)]
    report = ingest_file(write_rows("broken.jsonl", rows), "broken", settings)
    assert report.row_count == 4
    assert report.rejected_count == 2
    reasons = rejected(report)
    assert list(reasons) == [3, 5]  # the blank line 6 is skipped silently, numbering continues
    assert all(r.startswith("broken JSON") for r in reasons.values())
    with session_scope(settings.db_url) as s:
        assert s.scalars(select(DatasetVersion.rejected_rows)).one() == 2


def test_missing_column_is_reported(settings, write_rows):
    rows = [*pc_rows(3), {"prompt": "no completion"}, {"prompt": "p", "completion": None}]
    report = ingest_file(write_rows("missing.jsonl", rows), "missing", settings)
    assert report.row_count == 3
    reasons = rejected(report)
    assert "missing column 'completion'" in reasons[4]
    assert "must be a string, got NoneType" in reasons[5]


def test_mixed_kinds_majority_wins_and_the_others_are_named(settings, write_rows):
    rows = [pc_rows(1)[0], {"text": "a text row"}, *pc_rows(2, 1), chat_row("hi", "there"),
            {"text": "another"}, pc_rows(1, 3)[0]]
    report = ingest_file(write_rows("mixed.jsonl", rows), "mixed", settings)
    assert report.kind == "prompt_completion"
    assert report.row_count == 4
    reasons = rejected(report)
    assert list(reasons) == [2, 5, 6]
    assert "this looks like a text row" in reasons[2]
    assert "this looks like a chat row" in reasons[5]
    assert "this looks like a text row" in reasons[6]


def test_chat_rows_with_a_bad_role(settings, write_rows):
    rows = [chat_row("a", "b"), chat_row("c", "d", role="human"), chat_row("e", "f")]
    report = ingest_file(write_rows("chat.jsonl", rows), "chat", settings)
    assert report.kind == "chat" and report.row_count == 2
    assert rejected(report) == {
        2: "messages[0] has role 'human'; use one of system, user, assistant, tool"
    }


def test_non_utf8_line_is_reported_with_its_row(settings, write_rows):
    rows = [{"text": "fine"}, '{"text": "caf'.encode() + b"\xe9" + b'"}', {"text": "also fine"}]
    report = ingest_file(write_rows("latin.jsonl", rows), "latin", settings)
    assert report.row_count == 2
    reasons = rejected(report)
    assert list(reasons) == [2]
    assert "not valid UTF-8" in reasons[2] and "0xe9" in reasons[2]


def test_a_line_over_the_row_limit_is_rejected_and_the_rest_kept(settings, write_rows):
    big = json.dumps({"text": "x" * (9 * 10**6)})  # ~9 MB, over the 8 MiB limit
    report = ingest_file(write_rows("big.jsonl", [{"text": "a"}, big, {"text": "c"}]), "big", settings)
    assert report.row_count == 2
    reasons = rejected(report)
    assert list(reasons) == [2]
    assert "8.6 MiB, over the 8 MiB row limit" in reasons[2]
    assert stored_rows(settings, "big") == [{"text": "a"}, {"text": "c"}]


def test_a_line_of_exactly_the_row_limit_is_kept(settings, write_rows):
    overhead = len(json.dumps({"text": ""}))
    exact = json.dumps({"text": "x" * (MAX_ROW_BYTES - overhead)})
    assert len(exact) == MAX_ROW_BYTES
    report = ingest_file(write_rows("edge.jsonl", [exact, exact[:-2] + '"}']), "edge", settings)
    assert (report.row_count, report.rejected_count) == (2, 0)


@pytest.mark.slow
@pytest.mark.parallel  # no Ray: the ingest reads the file in this process
def test_a_100_mb_line_is_rejected_without_stopping_the_file(settings, tmp_path):
    path = tmp_path / "huge.jsonl"
    with path.open("wb") as f:
        f.write(b'{"text": "before"}\n{"text": "')
        chunk = b"x" * 2**20
        for _ in range(100):
            f.write(chunk)
        f.write(b'"}\n{"text": "after"}\n')
    report = ingest_file(path, "huge", settings)
    assert report.row_count == 2
    assert "100.0 MiB, over the 8 MiB row limit" in rejected(report)[2]


def test_empty_file_is_an_error_and_stores_nothing(settings, tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_bytes(b"")
    with pytest.raises(StudioError, match="is empty"):
        ingest_file(path, "empty", settings)
    assert versions(settings, "empty") == [] and snapshot_count(settings) == 0


@pytest.mark.parametrize("kind", [None, "text"])
def test_blank_lines_only_is_an_error_naming_that(settings, tmp_path, kind):
    path = tmp_path / "blank.jsonl"
    path.write_bytes(b"\n  \n\n")
    with pytest.raises(StudioError, match="holds no rows"):
        ingest_file(path, "blank", settings, kind=kind)
    assert snapshot_count(settings) == 0


def test_all_bad_file_stores_nothing_and_keeps_existing_versions(settings, write_rows):
    good = ingest_file(write_rows("good.jsonl", pc_rows(3)), "ds", settings)
    bad = write_rows("bad.jsonl", ["{oops", {"prompt": "only"}, {"prompt": "p", "completion": ""}])
    with pytest.raises(StudioError) as info:
        ingest_file(bad, "ds", settings, kind="prompt_completion")
    message = str(info.value)
    assert "no valid prompt_completion rows in bad.jsonl (3 rejected" in message
    assert "row 1: broken JSON" in message and "row 2: missing column 'completion'" in message
    assert "nothing was stored" in message
    assert versions(settings, "ds") == [(1, good.snapshot_id)]
    assert snapshot_count(settings) == 1
    assert stored_rows(settings, "ds") == pc_rows(3)


def test_all_lines_unparseable_names_the_rows(settings, write_rows):
    path = write_rows("junk.jsonl", ["{oops", b"\xff\xfe"])
    with pytest.raises(StudioError) as info:
        ingest_file(path, "junk", settings)
    message = str(info.value)
    assert "no valid rows in junk.jsonl (2 rejected: row 1: broken JSON" in message
    assert "row 2: not valid UTF-8" in message
    assert snapshot_count(settings) == 0


def test_rows_of_no_known_kind_name_the_columns_and_the_fix(settings, write_rows):
    path = write_rows("qa.jsonl", [{"question": "q", "answer": "a"}])
    with pytest.raises(StudioError) as info:
        ingest_file(path, "qa", settings)
    assert "columns: answer, question" in str(info.value)
    assert "--map completion=answer" in str(info.value)


def test_rejected_report_is_capped_but_the_count_is_exact(settings, write_rows):
    rows = [{"text": "ok"}] + ["{bad"] * (MAX_REPORTED + 5)
    report = ingest_file(write_rows("many.jsonl", rows), "many", settings)
    assert report.rejected_count == MAX_REPORTED + 5
    assert len(report.rejected) == MAX_REPORTED
    assert report.rejected[0].row == 2


@pytest.mark.parametrize("name", ["", "a@1", "a/b"])
def test_bad_dataset_names_are_refused(settings, write_rows, name):
    with pytest.raises(StudioError, match="is not allowed"):
        ingest_file(write_rows("x.jsonl", pc_rows(1)), name, settings)


def test_missing_file_and_unknown_extension(settings, tmp_path):
    with pytest.raises(StudioError, match="does not exist"):
        ingest_file(tmp_path / "nope.jsonl", "x", settings)
    path = tmp_path / "rows.xyz"  # .txt is a document format now
    path.write_text('{"text": "a"}\n')
    with pytest.raises(StudioError, match=r"use one of \.csv, .*\.jsonl, .*\.parquet, \.pdf"):
        ingest_file(path, "x", settings)


# --- options: column_map and a forced kind --------------------------------------------------


def test_column_map_renames_file_columns(settings, write_rows):
    rows = [{"prompt": "2+2", "answer": "4"}, {"prompt": "3+3", "answer": "6"}]
    path = write_rows("qa.jsonl", rows)
    report = ingest_file(path, "qa", settings, column_map={"completion": "answer"})
    assert (report.kind, report.row_count) == ("prompt_completion", 2)
    assert stored_rows(settings, "qa") == [{"prompt": "2+2", "completion": "4"},
                                           {"prompt": "3+3", "completion": "6"}]


def test_forced_kind_overrides_detection(settings, write_rows):
    rows = [{"prompt": "p", "completion": "c", "text": "the text"}, {"prompt": "p2", "completion": "c2"}]
    report = ingest_file(write_rows("both.jsonl", rows), "forced", settings, kind="text")
    assert (report.kind, report.row_count) == ("text", 1)
    assert "missing column 'text'" in rejected(report)[2]
    assert stored_rows(settings, "forced") == [{"text": "the text"}]


def test_unknown_forced_kind_is_a_studio_error(settings, write_rows):
    with pytest.raises(StudioError, match="unknown dataset kind 'sft'"):
        ingest_file(write_rows("x.jsonl", pc_rows(1)), "x", settings, kind="sft")


# --- content addressing and versions --------------------------------------------------------


def test_same_content_twice_is_the_same_snapshot_and_version(settings, write_rows):
    first = ingest_file(write_rows("a.jsonl", pc_rows(3)), "ds", settings)
    # Same rows, another format and with a rejected line: the kept content is what counts.
    second = ingest_file(write_rows("b.jsonl", [*pc_rows(3), "{bad"]), "ds", settings)
    third = ingest_file(write_rows("c.csv", pc_rows(3)), "ds", settings)
    assert first.created and not second.created and not third.created
    assert first.snapshot_id == second.snapshot_id == third.snapshot_id
    assert first.version == second.version == third.version == 1
    assert versions(settings, "ds") == [(1, first.snapshot_id)]
    assert snapshot_count(settings) == 1


def test_new_content_adds_a_version_and_references_resolve(settings, write_rows):
    v1 = ingest_file(write_rows("v1.jsonl", pc_rows(3)), "ds", settings)
    v2 = ingest_file(write_rows("v2.jsonl", pc_rows(4)), "ds", settings)
    assert (v1.version, v2.version) == (1, 2) and v2.created
    assert v1.snapshot_id != v2.snapshot_id
    with session_scope(settings.db_url) as s:
        newest = resolve_snapshot(s, "ds")
        assert (newest.snapshot.id, newest.name, newest.version) == (v2.snapshot_id, "ds", 2)
        pinned = resolve_snapshot(s, "ds@1")
        assert (pinned.snapshot.id, pinned.version) == (v1.snapshot_id, 1)
        by_prefix = resolve_snapshot(s, v1.snapshot_id[:10])
        assert by_prefix.snapshot.id == v1.snapshot_id and by_prefix.name is None
        assert resolve_snapshot(s, v2.snapshot_id).snapshot.id == v2.snapshot_id
    assert stored_rows(settings, "ds@1") == pc_rows(3)
    assert stored_rows(settings, "ds") == pc_rows(4)


def test_going_back_to_old_content_is_a_new_version(settings, write_rows):
    a = ingest_file(write_rows("a.jsonl", pc_rows(2)), "ds", settings)
    ingest_file(write_rows("b.jsonl", pc_rows(3)), "ds", settings)
    again = ingest_file(write_rows("a2.jsonl", pc_rows(2)), "ds", settings)
    assert again.created and again.version == 3 and again.snapshot_id == a.snapshot_id
    assert snapshot_count(settings) == 2


def test_one_snapshot_shared_by_two_names(settings, write_rows):
    a = ingest_file(write_rows("a.jsonl", pc_rows(2)), "first", settings)
    b = ingest_file(write_rows("a.jsonl", pc_rows(2)), "second", settings)
    assert a.snapshot_id == b.snapshot_id and b.created and b.version == 1
    assert snapshot_count(settings) == 1


def test_kind_is_part_of_the_content_id(settings, write_rows):
    rows = [{"prompt": "p", "completion": "c", "text": "p"}]
    path = write_rows("x.jsonl", rows)
    a = ingest_file(path, "x", settings, kind="prompt_completion")
    b = ingest_file(path, "x", settings, kind="text")
    assert a.snapshot_id != b.snapshot_id and b.version == 2


def test_version_source_names_the_ingested_file(settings, write_rows):
    path = write_rows("named.jsonl", pc_rows(1))
    ingest_file(path, "src", settings)
    with session_scope(settings.db_url) as s:
        assert s.scalars(select(DatasetVersion.source)).one() == str(path.resolve())


# --- concurrent ingests (API threads, several CLI processes) --------------------------------


def _concurrently(fn, args: list) -> list:
    barrier = threading.Barrier(len(args))

    def run(a):
        barrier.wait()
        return fn(*a)

    with ThreadPoolExecutor(len(args)) as pool:
        return list(pool.map(run, args))


def test_concurrent_ingests_of_one_name_get_distinct_versions(settings, write_rows):
    paths = [write_rows(f"c{i}.jsonl", pc_rows(2 + i)) for i in range(4)]
    reports = _concurrently(lambda p: ingest_file(p, "busy", settings), [(p,) for p in paths])
    assert sorted(r.version for r in reports) == [1, 2, 3, 4]
    assert len(versions(settings, "busy")) == 4


def test_concurrent_ingests_of_the_same_content_share_one_snapshot(settings, write_rows):
    path = write_rows("same.jsonl", pc_rows(50))
    reports = _concurrently(lambda n: ingest_file(path, n, settings), [(f"n{i}",) for i in range(4)])
    assert len({r.snapshot_id for r in reports}) == 1
    assert all(r.created and r.version == 1 for r in reports)
    assert snapshot_count(settings) == 1
    assert stored_rows(settings, "n3") == pc_rows(50)
