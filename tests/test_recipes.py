"""YAML recipes → typed specs: every failure names the file, the place and the fix."""

from __future__ import annotations

import pytest
from pydantic import Field

from studio.errors import StudioError
from studio.recipes import Spec, apply_overrides, load_recipe, read_yaml


class LoraSpec(Spec):
    r: int = Field(8, description="rank")
    alpha: float = Field(16.0, description="scale")
    targets: list[str] = Field(default_factory=lambda: ["q_proj"], description="modules")


class TrainSpec(Spec):
    model: str = Field(description="base model")
    epochs: int = Field(1, description="epochs")
    bf16: bool = Field(False, description="bf16")
    lora: LoraSpec | None = Field(None, description="LoRA, or full fine-tuning when unset")


def _recipe(tmp_path, text: str):
    path = tmp_path / "recipe.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_valid_recipe_loads_into_the_spec(tmp_path):
    path = _recipe(tmp_path, "model: tiny\nepochs: 3\nlora:\n  r: 16\n")
    spec = load_recipe(path, TrainSpec)
    assert spec == TrainSpec(model="tiny", epochs=3, lora=LoraSpec(r=16))


def test_malformed_yaml_names_the_file_and_line(tmp_path):
    path = _recipe(tmp_path, "model: tiny\nepochs: 3\n  bad: indent\n")
    with pytest.raises(StudioError) as info:
        load_recipe(path, TrainSpec)
    message = str(info.value)
    assert f"recipe {path} is not valid YAML at line 3, column 6" in message
    assert "Fix: fix the YAML syntax there" in message


def test_tab_indentation_names_line(tmp_path):
    path = _recipe(tmp_path, "model: tiny\nlora:\n\tr: 8\n")
    with pytest.raises(StudioError, match=r"line 3"):
        read_yaml(path)


def test_unknown_field_is_named(tmp_path):
    path = _recipe(tmp_path, "model: tiny\nepohcs: 3\n")
    with pytest.raises(StudioError) as info:
        load_recipe(path, TrainSpec)
    assert "epohcs: unknown field" in str(info.value)


def test_unknown_nested_field_is_named_with_its_path(tmp_path):
    path = _recipe(tmp_path, "model: tiny\nlora:\n  rank: 8\n")
    with pytest.raises(StudioError, match=r"lora\.rank: unknown field"):
        load_recipe(path, TrainSpec)


def test_wrong_type_names_field_and_value(tmp_path):
    path = _recipe(tmp_path, "model: tiny\nepochs: three\n")
    with pytest.raises(StudioError) as info:
        load_recipe(path, TrainSpec)
    message = str(info.value)
    assert "epochs:" in message and "'three'" in message
    assert "recipe " + str(path) in message


def test_missing_required_field_is_named(tmp_path):
    path = _recipe(tmp_path, "epochs: 2\n")
    with pytest.raises(StudioError, match=r"model: Field required"):
        load_recipe(path, TrainSpec)


@pytest.mark.parametrize("text, got", [("- a\n- b\n", "list"), ("just a string\n", "str"), ("3\n", "int")])
def test_non_mapping_yaml_is_rejected(tmp_path, text, got):
    path = _recipe(tmp_path, text)
    with pytest.raises(StudioError, match=rf"must be a mapping of fields, got {got}"):
        load_recipe(path, TrainSpec)


def test_empty_file_is_an_empty_mapping(tmp_path):
    assert read_yaml(_recipe(tmp_path, "# only a comment\n")) == {}


def test_missing_file_and_non_utf8_are_studio_errors(tmp_path):
    with pytest.raises(StudioError, match="does not exist"):
        read_yaml(tmp_path / "nope.yaml")
    path = tmp_path / "latin1.yaml"
    path.write_bytes("model: caf\xe9\n".encode("latin-1"))
    with pytest.raises(StudioError, match="not UTF-8"):
        read_yaml(path)


def test_overrides_apply_nested_and_typed(tmp_path):
    path = _recipe(tmp_path, "model: tiny\nepochs: 1\n")
    spec = load_recipe(
        path,
        TrainSpec,
        ["epochs=4", "bf16=true", "lora.r=32", "lora.alpha=0.5", "lora.targets=[q_proj, v_proj]"],
    )
    assert spec.epochs == 4
    assert spec.bf16 is True
    # lora did not exist in the file: the override created the section.
    assert spec.lora == LoraSpec(r=32, alpha=0.5, targets=["q_proj", "v_proj"])


def test_override_values_are_yaml_typed():
    data = apply_overrides(
        {}, ["a=3", "b=true", "c=[1, 2]", "d=null", "e=", "f=x=y", "g={k: v}", "h=[unclosed"]
    )
    assert data == {
        "a": 3,
        "b": True,
        "c": [1, 2],
        "d": None,
        "e": "",
        "f": "x=y",  # only the first '=' splits
        "g": {"k": "v"},
        "h": "[unclosed",  # not YAML: kept as the plain string
    }


def test_override_creates_deep_sections_and_keeps_siblings():
    data = apply_overrides({"a": {"keep": 1}}, ["a.b.c=2"])
    assert data == {"a": {"keep": 1, "b": {"c": 2}}}


def test_override_into_an_empty_yaml_section(tmp_path):
    # `lora:` with nothing under it loads as None; an override fills it in.
    spec = load_recipe(_recipe(tmp_path, "model: tiny\nlora:\n"), TrainSpec, ["lora.r=4"])
    assert spec.lora == LoraSpec(r=4)


@pytest.mark.parametrize(
    "override, message",
    [
        ("epochs", "has no '='"),
        ("=3", "empty key"),
        ("model.name=x", "'model' is a value, not a section"),
    ],
)
def test_bad_overrides_are_named(override, message):
    with pytest.raises(StudioError, match=message):
        apply_overrides({"model": "tiny"}, [override])


def test_override_with_wrong_type_is_caught_by_validation(tmp_path):
    path = _recipe(tmp_path, "model: tiny\n")
    with pytest.raises(StudioError, match=r"lora\.r:.*'many'"):
        load_recipe(path, TrainSpec, ["lora.r=many"])


# ---- ${STUDIO_HOME} in path fields -----------------------------------------------------------------
class PathSpec(Spec):
    home_paths = ("model", "lora.targets_dir")
    model: str = Field(description="base model")
    note: str = Field("", description="not a path: never expanded")
    lora: dict | None = Field(None, description="nested")


@pytest.mark.parametrize("given, expected", [
    ("${STUDIO_HOME}/models/tiny", "{home}/models/tiny"),
    ("$STUDIO_HOME/models/tiny", "{home}/models/tiny"),
    ("${STUDIO_HOME}", "{home}"),
    ("./models/tiny", "./models/tiny"),  # relative paths are left to the reader (cwd, then home's parent)
    ("Qwen/Qwen2.5-0.5B", "Qwen/Qwen2.5-0.5B"),
])
def test_studio_home_is_expanded_against_the_given_home_not_the_cwd(tmp_path, given, expected):
    home = tmp_path / "h"
    path = _recipe(tmp_path, f"model: '{given}'\nnote: '$STUDIO_HOME'\nlora: {{targets_dir: '${{STUDIO_HOME}}/t'}}\n")
    spec = load_recipe(path, PathSpec, home=home)
    assert spec.model == expected.format(home=home)
    assert spec.note == "$STUDIO_HOME" and spec.lora == {"targets_dir": f"{home}/t"}


def test_studio_home_defaults_to_the_settings_home_and_overrides_are_expanded(tmp_path, monkeypatch):
    monkeypatch.setenv("STUDIO_HOME", str(tmp_path / "env-home"))
    path = _recipe(tmp_path, "model: x\n")
    spec = load_recipe(path, PathSpec, ["model=${STUDIO_HOME}/m"])
    assert spec.model == f"{tmp_path / 'env-home'}/m"


@pytest.mark.parametrize("given, problem", [
    ("${FOO_UNSET_IN_TESTS}/m", "names the variable ${FOO_UNSET_IN_TESTS}"),
    ("$HOME/m", "names the variable $HOME"),  # set, but recipes never read the environment
    ("/data/${STUDIO_HOME}/m", "inside the path"),
    ("${STUDIO_HOME}m", "inside the path"),
])
def test_other_variables_are_an_error_naming_the_file_and_field(tmp_path, given, problem):
    path = _recipe(tmp_path, f"model: '{given}'\n")
    with pytest.raises(StudioError) as info:
        load_recipe(path, PathSpec, home=tmp_path)
    assert f"recipe {path}: model: " in info.value.problem and problem in info.value.problem
    assert "${STUDIO_HOME}/" in info.value.fix


def test_make_tiny_out_takes_studio_home_and_refuses_other_variables(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from studio.cli.main import app

    monkeypatch.setenv("STUDIO_HOME", str(tmp_path / "h"))
    r = CliRunner().invoke(app, ["models", "make-tiny", "--out", "${NOT_A_STUDIO_VAR}/tiny2"])
    assert isinstance(r.exception, StudioError) and "--out: " in r.exception.problem
    assert "names the variable ${NOT_A_STUDIO_VAR}" in r.exception.problem
    assert not (tmp_path / "h").exists()
