"""Engine and deployment configs, the adapter LRU's policy, and the adapter-file checks — no engine
runs here (the adapters are real PEFT ones on the tiny model)."""

from __future__ import annotations

import asyncio

import fsspec
import pytest

from deployments.engines.adapter_lru import AdapterLRU
from deployments.engines.base import EngineConfig, cuda_available
from deployments.model import ModelDeploymentConfig, deployment_name
from studio.errors import Conflict, NotFound, StudioError
from studio.models.adapters import check_adapter_fits, fetch_adapter, inspect_adapter
from studio.recipes import validate_spec


def test_every_config_field_is_described():
    for cls in (EngineConfig, ModelDeploymentConfig):
        for name, field in cls.model_fields.items():
            assert field.description, f"{cls.__name__}.{name} has no description"


def test_engine_config_forbids_unknown_fields():
    with pytest.raises(StudioError, match="unknown field"):
        validate_spec(EngineConfig, {"model": "m", "max_lora": 2}, "engine config")


def test_kv_cache_space_is_whole_gib():
    # vLLM parses VLLM_CPU_KVCACHE_SPACE as an int: 0.5 would fail minutes later in the replica.
    with pytest.raises(StudioError, match="kv_cache_space_gib"):
        validate_spec(EngineConfig, {"model": "m", "kv_cache_space_gib": 0.5}, "engine config")
    assert EngineConfig(model="m", kv_cache_space_gib=2).kv_cache_space_gib == 2


@pytest.mark.skipif(cuda_available(), reason="this machine has a CUDA GPU")
def test_sglang_on_a_cpu_machine_fails_at_config_time():
    with pytest.raises(StudioError) as err:
        EngineConfig(model="m", engine="sglang")
    message = str(err.value)
    assert "SGLang needs a CUDA GPU" in message
    assert "engine: vllm" in message and "`sglang` extra" in message
    # The same through the recipe loader and inside a deployment config.
    with pytest.raises(StudioError, match="SGLang needs a CUDA GPU"):
        validate_spec(ModelDeploymentConfig, {"engine": {"model": "m", "engine": "sglang"}}, "x")


def test_deployment_names_are_per_base_model_and_serve_safe():
    a, b = deployment_name("/models/tiny"), deployment_name("/other/tiny")
    assert a != b and "/" not in a and a.startswith("Model-tiny-")


def _recording_lru(capacity: int):
    events: list[str] = []

    async def load(adapter_id, path):
        events.append(f"load {adapter_id}")

    async def unload(adapter_id):
        events.append(f"unload {adapter_id}")

    return AdapterLRU(capacity, load, unload), events


def test_lru_evicts_least_recently_used_idle_adapter():
    async def scenario():
        lru, events = _recording_lru(2)
        await lru.add("a@1", "/a")
        await lru.add("b@1", "/b")
        release_a = await lru.acquire("a@1")  # a in use and most recent: b is the victim
        await lru.add("c@1", "/c")
        assert list(lru.loaded) == ["a@1", "c@1"] and events[-2:] == ["unload b@1", "load c@1"]
        release_a()
        (await lru.acquire("b@1"))()  # reload on demand evicts a (now idle, least recent)
        assert list(lru.loaded) == ["c@1", "b@1"]
        assert (await lru.acquire("base-model")) is not None  # not an adapter: passes through
        with pytest.raises(Conflict, match="new version"):
            await lru.add("c@1", "/elsewhere")
        await lru.remove("c@1")
        with pytest.raises(NotFound):
            await lru.remove("c@1")
        return lru, events

    lru, events = asyncio.run(scenario())
    assert lru.stats()["evictions"] == 2 and events[-1] == "unload c@1"


def test_busy_adapters_are_not_evicted_and_the_set_shrinks_after():
    async def scenario():
        lru, _ = _recording_lru(1)
        await lru.add("a@1", "/a")
        release = await lru.acquire("a@1")
        await lru.add("b@1", "/b")  # a is busy: both loaded for now
        assert set(lru.loaded) == {"a@1", "b@1"}
        release()
        await asyncio.sleep(0)  # the shrink runs as a task
        await asyncio.sleep(0)
        return lru

    assert list(asyncio.run(scenario()).loaded) == ["b@1"]


def test_adapter_checks(tiny_model_dir, adapters, other_base_adapter, tmp_path):
    info = inspect_adapter(adapters["rev@1"])
    assert info.rank == 8 and info.base_model == str(tiny_model_dir)
    check_adapter_fits(info, str(tiny_model_dir))
    with pytest.raises(StudioError, match="does not fit base model"):
        check_adapter_fits(inspect_adapter(other_base_adapter), str(tiny_model_dir))
    # Without local base weights (a hub id) the trained-on name decides.
    with pytest.raises(StudioError, match="was trained on"):
        check_adapter_fits(info, "someorg/another-model")

    truncated = tmp_path / "truncated"
    truncated.mkdir()
    for f in adapters["rev@1"].iterdir():
        data = f.read_bytes()
        (truncated / f.name).write_bytes(data[:-8] if f.suffix == ".safetensors" else data)
    with pytest.raises(StudioError, match="unreadable or truncated.*Fix: re-export"):
        inspect_adapter(truncated)
    (truncated / "adapter_config.json").write_text("{not json")
    with pytest.raises(StudioError, match="not valid PEFT JSON"):
        inspect_adapter(truncated)


def test_fetch_adapter_from_any_fsspec_uri(adapters, tmp_path):
    fs = fsspec.filesystem("memory")
    for f in adapters["rev@2"].iterdir():
        fs.pipe(f"/store/rev2/{f.name}", f.read_bytes())
    local = fetch_adapter("memory://store/rev2", tmp_path / "cache")
    assert inspect_adapter(local).rank == 8
    assert fetch_adapter("memory://store/rev2", tmp_path / "cache") == local  # cached by uri
    with pytest.raises(NotFound, match="does not exist"):
        fetch_adapter("memory://store/missing", tmp_path / "cache")
