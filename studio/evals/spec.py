"""``EvalSpec``: one schema for an evaluation, shared by ``configs/eval/*.yaml``, ``studio eval run``
and ``POST /api/evals``. Its scorers are the tagged union of ``studio.scorer_specs`` (``ScorerSpec``);
each has a ``name`` (default: its type) that keys its results, so two scorers of one type need two
names. ``lm_eval`` scorers read their tasks' own documents, not dataset rows: an eval of them alone
needs no dataset, and they are not mixed with the other scorers in one eval."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from studio.jobs.results import JobResult
from studio.recipes import Spec
from studio.scorer_specs import JudgeScorer, ScorerSpec, is_lm_eval, scorer_name


class GenerationParams(Spec):
    """Sampling parameters sent with every completion (same for all models, so the run is fair)."""

    max_tokens: int = Field(default=64, gt=0, description="Longest answer, in tokens.")
    temperature: float = Field(default=0.0, ge=0, description="0 is greedy (and cacheable by the gateway).")
    top_p: float | None = Field(default=None, gt=0, le=1, description="Nucleus sampling; unset: the engine's default.")
    seed: int | None = Field(default=None, description="Sampling seed (makes sampled runs cacheable).")
    stop: list[str] | None = Field(default=None, description="Stop sequences.")

    def params(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True)


class EvalSpec(Spec):
    """An evaluation: models × a dataset snapshot × scorers."""

    name: str = Field(default="eval", min_length=1, max_length=128, description="A label for listings.")
    dataset: str | None = Field(default=None, min_length=1, description="Dataset: name (newest version), name@N "
                                "or a snapshot id. Pinned to name@N when the run is queued. Optional when every "
                                "scorer is lm_eval (their tasks carry their documents; a dataset given then is "
                                "only recorded, e.g. a promotion gate's golden dataset).")
    split: Literal["all", "train", "validation"] = Field(default="all", description="Which rows of the snapshot.")
    validation_ratio: float = Field(default=0.0, ge=0, lt=1, description="Split ratio (as in training), "
                                    "for split train/validation.")
    seed: int = Field(default=0, description="Split seed (as in training).")
    limit: int | None = Field(default=None, gt=0, description="Evaluate only the first N rows (lm_eval: the "
                              "first N documents of each task).")
    models: list[str] = Field(min_length=1, description="Model names the gateway serves: bases, registry "
                              "names, name@N, experiment aliases, external groups.")
    system_prompt: str | None = Field(default=None, description="Prepended as a system message to every prompt "
                                      "(lm_eval: its system_instruction).")
    generation: GenerationParams = Field(default_factory=GenerationParams, description="Sampling parameters "
                                         "(lm_eval tasks use their own generation_kwargs).")
    scorers: list[ScorerSpec] = Field(min_length=1, description="How each answer is scored.")
    concurrency: int = Field(default=16, gt=0, le=1024, description="Completions in flight at once for this "
                             "run (all models together); the engine batches them.")
    max_retries: int = Field(default=1, ge=0, description="Job retries; a retry resumes, skipping stored datapoints.")

    @model_validator(mode="after")
    def _unique(self) -> EvalSpec:
        if len(set(self.models)) != len(self.models):
            raise ValueError("models lists a name twice; list each model once")
        harness = [scorer_name(s) for s in self.scorers if is_lm_eval(s)]
        if harness and len(harness) != len(self.scorers):
            other = next(scorer_name(s) for s in self.scorers if not is_lm_eval(s))
            raise ValueError(f"lm_eval scorer {harness[0]!r} reads its task's own documents and scorer {other!r} "
                             "the dataset's rows: queue them as two evals")
        if not harness and self.dataset is None:
            raise ValueError("dataset is required: the scorers score the dataset's rows (only an eval of "
                             "lm_eval scorers alone needs none)")
        names = [scorer_name(s) for s in self.scorers]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"two scorers are both named {sorted(dup)[0]!r}; give each a distinct `name`")
        for s in self.scorers:
            if isinstance(s, JudgeScorer) and s.mode == "pairwise":
                if len(self.models) < 2:
                    raise ValueError(f"pairwise judge {scorer_name(s)!r} needs at least two models")
                if s.baseline is not None and s.baseline not in self.models:
                    raise ValueError(f"pairwise judge baseline {s.baseline!r} is not one of models "
                                     f"{self.models}")
        return self


class EvalResult(JobResult):
    """An eval's ``result``: the snapshot it was pinned to, its size and, once done, its numbers."""

    snapshot_id: str | None = Field(default=None, description="The dataset snapshot the run reads.")
    rows: int | None = Field(default=None, description="Rows evaluated (after split and limit).")
    done: int = Field(default=0, description="Answers stored when the run was queued (0).")
    total: int | None = Field(default=None, description="Answers the run gives: rows × models.")
    leaderboard: dict[str, Any] | None = Field(default=None, description="Written when it succeeds.")
    lm_eval: list[dict[str, Any]] | None = Field(
        default=None, description="lm_eval scorers: one entry per task × model as each ends (scorer, task, model, "
        "docs, seconds, and lm-eval's own aggregates per task: results[task][metric,filter], with its stderr).")


def runs_lm_eval(spec: EvalSpec) -> bool:
    """The eval runs lm-evaluation-harness tasks (its scorers are all lm_eval), not dataset rows."""
    return is_lm_eval(spec.scorers[0])


def stored_spec(job: Any) -> EvalSpec:
    """An eval row's spec, as validated when it was queued."""
    return EvalSpec.model_validate(job.spec or {})
