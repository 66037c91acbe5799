"""`studio keys create --rpm/--tpm/--budget-usd`, `studio keys limit`, `studio usage` through the
real console script on a temp STUDIO_HOME."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from sqlalchemy import select

from studio.gateway.usage import UsageRow, UsageWriter
from studio.store.db import session_scope
from studio.store.models import ApiKey

STUDIO = str(Path(sys.executable).with_name("studio"))


def run(args, home: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "STUDIO_HOME": str(home)}
    env.pop("STUDIO_DATABASE_URL", None)
    return subprocess.run([STUDIO, *args], env=env, capture_output=True, text=True, timeout=120)


def test_key_limits_and_usage_table(tmp_path):
    home = tmp_path / "home"
    r = run(["keys", "create", "--name", "batch", "--role", "service", "--rpm", "30",
             "--budget-usd", "2.5"], home)
    assert r.returncode == 0, r.stderr
    r = run(["keys", "limit", "batch", "--tpm", "1000"], home)
    assert r.returncode == 0 and "rpm 30, tpm 1000, budget $2.5" in r.stdout, r.stdout + r.stderr
    r = run(["keys", "limit", "batch", "--rpm", "0"], home)
    assert r.returncode == 1 and "--rpm must be positive" in r.stderr
    r = run(["keys", "limit", "nobody", "--rpm", "3"], home)
    assert r.returncode == 1 and "no key named 'nobody'" in r.stderr
    db = f"sqlite:///{home.resolve() / 'studio.db'}"
    with session_scope(db) as s:
        key = s.scalars(select(ApiKey).where(ApiKey.name == "batch")).one()
        assert (key.rpm_limit, key.tpm_limit, key.budget_usd) == (30, 1000, 2.5)

    assert "no gateway calls recorded yet" in run(["usage"], home).stdout
    writer = UsageWriter(db, flush_interval_s=0.05)
    writer.record(UsageRow("eval", "chat", "judge", 12.0, key_name="batch", job_id="eval-1",
                           prompt_tokens=10, completion_tokens=4, cost_usd=0.001))
    writer.record(UsageRow("synth", "chat", "judge", 8.0, key_name="batch", cache_hit=True))
    writer.close()
    r = run(["usage", "--by", "service,model"], home)
    assert r.returncode == 0 and "eval" in r.stdout and "synth" in r.stdout and "judge" in r.stdout
    r = run(["usage", "--by", "key,job", "--service", "eval", "--json"], home)
    rows = json.loads(r.stdout)
    assert [(x["key"], x["job"], x["calls"], x["prompt_tokens"]) for x in rows] == \
        [("batch", "eval-1", 1, 10)]
    r = run(["usage", "--by", "colour"], home)
    assert r.returncode == 1 and "group by any of" in r.stderr
