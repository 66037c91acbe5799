"""``EvalSpec``: one schema for an evaluation, shared by ``configs/eval/*.yaml``, ``studio eval run``
and ``POST /api/evals``. Scorers are a tagged union on ``type``; each has a ``name`` (default: its
type) that keys its results, so two scorers of one type need two names."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from studio.errors import StudioError
from studio.jobs.results import JobResult
from studio.recipes import Spec

# Plain http scorer headers are stored with the job: names that usually carry a secret are refused.
SECRET_HEADER = re.compile(r"auth|cookie|key|token|secret|passw|signature|session|credential", re.I)
ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
ENV_PREFIX = "EVAL_"  # headers_env may read only these: an eval job's environment holds other secrets


class Normalize(Spec):
    """How outputs and references are normalised before an exact comparison."""

    strip: bool = Field(default=True, description="Trim leading and trailing whitespace.")
    lowercase: bool = Field(default=False, description="Compare case-insensitively.")
    collapse_whitespace: bool = Field(default=True, description="Runs of whitespace count as one space.")
    remove_punctuation: bool = Field(default=False, description="Drop ASCII punctuation before comparing.")


class ExactMatchScorer(Spec):
    type: Literal["exact_match"] = Field(description="1 when the normalised output equals the reference, else 0.")
    name: str | None = Field(default=None, description="Key of this scorer's results; default: its type.")
    normalize: Normalize = Field(default_factory=Normalize, description="Normalisation of both sides.")

    def build(self, client: Any = None) -> Any:
        """The scorer this spec describes."""
        from studio.evals.scorers.programmatic import ExactMatch

        return ExactMatch(self)


class RegexScorer(Spec):
    type: Literal["regex"] = Field(description="1 when the pattern is found in the output (re.search).")
    name: str | None = Field(default=None, description="Key of this scorer's results; default: its type.")
    pattern: str = Field(min_length=1, description="A Python regular expression.")
    full_match: bool = Field(default=False, description="Require the whole stripped output to match.")
    ignore_case: bool = Field(default=False, description="Match case-insensitively.")

    def build(self, client: Any = None) -> Any:
        """The scorer this spec describes."""
        from studio.evals.scorers.programmatic import Regex

        return Regex(self)


class JsonScorer(Spec):
    type: Literal["json"] = Field(description="1 when the output parses as JSON (and validates, with a schema).")
    name: str | None = Field(default=None, description="Key of this scorer's results; default: its type.")
    json_schema: dict[str, Any] | None = Field(
        default=None, alias="schema", description="A JSON Schema the parsed output must satisfy (jsonschema).")
    strip_code_fence: bool = Field(default=True, description="Accept output wrapped in a ```json fence.")

    def build(self, client: Any = None) -> Any:
        """The scorer this spec describes."""
        from studio.evals.scorers.programmatic import Json

        return Json(self)


class NumericScorer(Spec):
    type: Literal["numeric"] = Field(description="1 when the first number in the output is within tolerance of the reference.")
    name: str | None = Field(default=None, description="Key of this scorer's results; default: its type.")
    abs_tolerance: float = Field(default=1e-6, ge=0, description="Largest absolute difference that still counts.")
    rel_tolerance: float = Field(default=0.0, ge=0, description="Largest difference relative to |reference|.")

    def build(self, client: Any = None) -> Any:
        """The scorer this spec describes."""
        from studio.evals.scorers.programmatic import Numeric

        return Numeric(self)


class EmbeddingScorer(Spec):
    type: Literal["embedding"] = Field(description="Cosine similarity of output and reference embeddings (0..1).")
    name: str | None = Field(default=None, description="Key of this scorer's results; default: its type.")
    model: str = Field(
        default="sentence-transformers/all-MiniLM-L6-v2",
        description="A local sentence-transformers model (path or cached id); the scorer is skipped, with "
        "the reason, when sentence-transformers or the model is not installed.")

    def build(self, client: Any = None) -> Any:
        """The scorer this spec describes."""
        from studio.evals.scorers.embedding import Embedding

        return Embedding(self)


class JudgeScorer(Spec):
    type: Literal["judge"] = Field(description="An LLM judge called through the gateway.")
    name: str | None = Field(default=None, description="Key of this scorer's results; default: its type.")
    model: str = Field(min_length=1, description="The judge: any model name the gateway serves.")
    mode: Literal["pointwise", "pairwise"] = Field(
        default="pointwise",
        description="pointwise: a 1-10 score per output by the rubric; pairwise: each model against "
        "`baseline`, asked in both orders to cancel position bias (win 1, tie 0.5, loss 0).")
    rubric: str = Field(default="Is the answer correct, complete and concise?",
                        description="What the judge grades against.")
    baseline: str | None = Field(default=None, description="pairwise: the model others are compared with; "
                                 "default: the spec's first model.")
    max_tokens: int = Field(default=64, gt=0, description="Length of the judge's reply.")

    def build(self, client: Any = None) -> Any:
        """The scorer this spec describes (judges call models through the gateway client)."""
        from studio.evals.scorers.judge import Judge

        return Judge(self, client)


class HttpScorer(Spec):
    type: Literal["http"] = Field(description="Your own evaluator: POST {input, output, reference} → {score, reason}.")
    name: str | None = Field(default=None, description="Key of this scorer's results; default: its type.")
    url: str = Field(pattern=r"^https?://", description="The evaluator's URL.")
    timeout_s: float = Field(default=10.0, gt=0, description="Per-call timeout.")
    retries: int = Field(default=2, ge=0, description="Retries after a timeout, a connection error or a 5xx; "
                         "then the datapoint is marked unscored with the error.")
    headers: dict[str, str] = Field(default_factory=dict, description="Extra request headers that are no "
                                    "secret (shown as *** in job details); a secret-looking one "
                                    "(Authorization, Cookie, *key*, *token*, *secret*…) is refused: use headers_env.")
    headers_env: dict[str, str] = Field(
        default_factory=dict,
        description="Secret request headers as templates over environment variables of the eval job, "
        "e.g. {\"Authorization\": \"Bearer ${EVAL_TOKEN}\"}: the value is filled in when the evaluator is "
        "called, so the secret is never stored in the spec. Only variables named EVAL_* may be used.")

    @field_validator("headers")
    @classmethod
    def _no_secret_in_plain_headers(cls, headers: dict[str, str]) -> dict[str, str]:
        for name in headers:
            if SECRET_HEADER.search(name):
                # StudioError, not ValueError: a 400 that names the fix, not a 422 echoing the input.
                raise StudioError(
                    f"http scorer header {name!r} looks like a secret, and plain headers are stored "
                    "with the job and shown to every key",
                    f'move it to headers_env, e.g. headers_env: {{"{name}": "Bearer ${{EVAL_TOKEN}}"}}, '
                    "and set EVAL_TOKEN where the eval jobs run")
        return headers

    @field_validator("headers_env")
    @classmethod
    def _env_templates(cls, headers_env: dict[str, str]) -> dict[str, str]:
        for name, template in headers_env.items():
            names = ENV_REF.findall(template)
            if not names or "$" in ENV_REF.sub("", template):
                raise ValueError(f"headers_env[{name!r}] must reference variables as ${{NAME}} "
                                 "(e.g. 'Bearer ${EVAL_TOKEN}')")
            wrong = [n for n in names if not n.startswith(ENV_PREFIX)]
            if wrong:
                raise ValueError(f"headers_env[{name!r}] reads ${{{wrong[0]}}}: only variables named "
                                 f"{ENV_PREFIX}* may be sent to an evaluator (the job's environment holds "
                                 "the studio's own secrets too)")
        return headers_env

    def build(self, client: Any = None) -> Any:
        """The scorer this spec describes."""
        from studio.evals.scorers.http import HttpEvaluator

        return HttpEvaluator(self)


ScorerSpec = Annotated[ExactMatchScorer | RegexScorer | JsonScorer | NumericScorer | EmbeddingScorer
                       | JudgeScorer | HttpScorer, Field(discriminator="type")]


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
    dataset: str = Field(min_length=1, description="Dataset: name (newest version), name@N or a snapshot id. "
                         "Pinned to name@N when the run is queued.")
    split: Literal["all", "train", "validation"] = Field(default="all", description="Which rows of the snapshot.")
    validation_ratio: float = Field(default=0.0, ge=0, lt=1, description="Split ratio (as in training), "
                                    "for split train/validation.")
    seed: int = Field(default=0, description="Split seed (as in training).")
    limit: int | None = Field(default=None, gt=0, description="Evaluate only the first N rows.")
    models: list[str] = Field(min_length=1, description="Model names the gateway serves: bases, registry "
                              "names, name@N, experiment aliases, external groups.")
    system_prompt: str | None = Field(default=None, description="Prepended as a system message to every prompt.")
    generation: GenerationParams = Field(default_factory=GenerationParams, description="Sampling parameters.")
    scorers: list[ScorerSpec] = Field(min_length=1, description="How each answer is scored.")
    concurrency: int = Field(default=16, gt=0, le=1024, description="Completions in flight at once for this "
                             "run (all models together); the engine batches them.")
    max_retries: int = Field(default=1, ge=0, description="Job retries; a retry resumes, skipping stored datapoints.")

    @model_validator(mode="after")
    def _unique(self) -> EvalSpec:
        if len(set(self.models)) != len(self.models):
            raise ValueError("models lists a name twice; list each model once")
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


def scorer_name(s: Any) -> str:
    return s.name or s.type


def needs_reference(s: Any) -> bool:
    return s.type in ("exact_match", "numeric", "embedding")


class AfterTrainingSpec(Spec):
    """A training recipe's ``after_training`` section: once the job SUCCEEDED, the scheduler
    evaluates the new version against its name's champion on the golden dataset (auto-eval) and,
    with ``promote``, promotes it through the promotion gate (auto-promotion)."""

    promote: bool = Field(default=False, description="Promote the new version to champion when it beats the "
                          "champion by the gate's margin (a refusal is recorded like a manual one). false: "
                          "only evaluate it against the champion.")
    dataset: str | None = Field(default=None, description="Golden dataset (name, name@N or snapshot id); default: "
                                "the dataset of the name's gate (`studio models gate NAME`). Neither: nothing "
                                "runs, and the job's result says why.")
    scorer: ScorerSpec | None = Field(default=None, description="The deciding scorer (an EvalSpec scorer, "
                                          "e.g. {type: exact_match}); default: the gate's, else exact_match.")
    margin: float | None = Field(default=None, ge=0, description="Required lead over the champion; default: the "
                                 "gate's, else 0.")
    limit: int | None = Field(default=None, gt=0, description="Evaluate only the first N rows; default: the gate's.")
    max_tokens: int | None = Field(default=None, gt=0, description="Longest answer in the eval; default: the "
                                   "gate's, else 64.")


class EvalResult(JobResult):
    """An eval's ``result``: the snapshot it was pinned to, its size and, once done, its numbers."""

    snapshot_id: str | None = Field(default=None, description="The dataset snapshot the run reads.")
    rows: int | None = Field(default=None, description="Rows evaluated (after split and limit).")
    done: int = Field(default=0, description="Answers stored when the run was queued (0).")
    total: int | None = Field(default=None, description="Answers the run gives: rows × models.")
    leaderboard: dict[str, Any] | None = Field(default=None, description="Written when it succeeds.")


def stored_spec(job: Any) -> EvalSpec:
    """An eval row's spec, as validated when it was queued."""
    return EvalSpec.model_validate(job.spec or {})
