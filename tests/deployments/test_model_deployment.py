"""ModelDeployment under a real Ray Serve instance, called through its handle as the router will:
chat and completions (with usage; streamed text equals the whole answer), adapters fetched from the
artifact store by URI, bad adapters refused while the base model keeps serving.

The replica is the tiny model's ModelDeployment of the package's shared serving stack
(serving_stack.py, one replica), reached by its Serve handle, not through the router: its own Ray
and engine cost ~50 s. Adapter ids are this module's own (``md-…``), since other modules load theirs
on the same replica.
"""

from __future__ import annotations

import json

import pytest
from ray import serve

from studio.errors import NotFound, StudioError
from studio.serving.config import deployment_name
from studio.store.artifacts import ArtifactStore
from tests.deployments.serving_stack import APP_NAME

pytestmark = pytest.mark.slow
CHAT = {"messages": [{"role": "user", "content": "hello"}], "max_tokens": 12,
        "temperature": 0}
BASE = "tiny"  # the stack's served name for its tiny model


@pytest.fixture(scope="module")
def model(serving_stack):
    shared = serving_stack.ensure(replicas=1)  # load_adapter and the chats meet the same replica
    yield serve.get_deployment_handle(deployment_name(BASE), app_name=APP_NAME), BASE
    shared.hide_from_leak_watch()


def _call(handle, method: str, body: dict) -> list:
    return list(getattr(handle.options(stream=True), method).remote(body))


def _sse(chunks: list[str]) -> list[dict]:
    """The events of a stream (an item may hold several: the replica joins back-to-back ones)."""
    events = [e for e in "".join(chunks).split("\n\n") if e]
    assert events[-1] == "data: [DONE]" and all(e.startswith("data: ") for e in events)
    return [json.loads(e.removeprefix("data: ")) for e in events[:-1]]


def test_chat_and_completion_with_usage_streamed_equals_whole(model):
    handle, base = model
    [chat] = _call(handle, "chat", {"model": base, **CHAT})
    text = chat["choices"][0]["message"]["content"]
    assert text and chat["model"] == base
    assert chat["usage"]["prompt_tokens"] > 0 and chat["usage"]["completion_tokens"] > 0
    events = _sse(_call(handle, "chat", {"model": base, **CHAT, "stream": True,
                                         "stream_options": {"include_usage": True}}))
    streamed = "".join(e["choices"][0]["delta"].get("content") or ""
                       for e in events if e["choices"])
    assert streamed == text
    counts = ("prompt_tokens", "completion_tokens", "total_tokens")
    assert [events[-1]["usage"][k] for k in counts] == [chat["usage"][k] for k in counts]

    body = {"model": base, "prompt": "reverse: 6 0 4 8", "max_tokens": 12, "temperature": 0}
    [completion] = _call(handle, "completions", body)
    assert completion["choices"][0]["text"] and completion["usage"]["total_tokens"] > 0
    events = _sse(_call(handle, "completions", {**body, "stream": True}))
    assert "".join(e["choices"][0]["text"] for e in events) == completion["choices"][0]["text"]

    [missing] = _call(handle, "chat", {"model": "nope@1", **CHAT})
    assert missing["error"]["code"] == 404 and missing["error"]["param"] == "model"
    [invalid] = _call(handle, "chat", {"model": base, "messages": "not a list"})
    assert invalid["error"]["code"] == 400


def test_adapters_load_from_the_artifact_store_and_bad_ones_are_refused(
        model, adapters, other_base_adapter, tmp_path):
    handle, base = model
    store = ArtifactStore(str(tmp_path / "artifacts"))
    uri = store.put_dir(adapters["rev@1"], "adapters/rev/1")
    loaded = handle.load_adapter.remote("md-rev@1", uri).result()
    assert loaded["id"] == "md-rev@1"
    [base_answer] = _call(handle, "chat", {"model": base, **CHAT})
    [adapter_answer] = _call(handle, "chat", {"model": "md-rev@1", **CHAT})
    assert adapter_answer["model"] == "md-rev@1"
    assert (adapter_answer["choices"][0]["message"]["content"]
            != base_answer["choices"][0]["message"]["content"])

    other = store.put_dir(other_base_adapter, "adapters/other/1")
    with pytest.raises(StudioError, match="does not fit base model"):
        handle.load_adapter.remote("md-other@1", other).result()
    with pytest.raises(NotFound, match="does not exist"):
        handle.load_adapter.remote("md-gone@1", store.uri("adapters/gone/1")).result()

    mine = [a["id"] for a in handle.adapters.remote().result() if a["id"].startswith("md-")]
    assert mine == ["md-rev@1"]
    [again] = _call(handle, "chat", {"model": base, **CHAT})
    assert again["choices"] == base_answer["choices"]
    stats = handle.stats.remote().result()
    assert stats["engine"] == "vllm" and "md-rev@1" in stats["adapters"]["loaded"]
    handle.unload_adapter.remote("md-rev@1").result()
    assert "md-rev@1" not in [a["id"] for a in handle.adapters.remote().result()]
