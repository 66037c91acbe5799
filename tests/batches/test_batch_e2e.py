"""The Batch API in a live studio (`studio up` serving the tiny model on vLLM, the gateway, the
scheduler), through the official ``openai`` client: ``files.create(purpose="batch")``,
``batches.create``, ``batches.retrieve`` until it ends, ``files.content``. 50 lines (the tiny base
and a registered adapter by ``name@1``, a malformed line, an unknown model, a prompt longer than
the engine's context): the scheduler runs
the batch as a Ray job whose calls go through the gateway with a key derived from the creator's;
every line is a usage row of that key tagged with the batch; the greedy answers equal the same
requests sent to /v1/chat/completions. On the tiny-model stack shared with the evaluation e2e,
the gateway e2e and the UI walk (tests/stacks.py); this module registers its own key and name."""

from __future__ import annotations

import json
import time

import httpx
import openai
import pytest
from sqlalchemy import select

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
ADAPTER = "batch-e2e-rev@1"


@pytest.fixture(scope="module")
def studio(tiny_stack, tmp_path_factory):
    from studio.keys import create_key
    from studio.registry.versions import register_version
    from studio.settings import StudioSettings
    from studio.store.db import init_db, session_scope
    from tests.deployments.conftest import make_adapter

    model = tiny_stack.tiny_model()
    adapter = make_adapter(model, tmp_path_factory.mktemp("batch-e2e") / "adapter", seed=11)
    stack = tiny_stack.ensure()
    settings = StudioSettings(home=stack.home, database_url=None, artifacts_uri=None, mlflow_uri=None,
                              redis_url=None, admin_key=None)
    init_db(settings.db_url)
    with session_scope(settings.db_url) as s:
        secret, info = create_key(s, "batch-e2e-user", "user")
        register_version(s, name=ADAPTER.split("@")[0], base_model=str(model), method="sft",
                         adapter_type="lora", uri=str(adapter), owner_key_id=info.id)
    client = openai.OpenAI(base_url=f"{stack.base}/v1", api_key=secret, timeout=60, max_retries=0)
    return {"settings": settings, "client": client, "key_id": info.id, "base": stack.base,
            "admin": stack.admin}


def request(custom_id: str, model: str, digits: str) -> dict:
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": model, "messages": [{"role": "user", "content": f"reverse: {digits}"}],
                     "max_tokens": 8, "temperature": 0}}


def test_fifty_lines_through_the_openai_client(studio):
    from studio.store.db import session_scope
    from studio.store.models import ApiKey, UsageRecord

    client = studio["client"]
    good = [request(f"b{i}", ADAPTER if i % 4 == 3 else "tiny", " ".join(f"{i:03d}")) for i in range(47)]
    too_long = request("too-long", "tiny", " ".join(["7"] * 1500))  # max_model_len is 512
    data = "".join(json.dumps(r) + "\n" for r in good[:20]) + "{this line is not json\n" + \
        json.dumps(request("nobody", "no-such-model", "1 2")) + "\n" + json.dumps(too_long) + "\n" + \
        "".join(json.dumps(r) + "\n" for r in good[20:])
    source = client.files.create(file=("batch-e2e.jsonl", data.encode()), purpose="batch")
    assert source.purpose == "batch" and source.bytes == len(data.encode())
    batch = client.batches.create(input_file_id=source.id, endpoint="/v1/chat/completions",
                                  completion_window="24h", metadata={"test": "e2e"})
    assert batch.status == "validating" and batch.request_counts.total == 50
    seen, deadline = [], time.monotonic() + 180
    while batch.status not in ("completed", "failed", "expired", "cancelled") and time.monotonic() < deadline:
        time.sleep(0.5)
        batch = client.batches.retrieve(batch.id)
        seen.append((batch.status, batch.request_counts.completed))
    assert batch.status == "completed", (batch, seen)
    counts = (batch.request_counts.completed, batch.request_counts.failed)
    if counts != (47, 3):  # say what the job did
        job = httpx.get(f"{studio['base']}/api/jobs/{batch.model_extra['studio_job_id']}",
                        headers={"Authorization": f"Bearer {studio['admin']}"}).json()
        raise AssertionError(f"counts {counts}; job events {job.get('events')}; seen {seen}")
    assert batch.usage.output_tokens > 0

    out = [json.loads(x) for x in client.files.content(batch.output_file_id).text.splitlines()]
    assert [o["custom_id"] for o in out] == [r["custom_id"] for r in good]
    assert all(o["response"]["status_code"] == 200 for o in out)
    answers = {o["custom_id"]: o["response"]["body"] for o in out}
    assert answers["b3"]["studio_model_version"] == ADAPTER and answers["b0"]["studio_model_version"] == "tiny"
    errors = {e["custom_id"]: e for e in
              (json.loads(x) for x in client.files.content(batch.error_file_id).text.splitlines())}
    assert errors[None]["error"]["code"] == "invalid_json"
    assert errors["nobody"]["response"]["status_code"] == 404
    assert errors["too-long"]["response"]["status_code"] == 400, errors["too-long"]

    # Greedy: a line's answer is what /v1/chat/completions answers to the same request.
    for custom_id in ("b0", "b3", "b21"):
        body = good[int(custom_id[1:])]["body"]
        direct = client.chat.completions.create(**body)
        assert direct.choices[0].message.content == \
            answers[custom_id]["choices"][0]["message"]["content"], custom_id

    # Every line is one usage row of a key derived from the creator's, tagged with the batch.
    deadline = time.monotonic() + 30
    while True:
        with session_scope(studio["settings"].db_url) as s:
            rows = s.scalars(select(UsageRecord).where(UsageRecord.job_id == batch.id)).all()
            parents = {s.get(ApiKey, r.key_id).parent_id for r in rows}
        if len(rows) >= 49 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    # 47 answers, the unknown model once, the refused long prompt
    assert len(rows) == 49 and parents == {studio["key_id"]}
    assert {r.service for r in rows} == {"batch"}
    assert sum(r.completion_tokens for r in rows) == batch.usage.output_tokens
    assert sorted({r.model_group for r in rows}) == sorted({ADAPTER, "tiny", "no-such-model"})
