"""``run_demo``: the steps in order, timed; ``--exit`` stops the stack even when a step fails."""

from __future__ import annotations

import time
from pathlib import Path

from studio import stack
from studio.cli.common import console, settings_with_db
from studio.cli.demo.profile import PROFILES, DemoResult
from studio.cli.demo.steps import Demo
from studio.errors import StudioError
from studio.settings import StudioSettings


def run_demo(exit_at_end: bool = False, profile: str = "full",
             settings: StudioSettings | None = None, serve_config: Path | None = None,
             skip_loop: bool = False) -> DemoResult:
    """The demo's steps on ``settings``' stack. ``serve_config``: the Serve config step 0 starts
    (or redeploys) the stack with; it must serve the tiny model at ``$STUDIO_HOME/models/tiny``
    (default: configs/serve/studio.yaml pointed there). The test suite passes its shared tiny-model
    stack's config, so the demo's stack is that stack. ``skip_loop`` (``--skip-loop``) leaves out
    step 10, one generation of the shipped self-driving loop (the ``small`` profile never runs it)."""
    if profile not in PROFILES:
        raise StudioError(f"unknown demo profile {profile!r}", f"use one of {', '.join(PROFILES)}")
    if settings is None:
        settings = settings_with_db()
    else:
        from studio.store.db import init_db

        init_db(settings.db_url)
    demo = Demo(settings, PROFILES[profile], serve_config=serve_config)
    t_start = time.monotonic()
    try:
        demo.step(0, "start the local stack and build the tiny model", demo.start)
        demo.step(1, "ingest the digit-reversal data (train/test)", demo.ingest)
        demo.step(2, "evaluate the base model on the test split", demo.eval_base)
        demo.step(3, "fine-tune: SFT LoRA job on Ray Train (over HTTP)", demo.train_sft)
        demo.step(4, "the adapter is registered and served without a redeploy", demo.serve_new_version)
        demo.step(5, "evaluate base vs the new version", demo.compare)
        demo.step(6, "promote the adapter through the promotion gate", demo.promote)
        demo.step(7, "A/B experiment, feedback, preference export", demo.ab_and_feedback)
        demo.step(8, "DPO from the feedback, starting from the SFT adapter", demo.train_dpo)
        demo.step(9, "leaderboard, usage, where things are", demo.summary)
        if demo.p.loop_step and not skip_loop:
            demo.step(10, "the self-driving loop: one generation with simulated users", demo.loop)
        demo.result.seconds = round(time.monotonic() - t_start, 1)
        r = demo.result
        console.rule("[bold]demo finished")
        console.print(f"exact match on reverse-test: tiny {r.base_em:.2f} → {r.sft_version} (SFT) {r.sft_em:.2f} → "
                      f"{r.dpo_version} (DPO) {r.dpo_em:.2f};  done in {r.seconds:.0f} s", highlight=False)
        if r.loop:
            console.print(f"loop {r.loop['loop']} generation {r.loop['generation']}: {r.loop['verdict']}",
                          highlight=False)
        if exit_at_end:
            console.print("stopping the stack (--exit)")
        else:
            console.print("the stack keeps running: stop it with `studio down`")
        return demo.result
    finally:
        if demo.api is not None:
            demo.api.close()
        if exit_at_end:
            import ray

            if ray.is_initialized():  # detach before the head goes, or Ray aborts this process later
                ray.shutdown()
            stack.down(settings)
