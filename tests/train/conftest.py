"""Fixtures for training tests: a real STUDIO_HOME (SQLite, artifact store, MLflow) holding the tiny
model and the toy datasets, and a runner for the real entrypoint ``python -m studio.train.run``.

The entrypoint runs as a subprocess in its own process group, from a cwd that is not the repo, with
no RAY_ADDRESS: it starts a private local Ray (never a developer's stack), and the group is killed
when the test ends, so no Ray process outlives a test.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from peft import PeftModel
from safetensors.torch import load_file

from studio.models.tiny import make_tiny
from studio.settings import StudioSettings
from studio.store import db as store_db
from studio.train.toy_data import ingest_toy_datasets

REPO = Path(__file__).resolve().parents[2]
RECIPES = REPO / "configs" / "train"


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model, built once per session; tests only read it."""
    return make_tiny(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture
def home(tmp_path: Path, tiny_model_dir: Path) -> Iterator[StudioSettings]:
    """A fresh STUDIO_HOME at ``tmp/project/.studio`` (SQLite DB, artifacts, MLflow) with the tiny
    model at ``.studio/models/tiny`` (what the recipes name, relative) and the toy datasets."""
    settings = StudioSettings(home=tmp_path / "project" / ".studio", database_url=None, artifacts_uri=None,
                              mlflow_uri=None, redis_url=None, admin_key=None)
    store_db.init_db(settings.db_url)
    settings.models_dir.mkdir(parents=True)
    (settings.models_dir / "tiny").symlink_to(tiny_model_dir)
    ingest_toy_datasets(settings, tmp_path / "data")
    yield settings
    store_db.get_engine(settings.db_url).dispose()
    store_db.get_engine.cache_clear()


def entrypoint_env(settings: StudioSettings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STUDIO_") and k != "RAY_ADDRESS"}
    env["STUDIO_HOME"] = str(settings.home_abs)
    env["PYTHONUNBUFFERED"] = "1"
    return env


@dataclass
class EntrypointRun:
    returncode: int
    output: str
    seconds: float


class Entrypoint:
    """Start ``python -m studio.train.run ARGS`` from a cwd outside the repo; wait or watch it."""

    def __init__(self, settings: StudioSettings, log_dir: Path):
        self.settings = settings
        self.log_dir = log_dir
        self.procs: list[subprocess.Popen] = []

    def start(self, *args: str) -> tuple[subprocess.Popen, Path]:
        log = self.log_dir / f"entrypoint-{len(self.procs)}.log"
        cwd = self.log_dir / "elsewhere"  # not the repo, not STUDIO_HOME's parent
        cwd.mkdir(exist_ok=True)
        with log.open("wb") as out:
            proc = subprocess.Popen([sys.executable, "-m", "studio.train.run", *args], cwd=cwd,
                                    env=entrypoint_env(self.settings), stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        self.procs.append(proc)
        return proc, log

    def run(self, *args: str, timeout_s: float = 600) -> EntrypointRun:
        t0 = time.monotonic()
        proc, log = self.start(*args)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.stop(proc)
            pytest.fail(f"the entrypoint ran over {timeout_s} s:\n{tail(log)}")
        return EntrypointRun(proc.returncode, log.read_text(errors="replace"), time.monotonic() - t0)

    @staticmethod
    def stop(proc: subprocess.Popen) -> None:
        """Kill the process group this test started (the driver and the local Ray it spawned)."""
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        proc.wait(timeout=30)


@pytest.fixture
def entrypoint(home: StudioSettings, tmp_path: Path) -> Iterator[Entrypoint]:
    runner = Entrypoint(home, tmp_path)
    yield runner
    for proc in runner.procs:
        runner.stop(proc)


def tail(log: Path | str, lines: int = 60) -> str:
    text = log.read_text(errors="replace") if isinstance(log, Path) else log
    return "\n".join(text.splitlines()[-lines:])


def lora_b_norms(adapter_dir: str | Path) -> dict[str, float]:
    """Norm of every LoRA B matrix: PEFT initializes B to zero, so any non-zero B was trained."""
    weights = load_file(str(Path(adapter_dir) / "adapter_model.safetensors"))
    return {k: float(v.float().norm()) for k, v in weights.items() if "lora_B" in k}


def load_adapter(base_model: str | Path, adapter_dir: str | Path):
    from transformers import AutoModelForCausalLM

    return PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(base_model)), str(adapter_dir))
