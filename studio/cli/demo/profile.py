"""The demo's names, sizes (``full``: ``make demo``; ``small``: the e2e test's) and result."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from studio import stack
from studio.errors import StudioError

CONFIGS = stack.DEFAULT_SERVE_CONFIG.parents[1]
TINY_SERVE_CONFIG = CONFIGS / "serve" / "studio.yaml"
SFT_RECIPE = CONFIGS / "train" / "sft_reverse_tiny.yaml"
DPO_RECIPE = CONFIGS / "train" / "dpo_reverse_tiny.yaml"
NAME = "reverse-tiny"  # the registry name the SFT (and then the DPO) versions are registered under
ALIAS = "reverse-ab"  # the A/B experiment's alias
FEEDBACK_DATASET = "reverse-feedback"


@dataclass(frozen=True)
class Profile:
    """How big each step is. ``full`` is ``make demo``; ``small`` is the e2e test's (same flow)."""

    n_train: int = 2000
    n_test: int = 200
    eval_limit: int = 100  # test rows each eval scores
    sft_overrides: tuple[str, ...] = ()
    # The recipe's in-job held-out eval (``eval_after``) after SFT. ``full`` drops it (step 5 scores
    # through the eval service); ``small`` keeps it, so the e2e test also checks the job's own
    # result and MLflow record of it (tests/e2e/test_demo.py).
    sft_eval_after: bool = False
    ab_prompts: int = 24  # distinct prompts sent through the experiment alias ...
    ab_repeats: int = 3  # ... each this many times greedily (both arms answer most prompts) ...
    ab_sampled: int = 2  # ... and this many times sampled at temperature 1
    dpo_overrides: tuple[str, ...] = ("hyper.max_steps=8", "hyper.batch_size=8", "hyper.logging_steps=2",
                                      "hyper.learning_rate=0.0002")
    min_adapter_em: float = 0.9
    max_base_em: float = 0.1
    # Step 10: one generation of the shipped loop (configs/loops/reverse_tiny.yaml) with simulated
    # users. ``small`` skips it: tests/loops/test_loop_e2e.py runs the same functions on the state the
    # e2e demo leaves (twice, with a `studio down` / `studio up` in the middle).
    loop_step: bool = True
    loop_rate: float = 0.5  # share of the simulated users' answers that are rated


PROFILES = {
    "full": Profile(),
    "small": Profile(n_test=60, eval_limit=40, ab_prompts=12, sft_eval_after=True, loop_step=False,
                     dpo_overrides=("hyper.max_steps=4", "hyper.batch_size=8", "hyper.logging_steps=2",
                                    "hyper.learning_rate=0.0002")),
}


class DemoError(StudioError):
    """A step's outcome was not what the demo needs: it stops here."""


@dataclass
class DemoResult:
    base_em: float | None = None
    sft_version: str | None = None
    sft_em: float | None = None
    promotion: dict[str, Any] = field(default_factory=dict)
    experiment: dict[str, Any] = field(default_factory=dict)
    feedback: dict[str, int] = field(default_factory=dict)
    preference_dataset: dict[str, Any] = field(default_factory=dict)
    dpo_version: str | None = None
    dpo_em: float | None = None
    dpo_gate: dict[str, Any] = field(default_factory=dict)
    leaderboard: dict[str, Any] = field(default_factory=dict)
    usage: list[dict[str, Any]] = field(default_factory=list)
    loop: dict[str, Any] = field(default_factory=dict)  # step 10: the loop generation's verdict and timeline
    step_seconds: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
