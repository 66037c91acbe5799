"""Evaluation: compare models on a dataset snapshot with programmatic scorers, LLM judges and your
own evaluator; a leaderboard with confidence intervals; the promotion gate.

An eval run is a ``jobs`` row of kind ``eval`` (its id is the eval's id) run by
``python -m studio.evals.run --job-id N``; per-datapoint results live in ``eval_outputs`` (one
completion per datapoint × model) and ``eval_scores`` (one per datapoint × model × scorer).
Model calls go through the gateway only (``studio.gateway.Client``)."""
