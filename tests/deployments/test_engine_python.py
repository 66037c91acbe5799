"""Which interpreter a model deployment's replicas run: SGLang has its own venv (STUDIO_SGLANG_PYTHON,
made by `make setup GPU=1 SGLANG=1`), every other engine the studio's (issue 24 item 7)."""

from __future__ import annotations

import pytest

from deployments.model import engine_python
from studio.errors import StudioError
from studio.serving.config import ModelDeploymentConfig


def cfg(engine: str) -> ModelDeploymentConfig:
    return ModelDeploymentConfig.model_validate(
        {"engine": {"model": "m", "engine": engine}, "num_gpus": 1 if engine == "sglang" else 0})


def test_sglang_replicas_run_the_named_interpreter_by_its_own_path(tmp_path, monkeypatch):
    python = tmp_path / "venv-sglang" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.symlink_to("/usr/bin/env")  # a venv's python is a symlink: kept, not resolved
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("STUDIO_SGLANG_PYTHON", "venv-sglang/bin/python")
    assert engine_python(cfg("sglang")) == str(python)
    assert engine_python(cfg("vllm")) is None  # vLLM replicas keep the studio's python


def test_unset_means_the_studios_own_python(monkeypatch):
    monkeypatch.delenv("STUDIO_SGLANG_PYTHON", raising=False)
    assert engine_python(cfg("sglang")) is None


def test_a_missing_interpreter_is_an_error_naming_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("STUDIO_SGLANG_PYTHON", str(tmp_path / "nope" / "python"))
    with pytest.raises(StudioError) as e:
        engine_python(cfg("sglang"))
    assert "is not a file" in str(e.value) and "make setup GPU=1 SGLANG=1" in e.value.fix
