"""Row kinds: detection and normalization of one raw row (pure functions, no database)."""

from __future__ import annotations

import pytest

from studio.data.kinds import DatasetKind, RowError, detect_kind, normalize_row


@pytest.mark.parametrize(
    "row, kind",
    [
        ({"messages": []}, DatasetKind.chat),
        ({"prompt": "p", "chosen": "a", "rejected": "b"}, DatasetKind.preference),
        ({"prompt": "p", "completion": "c"}, DatasetKind.prompt_completion),
        ({"text": "t"}, DatasetKind.text),
        ({"prompt": "p"}, None),
        ({"question": "q", "answer": "a"}, None),
    ],
)
def test_detect_kind(row, kind):
    assert detect_kind(row) == kind


def test_normalize_keeps_only_the_kind_columns():
    row = {"prompt": "p", "completion": "c", "id": 7, "meta": {"x": 1}}
    assert normalize_row(row, DatasetKind.prompt_completion) == {"prompt": "p", "completion": "c"}


def test_normalize_chat_drops_extra_message_fields():
    row = {"messages": [{"role": "user", "content": "hi", "name": "bob"},
                        {"role": "assistant", "content": "hello"}]}
    assert normalize_row(row, DatasetKind.chat) == {
        "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    }


@pytest.mark.parametrize(
    "row, kind, reason",
    [
        ([1, 2], DatasetKind.text, "must be a JSON object, got list"),
        ({"prompt": "p"}, DatasetKind.prompt_completion, "missing column 'completion'"),
        ({"text": "t"}, DatasetKind.prompt_completion, "this looks like a text row"),
        ({"prompt": "p", "completion": 3}, DatasetKind.prompt_completion, "must be a string, got int"),
        ({"prompt": "p", "completion": "  "}, DatasetKind.prompt_completion, "'completion' is empty"),
        ({"text": "t"}, DatasetKind.chat, "missing column 'messages' (this looks like a text row)"),
        ({"messages": []}, DatasetKind.chat, "non-empty list"),
        ({"messages": "hi"}, DatasetKind.chat, "non-empty list"),
        ({"messages": [{"role": "robot", "content": "x"}]}, DatasetKind.chat, "role 'robot'"),
        ({"messages": [{"role": "user"}]}, DatasetKind.chat, "messages[0] must be an object"),
        ({"messages": [{"role": "user", "content": None}]}, DatasetKind.chat, "content must be a string"),
    ],
)
def test_normalize_rejects_with_a_reason(row, kind, reason):
    with pytest.raises(RowError) as info:
        normalize_row(row, kind)
    assert reason in str(info.value)
