"""The loop recipe (``LoopSpec``): the shipped one loads with its training recipe; bad fields are
errors that name the field and the fix."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from studio.errors import StudioError
from studio.loops.spec import LoopSpec, check_base_model, load_loop_recipe

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "configs" / "loops" / "reverse_tiny.yaml"


def _write(tmp_path: Path, data: dict) -> Path:
    p = tmp_path / "loop.yaml"
    p.write_text("# studio loop create loop.yaml\n" + yaml.safe_dump(data))
    return p


def _base() -> dict:
    return yaml.safe_load(SHIPPED.read_text())


def _error(tmp_path: Path, data: dict, overrides: tuple[str, ...] = ()) -> str:
    with pytest.raises(StudioError) as e:
        load_loop_recipe(_write(tmp_path, data), overrides)
    return str(e.value)


def test_the_shipped_loop_loads_with_its_training_recipe():
    spec, train = load_loop_recipe(SHIPPED)
    assert spec.served_name == "reverse-tiny"  # the registry name `make demo` leaves a champion on
    assert train.method == "dpo" and train.hyper.max_steps == 8  # its overrides applied
    assert spec.canary.steps == [25, 50] and spec.decision.alpha == 0.05


@pytest.mark.parametrize("alpha", [0, 1, 1.5, -0.1])
def test_alpha_outside_the_unit_interval_names_the_field_and_the_fix(tmp_path, alpha):
    data = _base()
    data["decision"]["alpha"] = alpha
    msg = _error(tmp_path, data)
    assert "decision.alpha" in msg
    assert "strictly between 0 and 1" in msg and "e.g. 0.05" in msg


def test_an_override_is_checked_the_same_way(tmp_path):
    msg = _error(tmp_path, _base(), ("decision.alpha=2",))
    assert "decision.alpha" in msg and "strictly between 0 and 1" in msg


@pytest.mark.parametrize("steps,words", [
    ([10, 5, 50], "5 follows 10"),
    ([10, 10, 50], "10 follows 10"),
    ([0, 10], "0 is outside (0, 100)"),
    ([10, 100], "100 is outside (0, 100)"),
    ([], "empty"),
])
def test_canary_steps_must_strictly_increase_inside_0_100(tmp_path, steps, words):
    data = _base()
    data["canary"]["steps"] = steps
    msg = _error(tmp_path, data)
    assert "canary.steps" in msg and words in msg and "e.g. [5, 10, 25, 50]" in msg


def test_unknown_fields_are_errors(tmp_path):
    data = _base()
    data["canary"]["stpes"] = [5]
    assert "canary.stpes: unknown field" in _error(tmp_path, data)


def test_a_shadow_share_needs_a_judge(tmp_path):
    data = _base()
    data["shadow"] = {"share": 0.1}
    msg = _error(tmp_path, data)
    assert "shadow" in msg and "needs shadow.judge" in msg


def test_no_feedback_timeout_must_come_before_the_deadline(tmp_path):
    data = _base()
    data["decision"]["no_feedback_s"] = 4000
    msg = _error(tmp_path, data)
    assert "no_feedback_s (4000) must be shorter than deadline_s (180)" in msg


def test_a_trigger_that_can_never_fire_is_refused(tmp_path):
    data = _base()
    data["trigger"] = {"min_new_rated": None, "manual": False}
    assert "no trigger can fire" in _error(tmp_path, data)


def test_the_training_recipe_must_exist_and_learn_from_feedback(tmp_path):
    data = _base()
    data["train"]["recipe"] = "configs/train/nope.yaml"
    assert "training recipe configs/train/nope.yaml does not exist" in _error(tmp_path, data)
    data["train"] = {"recipe": str(REPO / "configs" / "train" / "grpo_reverse_tiny.yaml")}
    msg = _error(tmp_path, data)
    assert "trains with grpo" in msg and "method dpo or sft" in msg


def test_a_training_recipe_for_another_base_model_is_refused():
    spec = LoopSpec.model_validate(_base())
    check_base_model(spec, "Qwen/Qwen2.5-0.5B", "Qwen/Qwen2.5-0.5B")
    with pytest.raises(StudioError) as e:
        check_base_model(spec, "Qwen/Qwen2.5-0.5B", ".studio/models/tiny-other")
    assert "is for base model Qwen/Qwen2.5-0.5B" in e.value.problem
    assert "base_model is .studio/models/tiny-other" in e.value.fix
