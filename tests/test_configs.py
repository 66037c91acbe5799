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


VALIDATORS = {
    "data": _validate_data,
    "eval": lambda p: load_recipe(p, __import__("studio.evals.spec", fromlist=["EvalSpec"]).EvalSpec),
    "gateway.yaml": _validate_gateway,
    "loops": lambda p: __import__("studio.loops.spec", fromlist=["load_loop_recipe"]).load_loop_recipe(p),
    "models": lambda p: load_recipe(p, TinyModelSpec),
    "serve": _validate_serve,
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
