"""``init_adapter``: a job can start from an existing LoRA adapter (a registry version or a
directory). The spec validates its form; preflight resolves it (pinned to name@N for lineage) and
refuses one that does not exist, is not a LoRA adapter, or was trained on another base model."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from studio.errors import StudioError
from studio.train.queue import enqueue_train_job
from studio.recipes import load_recipe
from studio.registry.versions import lineage, register_version
from studio.settings import StudioSettings
from studio.store.db import session_scope
from studio.train.preflight import preflight
from studio.train.spec import TrainSpec

from .conftest import RECIPES


def dpo_spec(home: StudioSettings, *overrides: str) -> TrainSpec:
    spec = load_recipe(RECIPES / "dpo_reverse_tiny.yaml", TrainSpec, list(overrides))
    spec.base_model = str(home.models_dir / "tiny")
    return spec


def write_adapter(base_model: Path, out: Path) -> Path:
    """A real (untrained) PEFT LoRA adapter for ``base_model``."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(str(base_model)),
                           LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM"))
    model.save_pretrained(str(out))
    return out


@pytest.mark.parametrize("value", ["reverse-tiny@1", "reverse-tiny", "/abs/adapter", "./rel/adapter",
                                   "~/adapter", "s3://bucket/models/reverse-tiny/3-1"])
def test_init_adapter_forms_are_accepted(value: str):
    spec = TrainSpec(name="x", method="dpo", base_model="m", data={"dataset": "d"}, init_adapter=value)
    assert spec.init_adapter == value


@pytest.mark.parametrize(("value", "needle"), [
    ("  ", "init_adapter is empty"),
    ("not a ref@v2", "neither a registry reference"),
])
def test_malformed_init_adapter_is_refused(value: str, needle: str):
    with pytest.raises(ValidationError, match=needle):
        TrainSpec(name="x", method="sft", base_model="m", data={"dataset": "d"}, init_adapter=value)


def test_init_adapter_with_full_finetuning_is_refused():
    with pytest.raises(ValidationError, match="adapter: full trains all weights"):
        TrainSpec(name="x", method="dpo", base_model="m", data={"dataset": "d"}, adapter="full",
                  init_adapter="reverse-tiny@1")


def test_missing_registry_version_is_refused(home: StudioSettings):
    spec = dpo_spec(home, "init_adapter=reverse-tiny@7")
    with session_scope(home.db_url) as s, pytest.raises(StudioError) as e:
        preflight(spec, s)
    assert "init_adapter 'reverse-tiny@7'" in str(e.value) and "has no version 7" in str(e.value)
    assert "studio models ls" in str(e.value)


def test_missing_or_non_adapter_directory_is_refused(home: StudioSettings, tmp_path: Path):
    with session_scope(home.db_url) as s:
        with pytest.raises(StudioError, match="does not exist"):
            preflight(dpo_spec(home, f"init_adapter={tmp_path / 'nowhere'}"), s)
        (tmp_path / "empty").mkdir()
        with pytest.raises(StudioError, match="holds no adapter_config.json"):
            preflight(dpo_spec(home, f"init_adapter={tmp_path / 'empty'}"), s)


def test_adapter_of_another_base_model_is_refused(home: StudioSettings, tmp_path: Path):
    adapter = write_adapter(home.models_dir / "tiny", tmp_path / "adapter")
    with session_scope(home.db_url) as s:
        register_version(s, name="other-base", base_model="Qwen/Qwen2.5-0.5B", method="sft",
                         adapter_type="lora", uri=str(adapter))
    with session_scope(home.db_url) as s, pytest.raises(StudioError) as e:
        preflight(dpo_spec(home, "init_adapter=other-base@1"), s)
    assert "was trained on base model Qwen/Qwen2.5-0.5B" in str(e.value)
    assert "set base_model to Qwen/Qwen2.5-0.5B" in str(e.value)


def test_registry_reference_is_resolved_and_pinned_for_lineage(home: StudioSettings, tmp_path: Path):
    tiny = str((home.models_dir / "tiny").resolve())
    adapter = write_adapter(home.models_dir / "tiny", tmp_path / "adapter")
    with session_scope(home.db_url) as s:
        register_version(s, name="reverse-tiny", base_model=tiny, method="sft", adapter_type="lora",
                         uri=str(adapter))
    with session_scope(home.db_url) as s:
        inputs = preflight(dpo_spec(home, "init_adapter=reverse-tiny"), s)
        assert (inputs.init_adapter_ref, inputs.init_adapter_uri) == ("reverse-tiny@1", str(adapter))
        job = enqueue_train_job(s, dpo_spec(home, "init_adapter=reverse-tiny"), submitted_by="test")
        assert job.spec["init_adapter"] == "reverse-tiny@1"
        # A directory given directly is its own reference.
        inputs = preflight(dpo_spec(home, f"init_adapter={adapter}"), s)
        assert inputs.init_adapter_ref == inputs.init_adapter_uri == str(adapter)
        register_version(s, name="reverse-tiny-dpo", base_model=tiny, method="dpo", adapter_type="lora",
                         uri=str(adapter), job_id=job.id)
        assert lineage(s, "reverse-tiny-dpo@1")["init_adapter"] == "reverse-tiny@1"
