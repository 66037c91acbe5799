"""Training jobs through the front doors of a running studio: `studio up` (whose Serve app runs the
JobScheduler) → `studio train submit --follow` → Ray Job → SUCCEEDED, a silent crash retried by the
scheduler, then `studio jobs` / `studio models` and /api/scheduler. The scheduler is pointed at the
test entrypoint (tests/jobs/fake_train.py) through the Serve config, as a cluster would configure it."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.e2e.test_stack import REPO, run
from tests.jobs.inputs import make_model_dir

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@pytest.fixture(scope="module")
def studio(api_stack):
    """The package's API-only `studio up` (tests/e2e/conftest.py: its scheduler runs
    tests/jobs/fake_train), with a model and a dataset of this module's."""
    home, env = api_stack.home, api_stack.env
    model = make_model_dir(home / "models" / "model")
    data = home / "digits.jsonl"
    data.write_text("".join(f'{{"prompt": "reverse: {i}", "completion": "{str(i)[::-1]}"}}\n' for i in range(10, 20)))
    assert run(["data", "ingest", str(data), "--name", "digits"], env).returncode == 0
    recipe = home / "recipe.yaml"
    recipe.write_text(f"# studio train submit {recipe}\nname: ok-e2e\nmethod: sft\nbase_model: {model}\n"
                      "data: {dataset: digits}\nhyper: {max_steps: 4}\nmax_retries: 1\n")
    yield {"env": env, "home": home, "recipe": recipe, "base": api_stack.base}
    api_stack.hide_from_leak_watch()


def test_submit_and_follow_to_succeeded(studio):
    r = run(["train", "submit", str(studio["recipe"]), "--follow"], studio["env"], timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "job 1 QUEUED: sft 'ok-e2e' on digits@1" in r.stdout
    for line in ("job 1 STARTING  attempt 1: submitting Ray job studio-job-1-a1", "job 1 RUNNING",
                 "job 1 SUCCEEDED after 1 attempt(s)"):
        assert line in r.stdout, r.stdout

    r = run(["jobs", "logs", "1"], studio["env"])
    assert r.returncode == 0 and "fake-train job 1 attempt 1 mode ok" in r.stdout
    r = run(["models", "ls", "ok-e2e"], studio["env"])
    assert r.returncode == 0 and "ok-e2e@1" in r.stdout and "candidate" in r.stdout
    r = run(["models", "promote", "ok-e2e@1"], studio["env"])
    assert r.returncode == 0 and "ok-e2e@1 is now champion" in r.stdout
    r = run(["models", "show", "ok-e2e"], studio["env"])
    assert "ok-e2e@1 · champion" in r.stdout and "job 1 · SUCCEEDED" in r.stdout


def test_a_silent_crash_is_retried_by_the_running_scheduler(studio):
    r = run(["train", "submit", str(studio["recipe"]), "name=dieonce-e2e", "--follow", "--logs"],
            studio["env"], timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "boom: the process dies without a word" in r.stdout  # attempt 1's log
    assert "RETRYING" in r.stdout and "SUCCEEDED after 2 attempt(s)" in r.stdout
    r = run(["jobs", "show", "2"], studio["env"])
    shown = " ".join(r.stdout.split())  # undo the terminal-width wrapping
    assert r.returncode == 0 and "ended FAILED: Job entrypoint command failed with exit code 3" in shown
    r = run(["jobs", "ls", "--status", "SUCCEEDED"], studio["env"])
    assert "ok-e2e" in r.stdout and "dieonce-e2e" in r.stdout


def test_cancel_from_the_cli_stops_a_running_job(studio):
    r = run(["train", "submit", str(studio["recipe"]), "name=hang-e2e"], studio["env"])
    assert r.returncode == 0, r.stderr
    job_id = r.stdout.split("job ", 1)[1].split()[0]
    admin = (studio["home"] / "admin.key").read_text().strip()
    auth = {"Authorization": f"Bearer {admin}"}
    for _ in range(60):
        if httpx.get(f"{studio['base']}/api/jobs/{job_id}", headers=auth).json()["status"] == "RUNNING":
            break
        time.sleep(0.5)
    r = run(["jobs", "cancel", job_id], studio["env"])
    assert r.returncode == 0 and "cancel requested" in r.stdout
    r = run(["jobs", "logs", job_id, "--follow"], studio["env"], timeout=60)
    assert r.returncode == 1 and f"job {job_id} CANCELLED" in r.stdout
    status = httpx.get(f"{studio['base']}/api/scheduler", headers=auth).json()
    assert status["alive"] and status["passes"] > 0 and status["max_concurrent_jobs"] == 2


def test_ray_job_submit_from_a_shell_without_the_venv(studio):
    """docs/production.md's `ray job submit -- python -m studio.train.run …`, from a shell where
    the venv is not on PATH, against a head that `.venv/bin/studio up` started the same way: the
    job's `python` is the studio's interpreter, with its packages (it was the system python,
    which has no httpx)."""
    venv_bin = Path(sys.executable).parent
    env = {**studio["env"], "PATH": "/usr/local/bin:/usr/bin:/bin", "RAY_AUTH_MODE": "token",
           "RAY_ADDRESS": f"http://127.0.0.1:{studio['env']['STUDIO_DASHBOARD_PORT']}"}
    assert str(venv_bin) not in studio["env"]["PATH"].split(":")
    script = "import sys, httpx, studio.train.run; print('job python:', sys.executable)"
    r = subprocess.run([str(venv_bin / "ray"), "job", "submit", "--", "python", "-c", script],
                       env=env, capture_output=True, text=True, timeout=180, cwd=REPO)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"job python: {venv_bin}/python" in r.stdout, r.stdout
