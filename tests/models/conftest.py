"""The tiny model, built once per test session (a few seconds) and shared read-only by the tests here."""

from __future__ import annotations

from pathlib import Path

import pytest

from studio.models.tiny import make_tiny


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny model built with the default spec (seed 0). Tests must not write into it."""
    return make_tiny(tmp_path_factory.mktemp("tiny") / "model")
