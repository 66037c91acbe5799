"""``make demo`` / ``studio demo``: the studio's main loop on the tiny model, through public
interfaces only — HTTP (``/api``, ``/v1`` with the official ``openai`` client) and the library calls
the CLI makes. Walked through by hand in docs/walkthrough.md.

    0  start the stack (Ray + Serve + the tiny model on vLLM), build the tiny model
    1  ingest the digit-reversal data (train/test) and show its stats
    2  evaluate the base model on the test split (exact match ≈ 0)
    3  SFT LoRA job over HTTP, following its status, steps and loss
    4  the adapter is registered and served by name@N without a redeploy
    5  base vs adapter, side by side (live leaderboard; the adapter must reach ≥ 0.9)
    6  promote the adapter through the promotion gate
    7  A/B experiment alias base vs adapter: traffic with the ``openai`` client, feedback on
       /v1/feedback (correct answers +1, wrong ones -1) on training prompts, exported as a preference
       snapshot
    8  DPO from that snapshot, starting from the SFT adapter (``init_adapter``); registered as the
       next version, evaluated, and put to the gate against the champion
    9  leaderboard, gateway usage/cost, where everything is
    10 the self-driving loop (configs/loops/reverse_tiny.yaml): created and triggered over /api/loops,
       simulated users on /v1 and /v1/feedback until the generation ends PROMOTED, ROLLED_BACK or
       REFUSED, its timeline and verdict (``--skip-loop`` leaves it out; ``small`` never runs it)

Each step checks its outcome and raises ``DemoError`` (a ``StudioError``) when it did not happen;
nothing is printed as done that was not done. ``run_demo`` (``studio.cli.demo.run``) returns the numbers it printed (the e2e
test asserts on them).
"""

from studio.cli.demo.profile import PROFILES, DemoError, DemoResult, Profile
from studio.cli.demo.run import run_demo

__all__ = ["PROFILES", "DemoError", "DemoResult", "Profile", "run_demo"]
