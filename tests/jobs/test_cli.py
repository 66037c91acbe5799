"""`studio train submit` / `studio jobs` without a running studio: the CLI needs only the database,
queues the job, and says how to start it. Real subprocesses of the console script."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.parallel]  # five CLI processes, ~2 s of imports each; no Ray

from studio.settings import StudioSettings
from studio.store.db import init_db
from tests.e2e.test_stack import free_port
from tests.jobs.inputs import ingest_datasets, make_model_dir

STUDIO = str(Path(sys.executable).with_name("studio"))


@pytest.fixture
def env(tmp_path) -> dict[str, str]:
    home = tmp_path / "home"
    settings = StudioSettings(home=home, database_url=None, artifacts_uri=None, mlflow_uri=None, redis_url=None)
    init_db(settings.db_url)
    ingest_datasets(settings, tmp_path / "data")
    make_model_dir(home / "models" / "model")
    (tmp_path / "sft.yaml").write_text(f"# studio train submit {tmp_path / 'sft.yaml'}\nname: rev\nmethod: sft\n"
                                       f"base_model: {home / 'models' / 'model'}\ndata:\n  dataset: digits\n")
    out = {**os.environ, "STUDIO_HOME": str(home), "STUDIO_HTTP_PORT": str(free_port())}
    for var in ("STUDIO_DATABASE_URL", "STUDIO_ARTIFACTS_URI", "RAY_ADDRESS"):
        out.pop(var, None)
    return out


def studio(env, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([STUDIO, *args], env=env, capture_output=True, text=True, timeout=60)


def test_submit_without_a_running_studio_queues_it(env, tmp_path):
    r = studio(env, "train", "submit", str(tmp_path / "sft.yaml"), "hyper.epochs=2", "--follow")
    assert r.returncode == 0, r.stderr
    assert "job 1 QUEUED: sft 'rev' on digits@1 (up to 3 attempts)" in r.stdout
    assert "queued; run `studio up` to start it" in r.stdout
    r = studio(env, "jobs", "cancel", "1")
    assert r.returncode == 0 and "job 1 CANCELLED" in r.stdout
    r = studio(env, "jobs", "show", "1")
    assert r.returncode == 0 and "CANCELLED" in r.stdout and "cancelled by cli:" in r.stdout


def test_bad_recipes_are_refused_naming_the_field_or_the_fix(env, tmp_path):
    r = studio(env, "train", "submit", str(tmp_path / "sft.yaml"), "lora.rr=4", "data.dataset=prose")
    assert r.returncode == 1
    assert "lora.rr: unknown field" in r.stderr and "fix:" in r.stderr
    r = studio(env, "train", "submit", str(tmp_path / "sft.yaml"), "data.dataset=prose")
    assert r.returncode == 1
    assert "'prose' holds text rows" in r.stderr and "use a chat or prompt_completion dataset" in r.stderr
