"""Real inputs for the engine tests: the tiny model (built once per session) and real PEFT LoRA
adapters on it, whose lora_B weights are randomly perturbed so each visibly changes outputs; and
the studio Serve stack that the serving modules share (one per package run)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from studio.models.tiny import TinyModelSpec, make_tiny
from tests.deployments.serving_stack import SERVING_MODULES, ServingStack

HERE = Path(__file__).parent


def make_adapter(base_dir: Path, out: Path, seed: int, r: int = 8, std: float = 0.3) -> Path:
    """A LoRA adapter (r on all linear layers) saved with PEFT's save_pretrained."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    # PEFT draws lora_A from torch's global generator: seeded here (and the test's own generator
    # left as it was), the adapter is the same in every run. Unseeded, one run in a few dozen drew
    # an adapter whose greedy answers were, like the base model's, bytes that decode to nothing.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
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


@pytest.fixture(scope="package")
def serving_stack(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory,
                  request: pytest.FixtureRequest) -> Iterator[ServingStack]:
    """The studio Serve stack the serving modules share (serving_stack.py); each module's own
    fixture asks it for the replicas it needs. Closed when the package ends: its modules run last
    in the package (``pytest_collection_modifyitems``)."""
    stack = ServingStack(tiny_model_dir, tmp_path_factory.mktemp("studio-home"),
                         request.config.pluginmanager.get_plugin("studio-leak-watch"))
    try:
        yield stack
    finally:
        stack.close()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The modules sharing ``serving_stack`` run last in this package (in their file order), so
    the stack closes before pytest leaves the package, and no other module here runs its own Ray
    or vLLM engine (test_model_deployment, test_vllm_engine) while the stack's engine is up: on 2
    cores an idle engine still slows another, and a second ``ray.init`` in this process would meet
    the stack's Ray. Other modules keep their order; items outside the package are not moved."""
    slots = [i for i, item in enumerate(items) if item.path.parent == HERE]
    ordered = sorted((items[i] for i in slots), key=lambda item: item.path.name in SERVING_MODULES)
    for i, item in zip(slots, ordered):
        items[i] = item
