"""GRPO reward functions built from a recipe's ``grpo.rewards`` list (``RewardSpec``).

Each is a callable in TRL's reward-function shape — ``f(prompts, completions, completion_ids,
**columns) -> list[float | None]`` — with a ``__name__`` that TRL uses in its metrics
(``rewards/<name>/mean``); the recipe's weights become ``GRPOConfig.reward_weights``. Completions
arrive as ``[{"role": "assistant", "content": text}]`` for chat prompts or as plain strings.
The reference answer of a row arrives as the ``reference`` column (see ``grpo.grpo_row``).

- exact_match: stripped completion == stripped reference (1.0 / 0.0; None for a row without one)
- regex: ``re.fullmatch(pattern, completion.strip())``
- json_schema: the completion parses as JSON and validates under the schema
- python: a function by import path, ``package.module:function``: one of this module's
  ``PYTHON_REWARDS`` or one the admin allowed (``STUDIO_REWARD_ALLOWLIST``); checked before import
- judge: an LLM judge through the gateway (``studio.gateway.Client``), score 0-10 → 0.0-1.0
"""

from __future__ import annotations

import asyncio
import importlib
import json
import re
from collections.abc import Callable
from typing import Any

from studio.errors import StudioError
from studio.settings import StudioSettings
from studio.train.spec import RewardSpec

RewardFunc = Callable[..., Any]

DEFAULT_JUDGE_PROMPT = ("You grade an assistant's answer to a request. Reply with a single integer from 0 "
                        "(useless or wrong) to 10 (fully correct and helpful), and nothing else.")


def completion_text(completion: Any) -> str:
    """The text of one completion: TRL passes chat completions as a list of messages."""
    if isinstance(completion, list):
        return "".join(m.get("content") or "" for m in completion if m.get("role") == "assistant")
    return str(completion)


def prompt_text(prompt: Any) -> str:
    if isinstance(prompt, list):
        return "\n".join(f"{m['role']}: {m['content']}" for m in prompt)
    return str(prompt)


class ExactMatch:
    def __init__(self, spec: RewardSpec):
        self.__name__ = spec.name or "exact_match"

    def __call__(self, completions, reference=None, **_) -> list[float | None]:
        refs = reference or [None] * len(completions)
        return [None if ref is None else float(completion_text(c).strip() == ref.strip())
                for c, ref in zip(completions, refs, strict=True)]


class RegexMatch:
    def __init__(self, spec: RewardSpec):
        self.__name__ = spec.name or "regex"
        try:
            self.pattern = re.compile(spec.pattern or "")
        except re.error as e:
            raise StudioError(f"regex reward pattern {spec.pattern!r} does not compile: {e}",
                              "fix grpo.rewards[].pattern (a Python regular expression)") from None

    def __call__(self, completions, **_) -> list[float]:
        return [float(self.pattern.fullmatch(completion_text(c).strip()) is not None) for c in completions]


class JsonSchemaValid:
    def __init__(self, spec: RewardSpec):
        import jsonschema

        self.__name__ = spec.name or "json_schema"
        try:
            cls = jsonschema.validators.validator_for(spec.schema_)
            cls.check_schema(spec.schema_)
        except jsonschema.SchemaError as e:
            raise StudioError(f"json_schema reward: the schema is not a valid JSON schema: {e.message}",
                              "fix grpo.rewards[].schema") from None
        self.validator = cls(spec.schema_)

    def __call__(self, completions, **_) -> list[float]:
        out = []
        for c in completions:
            try:
                doc = json.loads(completion_text(c))
            except ValueError:
                out.append(0.0)
                continue
            out.append(float(self.validator.is_valid(doc)))
        return out


# The python rewards of this module a recipe may name without an allowlist entry.
PYTHON_REWARDS = ("positional_overlap", "char_f1")


def check_reward_allowed(path: str, settings: StudioSettings | None = None) -> None:
    """Refuse (400) a python reward that is neither one of ``PYTHON_REWARDS`` nor allowed by
    ``STUDIO_REWARD_ALLOWLIST`` (``module:function`` or ``module:*``). Runs before any import:
    importing a module runs its code, in the API process at preflight."""
    module_name, _, attr = path.partition(":")
    if module_name == __name__ and attr in PYTHON_REWARDS:
        return
    raw = (settings or StudioSettings()).reward_allowlist or ""
    for entry in (e.strip() for e in raw.split(",")):
        allowed_module, _, allowed_attr = entry.partition(":")
        if entry and allowed_module == module_name and (
                allowed_attr == attr or (allowed_attr == "*" and attr.isidentifier() and not attr.startswith("_"))):
            return
    raise StudioError(
        f"python reward {path!r} is not allowed: a recipe may name {', '.join(f'{__name__}:{f}' for f in PYTHON_REWARDS)} "
        "or a function the admin listed in STUDIO_REWARD_ALLOWLIST",
        "use one of those, or ask an admin to add it to STUDIO_REWARD_ALLOWLIST ('module:function' or "
        "'module:*', comma-separated) and restart the studio")


def import_callable(path: str, settings: StudioSettings | None = None) -> RewardFunc:
    """``package.module:function`` → the function, or a StudioError naming what is wrong."""
    module_name, sep, attr = path.partition(":")
    if not sep or not module_name or not attr:
        raise StudioError(f"python reward callable {path!r} is not an import path",
                          "write it as 'package.module:function'")
    check_reward_allowed(path, settings)
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise StudioError(f"python reward callable {path!r}: module {module_name!r} cannot be imported ({e})",
                          "check the module path and that the module is installed on the Ray workers") from None
    func = module
    for part in attr.split("."):
        func = getattr(func, part, None)
        if func is None:
            raise StudioError(f"python reward callable {path!r}: {module_name!r} has no attribute {attr!r}",
                              f"name a function defined in {module_name}")
    if not callable(func):
        raise StudioError(f"python reward callable {path!r} is a {type(func).__name__}, not a function",
                          "name a function")
    return func


class PythonCallable:
    def __init__(self, spec: RewardSpec):
        self.func = import_callable(spec.callable or "")
        self.__name__ = spec.name or getattr(self.func, "__name__", "python")

    def __call__(self, **kwargs) -> list[float | None]:
        return self.func(**kwargs)


def parse_score(text: str) -> float | None:
    """The judge's first number, 0-10, as 0.0-1.0; None when it gave none (TRL then ignores the row)."""
    match = re.search(r"-?\d+(?:\.\d+)?", text or "")
    if match is None:
        return None
    return min(max(float(match.group()), 0.0), 10.0) / 10.0


class GatewayJudge:
    """An async reward: TRL awaits it alongside the other async rewards. Calls go through the gateway
    (``service="grpo"``, tagged with the job id) so cost, cache and limits apply as to every caller."""

    def __init__(self, spec: RewardSpec, job_id: int | None = None, max_concurrency: int = 8):
        self.__name__ = spec.name or "judge"
        self.model = spec.judge_model
        self.instructions = spec.judge_prompt or DEFAULT_JUDGE_PROMPT
        self.job_id = job_id
        self.max_concurrency = max_concurrency
        self._client = None

    def client(self):
        if self._client is None:
            from studio.gateway import Client

            self._client = Client(service="grpo", job_id=f"job-{self.job_id}" if self.job_id is not None else None,
                                  max_concurrency=self.max_concurrency)
        return self._client

    async def _score(self, prompt: Any, completion: Any, reference: str | None) -> float | None:
        content = f"Request:\n{prompt_text(prompt)}\n\nAnswer:\n{completion_text(completion)}"
        if reference is not None:
            content += f"\n\nReference answer:\n{reference}"
        body = await self.client().achat(self.model, [{"role": "system", "content": self.instructions},
                                                      {"role": "user", "content": content}],
                                         temperature=0, max_tokens=8)
        return parse_score(body["choices"][0]["message"].get("content") or "")

    async def __call__(self, prompts, completions, reference=None, **_) -> list[float | None]:
        refs = reference or [None] * len(completions)
        return list(await asyncio.gather(*(self._score(p, c, r)
                                           for p, c, r in zip(prompts, completions, refs, strict=True))))


_BUILDERS = {"exact_match": ExactMatch, "regex": RegexMatch, "json_schema": JsonSchemaValid,
             "python": PythonCallable}


def build_reward_funcs(specs: list[RewardSpec], job_id: int | None = None) -> tuple[list[RewardFunc], list[float]]:
    """(reward functions, their weights). Raises StudioError for a reward that cannot be built, so a
    bad recipe fails in preflight, before any worker starts."""
    funcs = []
    for spec in specs:
        funcs.append(GatewayJudge(spec, job_id) if spec.type == "judge" else _BUILDERS[spec.type](spec))
    names = [f.__name__ for f in funcs]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise StudioError(f"two GRPO rewards are both named {duplicates[0]!r}",
                          "give each a distinct `name` in grpo.rewards")
    return funcs, [s.weight for s in specs]


def positional_overlap(completions, reference=None, **_) -> list[float | None]:
    """Share of the reference's whitespace-separated tokens that the completion has at the same
    position (partial credit, e.g. for digit reversal: "8 4 0 6" vs "8 4 1 6" → 0.75). A dense signal
    for a policy that cannot yet hit the exact answer: use it as ``python`` reward
    ``studio.train.rewards:positional_overlap``."""
    refs = reference or [None] * len(completions)
    out: list[float | None] = []
    for c, ref in zip(completions, refs, strict=True):
        if ref is None:
            out.append(None)
            continue
        want, got = ref.split(), completion_text(c).split()
        hits = sum(a == b for a, b in zip(want, got, strict=False))
        out.append(hits / max(len(want), len(got), 1))
    return out


def char_f1(completions, reference=None, **_) -> list[float | None]:
    """F1 of the completion's and the reference's characters (as multisets): the densest partial
    credit, non-zero even for a random policy's output, so GRPO groups differ and the policy moves.
    As ``python`` reward: ``studio.train.rewards:char_f1``."""
    from collections import Counter

    refs = reference or [None] * len(completions)
    out: list[float | None] = []
    for c, ref in zip(completions, refs, strict=True):
        if ref is None:
            out.append(None)
            continue
        got, want = Counter(completion_text(c).strip()), Counter(ref.strip())
        common = sum((got & want).values())
        out.append(0.0 if not common else 2 * common / (sum(got.values()) + sum(want.values())))
    return out
