"""Inputs for job tests: a model directory and the ``digits``/``prose`` datasets under the
test's STUDIO_HOME."""

from __future__ import annotations

from pathlib import Path

import pytest

from studio.settings import StudioSettings
from tests.jobs.inputs import ingest_datasets, make_model_dir


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    return make_model_dir(tmp_path / "model")


@pytest.fixture
def datasets(settings: StudioSettings, tmp_path: Path) -> None:
    ingest_datasets(settings, tmp_path / "data")
