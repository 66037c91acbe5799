"""Every YAML under configs/ validates against its schema and opens with the command that runs it."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from studio.models.tiny import TinyModelSpec
from studio.recipes import load_recipe, validate_spec
from studio.train.spec import TrainSpec

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
ALL = sorted(CONFIGS.rglob("*.yaml"))


def _validate_serve(path: Path) -> None:
    from ray.serve.schema import ServeDeploySchema

    from studio.serving.app_config import AppArgs
    from studio.serving.recipe import ServingRecipe

    if path.parent.name == "models":  # serving recipes: `studio serve deploy`
        load_recipe(path, ServingRecipe)
        return

    data = yaml.safe_load(path.read_text())
    schema = ServeDeploySchema.model_validate(data)
    studio_apps = [a for a in schema.applications if a.import_path == "deployments.app:build_app"]
    assert studio_apps, f"{path} deploys no studio application"
    for app in studio_apps:
        validate_spec(AppArgs, app.args or {}, f"{path} args")


def _validate_gateway(path: Path) -> None:
    from studio.gateway.spec import load_gateway_spec

    load_gateway_spec(path)


def _validate_data(path: Path) -> None:
    from studio.data.curate import CurateSpec
    from studio.data.synth.spec import SynthSpec

    load_recipe(path, SynthSpec if path.name.startswith("synth") else CurateSpec)


def _validate_eval(path: Path) -> None:
    from studio.evals.spec import EvalSpec

    if path.parent.name != "tasks":
        load_recipe(path, EvalSpec)
        return
    # an lm-evaluation-harness task the lm_eval scorer runs: it loads, with its documents, as lm-eval reads it
    from lm_eval.tasks import TaskManager

    task = path.stem  # each file is named after its task
    loaded = TaskManager(include_path=str(path.parent), include_defaults=False).load([task])["tasks"][task]
    assert loaded.OUTPUT_TYPE == "generate_until" and len(list(loaded.test_docs())) > 0


VALIDATORS = {
    "data": _validate_data,
    "eval": _validate_eval,
    "gateway.yaml": _validate_gateway,
    "loops": lambda p: __import__("studio.loops.spec", fromlist=["load_loop_recipe"]).load_loop_recipe(p),
    "models": lambda p: load_recipe(p, TinyModelSpec),
    "serve": _validate_serve,
    "sweeps": lambda p: __import__("studio.train.sweep", fromlist=["load_sweep"]).load_sweep(p),
    "train": lambda p: load_recipe(p, TrainSpec),
}


def test_there_are_configs():
    assert ALL, "configs/ holds no YAML"


@pytest.mark.parametrize("path", ALL, ids=lambda p: str(p.relative_to(CONFIGS)))
def test_config_validates(path: Path):
    kind = path.relative_to(CONFIGS).parts[0]
    assert kind in VALIDATORS, f"no schema is known for configs/{kind}/; add one to VALIDATORS"
    VALIDATORS[kind](path)


@pytest.mark.parametrize("path", ALL, ids=lambda p: str(p.relative_to(CONFIGS)))
def test_config_opens_with_its_command(path: Path):
    first = path.read_text().splitlines()[0]
    assert first.startswith("# ") and any(w in first for w in ("studio ", "serve ", "ray ", "python ")), first


# ---- paths follow STUDIO_HOME ----------------------------------------------------------------------
def _home_path_recipes() -> list[tuple[Path, type]]:
    from studio.serving.recipe import ServingRecipe

    return ([(p, TrainSpec) for p in sorted((CONFIGS / "train").glob("*.yaml"))]
            + [(p, ServingRecipe) for p in sorted((CONFIGS / "serve" / "models").glob("*.yaml"))])


def _field(spec, dotted: str):
    for part in dotted.split("."):
        spec = getattr(spec, part)
    return spec


@pytest.mark.parametrize("path, spec_cls", _home_path_recipes(),
                         ids=lambda v: v.name if isinstance(v, Path) else v.__name__)
def test_shipped_recipes_follow_studio_home(path: Path, spec_cls: type, tmp_path: Path):
    """A recipe names a local model as ${STUDIO_HOME}/...: loaded against two homes, it points
    under each; a hub id stays a hub id. Nothing names the default home's folder (.studio/)."""
    raw = yaml.safe_load(path.read_text())
    for home in (tmp_path / "one" / ".studio", tmp_path / "two" / "elsewhere"):
        spec = load_recipe(path, spec_cls, home=home)
        for dotted in spec_cls.home_paths:
            value = _field(spec, dotted)
            given = raw
            for part in dotted.split("."):
                given = (given or {}).get(part)
            if isinstance(given, str) and given.startswith("${STUDIO_HOME}/"):
                assert value == str(home) + given[len("${STUDIO_HOME}"):]
            else:
                assert value == given and (value is None or "$" not in value)
    body = "\n".join(line.split("#")[0] for line in path.read_text().splitlines())
    assert ".studio/" not in body, f"{path} hard-codes a .studio/ path: use ${{STUDIO_HOME}}/..."


def test_the_shipped_loop_trains_from_this_studio_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """`studio loop create` (no settings at hand) reads STUDIO_HOME from the environment."""
    from studio.loops.spec import load_loop_recipe

    for home in (tmp_path / "a", tmp_path / "b"):
        monkeypatch.setenv("STUDIO_HOME", str(home))
        _, train = load_loop_recipe(CONFIGS / "loops" / "reverse_tiny.yaml")
        assert train.base_model == str(home / "models" / "tiny")
