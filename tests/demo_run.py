"""One run of the demo's ``small`` profile (``run_demo``, the function behind ``make demo``) per
test session, on the suite's shared tiny-model stack (tests/stacks.py): the demo's step 0 is that
stack's `studio up` (the demo runs on its Serve config and environment: free ports, a temporary
STUDIO_HOME, Redis, the gateway's test groups), and the stack, still up when the demo ends, is handed
over to the modules that share it, so the run starts one stack for both. Its outcomes are checked by
more than one module, so the run is paid once:

- tests/e2e/test_demo.py: the loop's outcomes, the SFT step's job (steps, metrics, its in-job
  held-out eval, MLflow, the registered adapter), and that nothing of the stack is left running
  once it is stopped;
- tests/evals/test_eval_e2e.py: the SFT adapter the demo trained is its "good" candidate (a
  480-step LoRA reaching ≥ 0.9 exact match on digit reversal), instead of training its own.

What the run left on disk (the SQLite database, MLflow, artifacts, adapters) stays under ``home``
for the session."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from studio.settings import StudioSettings


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


def run_small_demo(stack) -> DemoRun:
    """The demo on ``stack`` (a prepared tests.stacks.TinyStack, which adopts what the demo
    started, also when a step fails)."""
    import ray

    from studio.cli import demo as demo_mod
    from tests.stacks import UNSET

    stack.prepare()
    try:
        with pytest.MonkeyPatch.context() as mp:
            for name in UNSET:
                mp.delenv(name, raising=False)
            for k, v in stack.env.items():
                mp.setenv(k, v)
            settings = StudioSettings()
            result = demo_mod.run_demo(exit_at_end=False, profile="small", settings=settings,
                                       serve_config=stack.config)
    finally:
        if ray.is_initialized():  # detach before the head goes, or Ray aborts this process later
            ray.shutdown()
        stack.adopt()
    return DemoRun(result=result, settings=settings)
