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


def test_the_shipped_guard_checks_the_reversal_answers_format_and_survives_the_frozen_recipe():
    import asyncio

    from studio.evals.scorers import Datapoint  # (the package registers the scorers)

    spec, _ = load_loop_recipe(SHIPPED)
    (guard,) = spec.gate.guards
    assert (guard.label, guard.margin, spec.gate.must_pass) == ("format", 0.0, None)
    scorer = guard.scorer.build()
    dp = Datapoint(index=0, messages=[{"role": "user", "content": "reverse: 3 1 4"}], reference="4 1 3")
    scores = {text: asyncio.run(scorer.score(dp, text)).score for text in ("4 1 3", " 4 1 3\n", "413", "4 1 3 and", "")}
    assert scores == {"4 1 3": 1.0, " 4 1 3\n": 1.0, "413": 0.0, "4 1 3 and": 0.0, "": 0.0}
    # a generation freezes the recipe as JSON and reads it back: a json scorer's `schema` too
    data = _base()
    data["gate"]["guards"] = [{"scorer": {"type": "json", "schema": {"type": "array"}}, "margin": 0.02}]
    spec = LoopSpec.model_validate(data)
    assert LoopSpec.model_validate(spec.model_dump(mode="json")) == spec


@pytest.mark.parametrize("guard,words", [
    ({"scorer": {"type": "regex", "pattern": "x"}, "margin": 1}, "gate.guards.0.margin: Value error, a guard's margin must lie in [0, 1), got 1"),
    ({"scorer": {"type": "regex", "pattern": "x"}, "margin": -0.1}, "e.g. 0 (not worse) or 0.02"),
    ({"scorer": {"type": "regex"}}, "gate.guards.0.scorer.regex.pattern"),
    ({"scorer": {"type": "nope"}}, "gate.guards.0.scorer"),
    ({"scorer": {"type": "judge", "model": "m", "mode": "pairwise"}}, "use mode: pointwise"),
    ({"scorer": {"type": "lm_eval", "task": "arc_easy"}}, "not the gate's items"),
    ({"scorer": {"type": "exact_match", "normalize": {"lowercase": True}}}, "give the guard's scorer a `name`"),
])
def test_a_bad_guard_names_the_field_and_the_fix(tmp_path, guard, words):
    data = _base()
    data["gate"]["guards"] = [guard]
    assert words in _error(tmp_path, data)


def test_two_guards_need_two_names_and_a_must_pass_score_is_not_negative(tmp_path):
    data = _base()
    data["gate"]["guards"] = [{"scorer": {"type": "json"}}, {"scorer": {"type": "json", "schema": {"type": "array"}}}]
    assert "two guards have the label 'json'" in _error(tmp_path, data)
    data = _base()
    data["gate"]["must_pass"] = {"dataset": "reverse-must-pass", "min_score": -1}
    assert "gate.must_pass.min_score" in _error(tmp_path, data)
    data["gate"]["must_pass"] = {"min_score": 1}
    assert "gate.must_pass.dataset: Field required" in _error(tmp_path, data)
