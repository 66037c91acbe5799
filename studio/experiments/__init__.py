"""A/B experiments over served models, the completion log, feedback, and preference export.

* ``ab``: experiments (alias → weighted arms, sticky per user) and their per-arm numbers;
* ``completions``: the completion log the Router writes in the background, and feedback on it;
* ``export``: feedback → a ``preference`` dataset snapshot for DPO.
"""

from studio.experiments.ab import (
    ArmSpec,
    ExperimentSpec,
    ExperimentUpdate,
    create_experiment,
    experiment_dict,
    experiment_stats,
    get_experiment,
    list_experiments,
    parse_arm,
    pick_arm,
    stop_experiment,
    update_experiment,
)
from studio.experiments.completions import CompletionRecorder, FeedbackSpec, add_feedback, prompt_text
from studio.experiments.export import export_preferences, preference_rows

__all__ = [
    "ArmSpec", "CompletionRecorder", "ExperimentSpec", "ExperimentUpdate", "FeedbackSpec",
    "add_feedback", "create_experiment", "experiment_dict", "experiment_stats", "export_preferences",
    "get_experiment", "list_experiments", "parse_arm", "pick_arm", "preference_rows",
    "prompt_text", "stop_experiment", "update_experiment",
]
