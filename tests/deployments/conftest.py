"""Real inputs for the engine tests: the tiny model (built once per session) and real PEFT LoRA
adapters on it, whose lora_B weights are randomly perturbed so each visibly changes outputs."""

from __future__ import annotations

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
