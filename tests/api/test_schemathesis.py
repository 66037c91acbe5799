"""Schemathesis against the live API's OpenAPI (coverage and fuzzing phases, a `user` key): no
request it makes may get a 5xx, and none may hang.

The app runs as it does behind Serve, minus Serve: ``create_app`` on a temp SQLite studio home,
uvicorn on a loopback port, no Ray. Excluded, because they need Serve deployments and answer 503
without them: ``/v1/*`` (the Router), ``/gateway/v1/*`` (the Gateway) and ``/api/scheduler`` (the
JobScheduler). The run has a time budget (``--max-time``), so it fits in ``make test`` on a
2-core machine; it prints the report's case count either way.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from studio.api.app import create_app
from studio.keys import create_key
from studio.settings import StudioSettings
from studio.store.db import get_engine, init_db, session_scope
from tests.loopback import ServerThread

pytestmark = [pytest.mark.slow, pytest.mark.parallel]  # an in-process app and a schemathesis process: no Ray

# schemathesis' own budget. 30 s generates about 3,300 cases here (one worker; 110 s: 8-9k, no failure found
# past the first 4k since 2026-12-05); STUDIO_TEST_FUZZ_S=600 for a deep run before a release.
BUDGET_S = int(os.environ.get("STUDIO_TEST_FUZZ_S", "30"))
MAX_RESPONSE_S = 10  # slower than this is a hang (follow-streams end after STUDIO_STREAM_MAX_S)
# One pattern: repeating --exclude-path-regex does not add patterns up (schemathesis 4.x).
NEEDS_SERVE = r"^/(v1|gateway)/|^/api/scheduler$"


@pytest.fixture
def api(tmp_path: Path):
    settings = StudioSettings(home=tmp_path / "home", database_url=None, artifacts_uri=None,
                              mlflow_uri=None, redis_url=None, admin_key=None,
                              stream_max_s=4.0, stream_idle_s=4.0)
    init_db(settings.db_url)
    with session_scope(settings.db_url) as s:
        user = create_key(s, "fuzz-user", "user")[0]
        create_key(s, "fuzz-admin", "admin")  # present, as on a real studio; the run uses `user`
    app = create_app(settings)
    server = ServerThread(app)
    # Anything the API calls on itself (the gateway preflight) reaches this server, not :8000.
    app.state.settings = settings.model_copy(update={"http_port": server.port})
    server.start()
    try:
        yield server.url, user
    finally:
        server.stop()
        get_engine(settings.db_url).dispose()


def test_schemathesis_finds_no_server_error_and_no_hang(api, tmp_path):
    url, user = api
    report = tmp_path / "report.json"
    cmd = [sys.executable, "-m", "schemathesis.cli", "run", f"{url}/api/openapi.json",
           "-H", f"Authorization: Bearer {user}",
           "--phases", "coverage,fuzzing", "--checks", "not_a_server_error",
           # One worker: with two, hypothesis parses lambda sources in two threads at once and
           # CPython 3.11.7 raises "AST constructor recursion depth mismatch" (a CI failure,
           # 2026-12-06); one worker generates ~5,500 cases in 50 s, two ~6,000.
           "--max-response-time", str(MAX_RESPONSE_S), "--request-timeout", str(2 * MAX_RESPONSE_S),
           "--exclude-path-regex", NEEDS_SERVE, "--max-time", str(BUDGET_S), "--workers", "1",
           "--seed", "20261205", "--no-shrink", "--report", "json", "--report-json-path", str(report)]
    start = time.monotonic()
    # cwd: schemathesis and hypothesis keep their caches in the working directory.
    run = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=BUDGET_S + 60)
    took = time.monotonic() - start
    summary = json.loads(report.read_text()) if report.exists() else {}
    cases = summary.get("test_cases", {})
    print(f"schemathesis: {cases.get('generated')} cases in {took:.0f} s, "
          f"{cases.get('unique_failures')} unique failures, {len(summary.get('errors', []))} errors, "
          f"operations {summary.get('operations', {}).get('tested')}/{summary.get('operations', {}).get('total')}")
    # What went wrong comes first in the output (ERRORS: schemathesis' own; FAILURES: the API's).
    heads = [run.stdout.find(h) for h in ("= ERRORS =", "= FAILURES =") if h in run.stdout]
    failures = run.stdout[min(heads):][:6000] if heads else run.stdout[-4000:]
    assert run.returncode == 0, failures + run.stderr[-2000:]
    # No floor on the number of cases: the budget is time, and a loaded box generates fewer (941 in
    # 30 s beside other tests, 2026-12-07; 199 on a slow evening; ~3,300 alone). What must hold is
    # that nothing failed and the run reached the API's operations, not just the schema.
    assert cases.get("generated", 0) > 0 and cases.get("unique_failures") == 0
    assert summary["operations"]["tested"] >= 50  # the run reached the API, not just the schema
