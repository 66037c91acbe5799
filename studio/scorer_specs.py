"""The eval scorers' schemas: a tagged union on ``type`` (``ScorerSpec``) read by an
``EvalSpec`` (``studio.evals.spec``) and by a training recipe's ``after_training.scorer``
(``studio.train.spec``). Core, so both services read it without importing each other; each has a
``name`` (default: its type) that keys its results, so two scorers of one type need two names.

``build()`` gives the scorer a spec describes: the implementations live in ``studio.evals.scorers``
and register themselves here (``register``) when that package is imported, so this module imports
no scorer."""

from __future__ import annotations

import re
from typing import Annotated, Any, Callable, Literal

from pydantic import Field, field_validator

from studio.egress import guard_url
from studio.errors import StudioError
from studio.recipes import Spec
from studio.settings import StudioSettings

# Plain http scorer headers are stored with the job: names that usually carry a secret are refused.
SECRET_HEADER = re.compile(r"auth|cookie|key|token|secret|passw|signature|session|credential", re.I)
ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
ENV_PREFIX = "EVAL_"  # headers_env may read only these: an eval job's environment holds other secrets


# type → (spec, gateway client) → scorer, filled by the scorer modules of ``studio.evals.scorers``.
_BUILDERS: dict[str, Callable[[Any, Any], Any]] = {}


def register(type_: str, build: Callable[[Any, Any], Any]) -> None:
    """Make ``build(spec, client)`` the scorer of specs of ``type_`` (called by each scorer module)."""
    _BUILDERS[type_] = build


class ScorerBase(Spec):
    """What every scorer spec can do: build its scorer."""

    def build(self, client: Any = None) -> Any:
        """The scorer this spec describes (judges call models through ``client``, a gateway Client)."""
        build = _BUILDERS.get(self.type)
        if build is None:
            raise RuntimeError(f"no scorer is registered for type {self.type!r}: import studio.evals.scorers "
                               "(its modules register the scorers) before building one")
        return build(self, client)


class Normalize(Spec):
    """How outputs and references are normalised before an exact comparison."""

    strip: bool = Field(default=True, description="Trim leading and trailing whitespace.")
    lowercase: bool = Field(default=False, description="Compare case-insensitively.")
    collapse_whitespace: bool = Field(default=True, description="Runs of whitespace count as one space.")
    remove_punctuation: bool = Field(default=False, description="Drop ASCII punctuation before comparing.")


class ExactMatchScorer(ScorerBase):
    type: Literal["exact_match"] = Field(description="1 when the normalised output equals the reference, else 0.")
    name: str | None = Field(default=None, description="Key of this scorer's results; default: its type.")
    normalize: Normalize = Field(default_factory=Normalize, description="Normalisation of both sides.")



class RegexScorer(ScorerBase):
    type: Literal["regex"] = Field(description="1 when the pattern is found in the output (re.search).")
    name: str | None = Field(default=None, description="Key of this scorer's results; default: its type.")
    pattern: str = Field(min_length=1, description="A Python regular expression.")
    full_match: bool = Field(default=False, description="Require the whole stripped output to match.")
    ignore_case: bool = Field(default=False, description="Match case-insensitively.")



class JsonScorer(ScorerBase):
    type: Literal["json"] = Field(description="1 when the output parses as JSON (and validates, with a schema).")
    name: str | None = Field(default=None, description="Key of this scorer's results; default: its type.")
    json_schema: dict[str, Any] | None = Field(
        default=None, alias="schema", description="A JSON Schema the parsed output must satisfy (jsonschema).")
    strip_code_fence: bool = Field(default=True, description="Accept output wrapped in a ```json fence.")



class NumericScorer(ScorerBase):
    type: Literal["numeric"] = Field(description="1 when the first number in the output is within tolerance of the reference.")
    name: str | None = Field(default=None, description="Key of this scorer's results; default: its type.")
    abs_tolerance: float = Field(default=1e-6, ge=0, description="Largest absolute difference that still counts.")
    rel_tolerance: float = Field(default=0.0, ge=0, description="Largest difference relative to |reference|.")



class EmbeddingScorer(ScorerBase):
    type: Literal["embedding"] = Field(description="Cosine similarity of output and reference embeddings (0..1).")
    name: str | None = Field(default=None, description="Key of this scorer's results; default: its type.")
    model: str = Field(
        default="sentence-transformers/all-MiniLM-L6-v2",
        description="A local sentence-transformers model (path or cached id); the scorer is skipped, with "
        "the reason, when sentence-transformers or the model is not installed.")



class JudgeScorer(ScorerBase):
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



class HttpScorer(ScorerBase):
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


class LmEvalScorer(ScorerBase):
    type: Literal["lm_eval"] = Field(description="An lm-evaluation-harness task run against each model through "
                                     "the studio's own gateway (studio.evals.harness); one result per document.")
    name: str | None = Field(default=None, description="Key of this scorer's results; default: the task's name.")
    task: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$", max_length=200,
                      description="An lm-eval task, group or tag name (`lm_eval ls tasks`), or a task shipped in "
                      "configs/eval/tasks/ (e.g. reverse_tiny); a name, never a path.")
    metric: str | None = Field(default=None, description="The per-document metric stored as the score; default: "
                               "the task's first metric (e.g. exact_match, acc).")
    filter: str | None = Field(default=None, description="Which of the task's filters' results is scored; default: "
                               "its first (`none` when the task has no filter).")
    model_type: Literal["local-chat-completions", "local-completions"] = Field(
        default="local-chat-completions",
        description="lm-eval's model type: chat messages to /chat/completions (the chat template is the served "
        "model's), or raw prompts to /completions. Both generate only: loglikelihood and multiple-choice tasks "
        "need the prompt's token log-probabilities, which the gateway does not return.")
    num_fewshot: int | None = Field(default=None, ge=0, le=64, description="Few-shot examples per prompt; "
                                    "default: the task's own.")


ScorerSpec = Annotated[ExactMatchScorer | RegexScorer | JsonScorer | NumericScorer | EmbeddingScorer
                       | JudgeScorer | HttpScorer | LmEvalScorer, Field(discriminator="type")]


def scorer_name(s: Any) -> str:
    if s.type == "lm_eval":
        return s.name or s.task
    return s.name or s.type


def is_lm_eval(s: Any) -> bool:
    """A scorer that reads its own documents (an lm-eval task), not the eval's dataset rows."""
    return s.type == "lm_eval"


def needs_reference(s: Any) -> bool:
    return s.type in ("exact_match", "numeric", "embedding")


def check_http_scorer(spec: HttpScorer, settings: StudioSettings | None = None) -> None:
    """Submit-time check (a 400 before any job exists): the URL passes the egress guard."""
    guard_url(spec.url, settings, what=f"http scorer {spec.name or spec.type!r}: evaluator URL")
