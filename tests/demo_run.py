"""One run of the demo's ``small`` profile (``run_demo``, the function behind ``make demo``) per
test session, on a stack of its own (free ports, a temporary STUDIO_HOME), stopped at the end like
``make demo ARGS=--exit``. Its outcomes are checked by more than one module, so the run is paid once:

- tests/e2e/test_demo.py: the loop's outcomes, the SFT step's job (steps, metrics, its in-job
  held-out eval, MLflow, the registered adapter), and that nothing of the stack is left running;
- tests/evals/test_eval_e2e.py: the SFT adapter the demo trained is its "good" candidate (a
  480-step LoRA reaching ≥ 0.9 exact match on digit reversal), instead of training its own.

The stack is down when the fixture returns, so a module may start another one afterwards (never two
engines at once on 2 cores). What the run left on disk (the SQLite database, MLflow, artifacts,
adapters) stays under ``home`` for the session."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from studio.ray_connection import free_port
from studio.settings import StudioSettings

CLEARED = ("RAY_ADDRESS", "STUDIO_ADMIN_KEY", "STUDIO_DATABASE_URL", "STUDIO_ARTIFACTS_URI",
           "STUDIO_MLFLOW_URI", "STUDIO_REDIS_URL")


@dataclass(frozen=True)
class DemoRun:
    result: object  # studio.cli.demo.profile.DemoResult
    settings: StudioSettings  # the demo stack's settings (its home, database, MLflow)

    @property
    def home(self) -> Path:
        return self.settings.home_abs

    def version_uri(self, ref: str) -> Path:
        """Where the registry keeps ``ref`` (e.g. the SFT adapter)."""
        from studio.registry.versions import get_version
        from studio.store.db import session_scope

        with session_scope(self.settings.db_url) as s:
            return Path(get_version(s, ref).uri)


def run_small_demo(home: Path) -> DemoRun:
    from studio.cli import demo as demo_mod

    env = {"STUDIO_HOME": str(home), "STUDIO_HTTP_PORT": str(free_port()),
           "STUDIO_RAY_PORT": str(free_port()), "STUDIO_DASHBOARD_PORT": str(free_port())}
    with pytest.MonkeyPatch.context() as mp:
        for name in CLEARED:
            mp.delenv(name, raising=False)
        for k, v in env.items():
            mp.setenv(k, v)
        settings = StudioSettings()
        result = demo_mod.run_demo(exit_at_end=True, profile="small", settings=settings)
    return DemoRun(result=result, settings=settings)
