"""POST /api/jobs with a GRPO `python` reward: refused with a 400 naming STUDIO_REWARD_ALLOWLIST
before the module is imported in the API process (and nothing is queued); queued once an admin
allowed it. On SQLite and PostgreSQL, real keys."""

from __future__ import annotations

import sys

import pytest

from tests.api.checks import assert_problem, bearer
from tests.jobs.inputs import ingest_datasets, make_model_dir, train_spec

PROBE = "tests.train.reward_probe"


@pytest.fixture
def grpo_spec(settings, tmp_path) -> dict:
    ingest_datasets(settings, tmp_path / "data")
    return train_spec(make_model_dir(settings.models_dir / "model"), name="grpo-job", method="grpo",
                      grpo={"rewards": [{"type": "python", "callable": f"{PROBE}:score"}]})


def test_a_reward_outside_the_allowlist_is_refused_at_submit(client, user_key, grpo_spec, monkeypatch):
    monkeypatch.delenv("STUDIO_REWARD_ALLOWLIST", raising=False)
    sys.modules.pop(PROBE, None)
    r = client.post("/api/jobs", headers=bearer(user_key), json=grpo_spec)
    problem = assert_problem(r, 400, f"python reward '{PROBE}:score' is not allowed")
    assert "STUDIO_REWARD_ALLOWLIST" in problem["fix"]
    assert PROBE not in sys.modules  # the API process never ran the module
    assert client.get("/api/jobs", headers=bearer(user_key)).json() == []
    builtin = {**grpo_spec, "grpo": {"rewards": [{"type": "python", "callable": "studio.train.rewards:char_f1"}]}}
    r = client.post("/api/jobs", headers=bearer(user_key), json=builtin)
    assert r.status_code == 201, r.text


def test_an_allowlisted_reward_is_queued(client, user_key, grpo_spec, monkeypatch):
    monkeypatch.setenv("STUDIO_REWARD_ALLOWLIST", f"{PROBE}:*")
    r = client.post("/api/jobs", headers=bearer(user_key), json=grpo_spec)
    assert r.status_code == 201, r.text
    assert r.json()["status"] == "QUEUED"
