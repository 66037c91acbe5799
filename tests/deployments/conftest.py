"""Real inputs for the engine tests: the tiny model (built once per session) and real PEFT LoRA
adapters on it, whose lora_B weights are randomly perturbed so each visibly changes outputs."""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

import pytest

from studio.models.tiny import TinyModelSpec, make_tiny


def make_adapter(base_dir: Path, out: Path, seed: int, r: int = 8, std: float = 0.3) -> Path:
    """A LoRA adapter (r on all linear layers) saved with PEFT's save_pretrained."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    peft_model = get_peft_model(
        model, LoraConfig(r=r, lora_alpha=2 * r, target_modules="all-linear", lora_dropout=0.0)
    )
    # Fresh LoRA has lora_B = 0 (a no-op); random B makes each adapter change the outputs.
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * std)
    peft_model.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="session")
def adapters(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Three adapters of the tiny model, by the version-unique ids the tests load them under."""
    root = tmp_path_factory.mktemp("adapters")
    return {f"rev@{i}": make_adapter(tiny_model_dir, root / f"rev{i}", seed=i) for i in (1, 2, 3)}


@pytest.fixture(scope="session")
def other_base_adapter(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An adapter of another tiny model (hidden_size 64 instead of 128)."""
    root = tmp_path_factory.mktemp("other")
    other = make_tiny(root / "model", TinyModelSpec(hidden_size=64, intermediate_size=192,
                                                      num_attention_heads=2, num_key_value_heads=2))
    return make_adapter(other, root / "adapter", seed=7)


@contextlib.contextmanager
def serve_studio(tmp_path_factory: pytest.TempPathFactory, args: dict, key_name: str):
    """The studio Serve app (``build_app(args)``) on a private local Ray with its own STUDIO_HOME
    (SQLite) and a free HTTP port; yields ``(url, admin key, settings)`` once /healthz answers."""
    import httpx
    import ray
    from ray import serve

    from deployments.app import build_app
    from studio.keys import create_key
    from studio.settings import StudioSettings
    from studio.stack import serve_env
    from studio.store.db import init_db, session_scope
    from tests.loopback import free_port

    home = tmp_path_factory.mktemp("studio-home")
    saved = {k: os.environ.get(k) for k in ("STUDIO_HOME", "STUDIO_DATABASE_URL")}
    os.environ["STUDIO_HOME"] = str(home)
    os.environ.pop("STUDIO_DATABASE_URL", None)
    settings = StudioSettings()
    init_db(settings.db_url)
    with session_scope(settings.db_url) as session:
        key, _ = create_key(session, key_name, "admin")
    port = free_port()
    # Serve's fast path, as `studio up` starts its head (tests/leaks.py restores the environment).
    os.environ.update(serve_env(settings))
    ray.init(address="local", num_cpus=8, include_dashboard=False, logging_level="ERROR")
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        started = time.perf_counter()
        serve.run(build_app(args), name="studio", route_prefix="/")
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            try:
                httpx.get(f"{url}/healthz", timeout=2).raise_for_status()
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        print(f"studio ready in {time.perf_counter() - started:.1f} s")
        yield url, key, settings
    finally:
        serve.shutdown()
        ray.shutdown()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
