"""Every internal caller goes through the gateway and shows up in usage under its own service tag:
an eval run (generation + judge → ``eval``), a synthetic-data job (``synth``), a GRPO judge reward
(``grpo``). Each caller runs its real code with its default ``studio.gateway.Client`` (found through
``STUDIO_GATEWAY_URL``/``STUDIO_API_KEY``, as on the cluster) against the live gateway of
``tests/gateway/live.py``; the scripted provider is the only fake. A repeated eval is answered from
the cache, in-process and in Redis."""

from __future__ import annotations

import asyncio
import json
import uuid

import pytest
import redis

from studio.data.ingest import ingest_file
from studio.store.db import session_scope
from studio.store.models import Job
from tests.gateway.live import start_live_gateway

REDIS_URL = "redis://127.0.0.1:6379/0"


def groups(provider) -> list[dict]:
    return [
        {"name": "gen", "provider": "hosted_vllm", "model": "echo", "api_base": provider.base},
        {"name": "judge", "provider": "hosted_vllm", "model": "score-judge",
         "api_base": provider.base},
        {"name": "writer", "provider": "hosted_vllm", "model": "qa-writer",
         "api_base": provider.base},
    ]


def serve_gateway(settings, provider, monkeypatch, backend: str):
    namespace = f"studio-test-callers-{uuid.uuid4().hex[:8]}"
    redis_url = REDIS_URL if backend == "redis" else None
    gw, stop = start_live_gateway(settings, {"groups": groups(provider),
                                             "router": {"num_retries": 0},
                                             "cache": {"namespace": namespace}}, redis_url)
    gw.namespace, gw.backend = namespace, backend
    monkeypatch.setenv("STUDIO_GATEWAY_URL", gw.url)
    monkeypatch.setenv("STUDIO_API_KEY", gw.key)
    try:
        yield gw
    finally:
        stop()
        if redis_url:
            r = redis.Redis.from_url(REDIS_URL)
            for k in r.scan_iter(f"{namespace}:*"):
                r.delete(k)


@pytest.fixture(params=["memory", "redis"])
def live(request, settings, provider, monkeypatch):
    yield from serve_gateway(settings, provider, monkeypatch, request.param)


@pytest.fixture
def live_memory(settings, provider, monkeypatch):
    yield from serve_gateway(settings, provider, monkeypatch, "memory")


def ingest_rows(settings, tmp_path, name: str, rows: list[dict]) -> str:
    path = tmp_path / f"{name}.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    ingest_file(path, name, settings)
    return name


def run_eval(settings, dataset: str) -> int:
    from studio.evals.run import create_here, run_job
    from studio.evals.spec import EvalSpec

    spec = EvalSpec.model_validate({
        "dataset": dataset, "models": ["gen"], "generation": {"max_tokens": 8},
        "scorers": [{"type": "exact_match"}, {"type": "judge", "model": "judge"}]})
    eval_id = create_here(settings.db_url, spec, "test")
    assert run_job(settings, eval_id) == 0  # its own Client(service="eval", job_id="eval-<id>")
    return eval_id


def test_a_repeated_eval_is_served_from_the_cache(live, settings, tmp_path, provider):
    dataset = ingest_rows(settings, tmp_path, f"qs-{live.backend}",
                          [{"prompt": f"question {i} {live.namespace}", "completion": "x"}
                           for i in range(3)])
    first = run_eval(settings, dataset)
    asked = dict(provider.calls)
    second = run_eval(settings, dataset)
    assert dict(provider.calls) == asked  # the provider was not asked again

    rows = live.usage(group_by="service,job,model", service="eval")
    got = {(r["job"], r["model"]): (r["calls"], r["cache_hits"], r["errors"]) for r in rows}
    assert got == {
        (f"eval-{first}", "gen"): (3, 0, 0), (f"eval-{first}", "judge"): (3, 0, 0),
        (f"eval-{second}", "gen"): (3, 3, 0), (f"eval-{second}", "judge"): (3, 3, 0),
    }
    with session_scope(settings.db_url) as s:
        result = s.get(Job, second).result
    assert any(r["scorer"] == "judge" and r["mean"] == 7.0 for r in result["leaderboard"]["scores"])
    if live.backend == "redis":
        assert live.service.store.backend == "redis"
        keys = list(redis.Redis.from_url(REDIS_URL).scan_iter(f"{live.namespace}:cache:*"))
        assert len(keys) == 6  # 3 answers + 3 judgements, shared by every gateway replica


def test_synth_and_grpo_judge_calls_are_tagged_with_their_service(live_memory, settings, tmp_path):
    live = live_memory
    from studio.data.synth import submit
    from studio.data.synth.run import run_job as run_synth
    from studio.data.synth.spec import SynthSpec
    from studio.train.rewards import build_reward_funcs
    from studio.train.spec import RewardSpec

    source = ingest_rows(settings, tmp_path, "notes", [{"text": "Tides rise twice a day."},
                                                        {"text": "Rivers end in deltas."}])
    spec = SynthSpec(source=source, name="notes-qa", model="writer", chunk_tokens=16,
                     overlap_tokens=0, chunk_retries=0)
    synth_id = submit(spec, settings, "test", local=True)
    result = run_synth(synth_id, settings)  # its own Client(service="synth", job_id="<id>")
    assert result["rows"] >= 2, result
    with session_scope(settings.db_url) as s:
        chunks = s.get(Job, synth_id).result["progress"]["chunks_done"]

    funcs, _ = build_reward_funcs([RewardSpec(type="judge", judge_model="judge")], job_id=42)
    scores = asyncio.run(funcs[0](prompts=["reverse: 1 2", "reverse: 3 4"],
                                  completions=["2 1", "4 3"]))
    assert scores == [0.7, 0.7]

    rows = live.usage(group_by="service,job,model")
    got = {(r["service"], r["job"], r["model"]): r["calls"] for r in rows}
    assert got[("synth", str(synth_id), "writer")] == chunks >= 2
    assert got[("grpo", "job-42", "judge")] == 2
    assert {service for service, _, _ in got} == {"synth", "grpo"}
