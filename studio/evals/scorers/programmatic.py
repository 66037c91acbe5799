"""Scorers computed from the text alone: exact match, regex, JSON (and JSON Schema), numeric."""

from __future__ import annotations

import json
import re
import string

from studio.evals.scorers.base import Datapoint, ScoreResult
from studio.scorer_specs import ExactMatchScorer, JsonScorer, Normalize, NumericScorer, RegexScorer, register

_PUNCT = str.maketrans("", "", string.punctuation)
_NUMBER = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+(?:\.\d*)?|\d+(?:[.,]\d*)?|\.\d+)(?:[eE][-+]?\d+)?")
_FENCE = re.compile(r"^```(?:json)?\s*\n?(.*?)\n?```$", re.DOTALL)


def normalize(text: str, how: Normalize) -> str:
    if how.lowercase:
        text = text.lower()
    if how.remove_punctuation:
        text = text.translate(_PUNCT)
    if how.collapse_whitespace:
        text = " ".join(text.split())
    if how.strip:
        text = text.strip()
    return text


class ExactMatch:
    def __init__(self, spec: ExactMatchScorer):
        self.spec = spec

    async def score(self, dp: Datapoint, output: str) -> ScoreResult:
        got, want = normalize(output, self.spec.normalize), normalize(dp.reference or "", self.spec.normalize)
        hit = got == want
        return ScoreResult(1.0 if hit else 0.0, "equal" if hit else f"expected {want[:80]!r}")


class Regex:
    def __init__(self, spec: RegexScorer):
        self.spec = spec
        self.pattern = re.compile(spec.pattern, re.IGNORECASE if spec.ignore_case else 0)

    async def score(self, dp: Datapoint, output: str) -> ScoreResult:
        m = self.pattern.fullmatch(output.strip()) if self.spec.full_match else self.pattern.search(output)
        return ScoreResult(1.0 if m else 0.0, f"matched {m.group(0)[:80]!r}" if m else "no match")


class Json:
    def __init__(self, spec: JsonScorer):
        self.spec = spec
        self.validator = None
        if spec.json_schema is not None:
            import jsonschema

            cls = jsonschema.validators.validator_for(spec.json_schema)
            cls.check_schema(spec.json_schema)  # a broken schema is the spec's error, raised up front
            self.validator = cls(spec.json_schema)

    async def score(self, dp: Datapoint, output: str) -> ScoreResult:
        text = output.strip()
        if self.spec.strip_code_fence and (m := _FENCE.match(text)):
            text = m.group(1).strip()
        try:
            value = json.loads(text)
        except ValueError as e:
            return ScoreResult(0.0, f"not JSON: {e}")
        if self.validator is None:
            return ScoreResult(1.0, "valid JSON")
        error = next(iter(self.validator.iter_errors(value)), None)
        if error is not None:
            where = "/".join(str(p) for p in error.absolute_path) or "(root)"
            return ScoreResult(0.0, f"schema: {where}: {error.message[:200]}")
        return ScoreResult(1.0, "valid JSON, matches the schema")


def first_number(text: str) -> float | None:
    m = _NUMBER.search(text)
    if m is None:
        return None
    raw = m.group(0)
    # Thousands separators ("1,000,000", "1,000.5") go; a lone decimal comma ("1,5") is a point.
    thousands = re.fullmatch(r"[-+]?\d{1,3}(?:,\d{3})+(?:\.\d*)?(?:[eE][-+]?\d+)?", raw)
    raw = raw.replace(",", "") if thousands else raw.replace(",", ".")
    try:
        return float(raw)
    except ValueError:
        return None


class Numeric:
    def __init__(self, spec: NumericScorer):
        self.spec = spec

    async def score(self, dp: Datapoint, output: str) -> ScoreResult:
        want = first_number(dp.reference or "")
        if want is None:
            return ScoreResult.unscored(f"the reference {dp.reference!r:.80} holds no number")
        got = first_number(output)
        if got is None:
            return ScoreResult(0.0, "no number in the output")
        ok = abs(got - want) <= max(self.spec.abs_tolerance, self.spec.rel_tolerance * abs(want))
        return ScoreResult(1.0 if ok else 0.0, f"{got:g} vs {want:g}")


register("exact_match", lambda spec, client: ExactMatch(spec))
register("regex", lambda spec, client: Regex(spec))
register("json", lambda spec, client: Json(spec))
register("numeric", lambda spec, client: Numeric(spec))
