"""Each line of an input file is checked before anything runs: the bad ones become error entries
naming their line and the fix, the good ones run. Pure functions: no database, no gateway."""

from __future__ import annotations

import json

import pytest

from studio.batches.validation import check_file, read_plan
from studio.errors import StudioError
from studio.gateway.request import RequestCaps
from tests.batches.conftest import CHAT, jsonl, line

CAPS = RequestCaps(max_n=8, max_tokens=64)


def test_bad_lines_are_refused_one_by_one_and_the_rest_run():
    data = jsonl([
        line("ok-1", "a"),
        "{not json",
        '["a", "list"]',
        {"method": "POST", "url": CHAT, "body": {"model": "gen", "messages": []}},  # no custom_id
        line("ok-1", "duplicate"),
        {**line("get", "a"), "method": "GET"},
        line("wrong-url", "a", url="/v1/completions"),
        {"custom_id": "no-model", "method": "POST", "url": CHAT, "body": {"messages": []}},
        line("streams", "a", stream=True),
        line("api-base", "a", api_base="http://169.254.169.254"),
        line("too-long", "a", max_tokens=100_000),
        "",  # blank: skipped, not counted
        line("ok-2", "b", model="other", temperature=0),
    ])
    plan = read_plan(data, CHAT, CAPS, max_lines=100)
    assert [(r.line, r.custom_id) for r in plan.requests] == [(0, "ok-1"), (11, "ok-2")]
    assert plan.requests[1].body == {"model": "other", "messages": [{"role": "user", "content": "b"}],
                                     "max_tokens": 4, "temperature": 0}
    refused = {r.line: (r.custom_id, r.code) for r in plan.refused}
    assert refused == {
        1: (None, "invalid_json"), 2: (None, "invalid_json"), 3: (None, "missing_custom_id"),
        4: ("ok-1", "duplicate_custom_id"), 5: ("get", "invalid_method"),
        6: ("wrong-url", "invalid_url"), 7: ("no-model", "missing_model"),
        8: ("streams", "invalid_request"), 9: ("api-base", "invalid_request"),
        10: ("too-long", "invalid_request")}
    messages = {r.line: r.message for r in plan.refused}
    assert messages[4].startswith("line 5: ") and "line 1" in messages[4]  # names both lines
    assert "/v1/completions" in messages[6] and CHAT in messages[6]
    assert "api_base" in messages[9] and "max_tokens" in messages[10]
    assert plan.total == 12


def test_completions_lines_are_checked_against_the_completions_request():
    ok = {"custom_id": "c", "method": "POST", "url": "/v1/completions",
          "body": {"model": "gen", "prompt": "1 2 3", "max_tokens": 4, "echo": True}}
    chat_body = {**ok, "custom_id": "m", "body": {"model": "gen", "messages": []}}
    plan = read_plan(jsonl([ok, chat_body]), "/v1/completions", CAPS, max_lines=10)
    assert [r.custom_id for r in plan.requests] == ["c"]
    assert [(r.custom_id, r.code) for r in plan.refused] == [("m", "invalid_request")]


@pytest.mark.parametrize("data, words", [
    (b"", ["empty"]), (b"\n \n", ["empty"]), (b"a\nb\n", ["not JSONL", "2 lines"]),
    (b"\xc3\x28\n", ["not UTF-8"]), (jsonl([line(str(i), "x") for i in range(11)]), ["11 lines", "10"]),
])
def test_an_unusable_file_is_one_400(data, words):
    with pytest.raises(StudioError) as e:
        check_file(data, "the file", max_lines=10)
    assert e.value.status_code == 400 and all(w in str(e.value) for w in words), str(e.value)


def test_a_usable_file_counts_its_requests_blank_lines_aside():
    assert check_file(b"garbage\n\n" + json.dumps(line("a", "b")).encode() + b"\n", "f", 10) == 2
