"""LoopSpec: the recipe of a self-driving improvement loop (``configs/loops/<name>.yaml``), one schema
for YAML, CLI and HTTP like every recipe (``studio.recipes``). Fields: docs/loops.md, "The recipe"."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, field_serializer, field_validator, model_validator

from studio.errors import StudioError
from studio.loops.stats import DecisionRule, ShadowRule
from studio.recipes import Spec, load_recipe
from studio.scorer_specs import ScorerSpec, scorer_name

NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
TRAIN_METHODS = ("dpo", "sft")  # preference pairs (DPO) and thumbs-up answers (SFT) are what feedback gives


class TriggerSpec(Spec):
    """What starts a generation; any one that fires does (a person can always: ``manual``)."""

    min_new_rated: int | None = Field(
        default=200, ge=1, description="New rated completions of the served name since the last generation.")
    min_new_pairs: int | None = Field(
        default=None, ge=1, description="New preference pairs since the last generation.")
    every_s: float | None = Field(
        default=None, gt=0, description="A schedule: start one every this many seconds (still subject to min_data_rated).")
    min_data_rated: int = Field(
        default=50, ge=1, description="The minimum-data check of a scheduled or drift trigger: new rated completions needed.")
    drift_margin: float | None = Field(
        default=None, gt=0, lt=1,
        description="Start when the champion's thumbs-up rate falls this far below its rate at promotion.")
    manual: bool = Field(default=True, description="Whether `studio loop run` may start one by hand.")

    @model_validator(mode="after")
    def _something_fires(self) -> TriggerSpec:
        if not (self.min_new_rated or self.min_new_pairs or self.every_s or self.drift_margin or self.manual):
            raise ValueError("no trigger can fire: set min_new_rated, min_new_pairs, every_s, drift_margin "
                             "or manual: true")
        return self


class TrainRef(Spec):
    """The training recipe each generation runs, from the champion adapter (its ``init_adapter``)."""

    recipe: str = Field(description="Path of a training recipe (configs/train/*.yaml) with method dpo or sft.")
    overrides: list[str] = Field(default_factory=list, description="key.sub=value overrides applied on top of it.")
    replay_share: float = Field(
        default=0.2, ge=0.0, lt=1.0, description="Share of the earlier training data mixed back in, against forgetting.")
    max_retries: int = Field(default=2, ge=0, description="Retries of a generation's failed step (the training job, "
                             "the snapshot, the gate's eval, a promotion or rollback), each after a doubling backoff.")


class MustPassSpec(Spec):
    """Items the candidate must each get right, whatever its mean: the regression cases a team never
    wants to lose. Scored by the gate's scorer, the candidate alone, every row of the dataset."""

    dataset: str = Field(min_length=1, description="A dataset (name, name@N or snapshot id) of the must-pass "
                         "items; like the gate's, never trained on.")
    min_score: float = Field(default=1.0, ge=0, description="Each item's score by the gate's scorer must be at "
                             "least this (1.0: right, for a 0/1 scorer such as exact_match).")


class GuardSpec(Spec):
    """A non-inferiority check on the gate's own items: by ``scorer`` the candidate's mean may fall
    at most ``margin`` below the champion's (a format check, a safety judge)."""

    scorer: ScorerSpec = Field(description="An eval scorer scored on the gate's items beside the gate's scorer, "
                               "e.g. {type: regex, pattern: ..., full_match: true} or {type: json}.")
    margin: float = Field(default=0.0, description="How far the candidate's mean may fall below the champion's, "
                          "in [0, 1) in the scorer's units (a share for a 0/1 scorer); 0: not worse at all.")
    name: str | None = Field(default=None, max_length=128, description="A label for the verdict; default: the "
                             "scorer's name.")

    @field_validator("scorer")
    @classmethod
    def _same_items_and_both_arms(cls, s):
        if s.type == "lm_eval":
            raise ValueError("an lm_eval scorer reads its task's own documents, not the gate's items: a guard "
                             "compares both models on the gate's items; use a scorer of the dataset's rows")
        if s.type == "judge" and s.mode == "pairwise":
            raise ValueError("a pairwise judge scores the candidate against the champion, not each on its "
                             "own: a guard compares two means; use mode: pointwise")
        return s

    @field_validator("margin")
    @classmethod
    def _margin_in_unit_interval(cls, v: float) -> float:
        if not 0.0 <= v < 1.0:  # NaN too
            raise ValueError(f"a guard's margin must lie in [0, 1), got {v:g}: it is how far the candidate's mean "
                             "may fall below the champion's, e.g. 0 (not worse) or 0.02 (at most 2 points worse)")
        return v

    @field_serializer("scorer")
    def _as_written(self, s):
        # by alias: a json scorer's `schema` must read back as it was written (the frozen recipe)
        return s.model_dump(mode="json", by_alias=True, exclude_none=True)

    @property
    def label(self) -> str:
        return self.name or scorer_name(self.scorer)


class GateSpec(Spec):
    """The promotion gate, candidate vs champion on the same items. Unset fields come from the served
    name's own gate (``studio models gate``); a loop on a name with no gate must set ``dataset``.
    ``must_pass`` and ``guards`` are the loop's own checks on top of the gate's rule."""

    dataset: str | None = Field(default=None, description="Evaluation dataset (never trained on).")
    scorer: dict[str, Any] | None = Field(default=None, description="An eval scorer, e.g. {type: exact_match}.")
    margin: float | None = Field(default=None, ge=0, le=1,
                                 description="The candidate's mean must beat the champion's by this (0 to 1).")
    limit: int | None = Field(default=None, ge=1, description="Score at most this many items.")
    confidence: float = Field(default=0.95, gt=0, lt=1, description="Level of the paired bootstrap interval on the difference.")
    must_pass: MustPassSpec | None = Field(default=None, description="Items the candidate must each pass.")
    guards: list[GuardSpec] = Field(default_factory=list, description="Non-inferiority checks (format, safety) "
                                    "on the gate's items, candidate vs champion.")

    @model_validator(mode="after")
    def _distinct_guards(self) -> GateSpec:
        labels = [g.label for g in self.guards]
        keys = [scorer_name(g.scorer) for g in self.guards]
        for what, seen in (("label", labels), ("scorer name", keys)):
            dup = sorted({x for x in seen if seen.count(x) > 1})
            if dup:
                raise ValueError(f"two guards have the {what} {dup[0]!r}: give each guard's scorer a distinct "
                                 "`name` (it keys the scores)")
        if self.scorer is not None:
            clash = check_guard_scorers(self.scorer, self.guards)
            if clash:
                raise ValueError(clash)
        return self


def check_guard_scorers(gate_scorer: dict[str, Any], guards: list[GuardSpec]) -> str | None:
    """Why the guards cannot be scored beside the gate's scorer in one eval, or None: one scores
    under the gate scorer's name but is another scorer (the eval keys results by name)."""
    from pydantic import TypeAdapter, ValidationError

    try:
        gate = TypeAdapter(ScorerSpec).validate_python(gate_scorer)
    except ValidationError:
        return None  # the gate's scorer is refused on its own, with its fields named (``effective_gate``)
    for g in guards:
        if scorer_name(g.scorer) == scorer_name(gate) and g.scorer != gate:
            return (f"guard {g.label!r} scores under the name {scorer_name(gate)!r}, the gate scorer's, but is "
                    f"another scorer: give the guard's scorer a `name`, e.g. name: {g.label}_guard")
    return None


class ShadowSpec(Spec):
    """Mirror a share of live prompts to the candidate (answers discarded; requests with tools
    skipped) and judge the pairs; ``share: 0`` skips the shadow phase."""

    share: float = Field(default=0.1, ge=0.0, lt=1.0, description="Share of live prompts mirrored to the candidate.")
    judge: str | None = Field(default=None, description="Gateway model that judges each pair (required when share > 0).")
    max_duration_s: float = Field(default=3_600.0, gt=0, description="Give up (keep the champion) after this long.")
    test: ShadowRule = Field(default_factory=ShadowRule, description="The sequential sign test.")

    @model_validator(mode="after")
    def _judge_when_shadowing(self) -> ShadowSpec:
        if self.share > 0 and not self.judge:
            raise ValueError("shadow.share > 0 needs shadow.judge, the gateway model that compares the pairs "
                             "(or set share: 0 to skip the shadow phase)")
        return self


class CanarySpec(Spec):
    """The split of the served name between champion and candidate (sticky per ``user``)."""

    steps: list[float] = Field(
        default_factory=lambda: [5.0, 10.0, 25.0, 50.0],
        description="The candidate's share in percent at each step: strictly increasing, each in (0, 100).")
    min_hold_s: float = Field(default=600.0, ge=0, description="Each step is held at least this long.")
    min_rated_per_arm: int = Field(default=30, ge=1, description="Each step needs this many rated completions per arm.")
    look_every_s: float | None = Field(
        default=None, gt=0, description="A look (stored, decided on) at most this often; unset: the runner's "
        "default (60 s). Any rate is valid: the confidence sequence holds at every look.")

    @field_validator("steps")
    @classmethod
    def _increasing(cls, steps: list[float]) -> list[float]:
        fix = "write them as percents that strictly increase, each between 0 and 100, e.g. [5, 10, 25, 50]"
        if not steps:
            raise ValueError(f"canary steps are empty: {fix}")
        bad = [s for s in steps if not 0.0 < s < 100.0]
        if bad:
            raise ValueError(f"canary step {bad[0]:g} is outside (0, 100): {fix}")
        for prev, nxt in zip(steps, steps[1:]):
            if nxt <= prev:
                raise ValueError(f"canary steps must strictly increase, but {nxt:g} follows {prev:g}: {fix}")
        return steps


class LoopSpec(Spec):
    """A loop: which served name it improves, when, with which training, and how it decides."""

    name: str = Field(pattern=NAME, description="The loop's name (unique).")
    served_name: str = Field(pattern=NAME, description="The registry name it improves; its champion must be live.")
    trigger: TriggerSpec = Field(default_factory=TriggerSpec)
    train: TrainRef
    gate: GateSpec = Field(default_factory=GateSpec)
    shadow: ShadowSpec = Field(default_factory=ShadowSpec)
    canary: CanarySpec = Field(default_factory=CanarySpec)
    decision: DecisionRule = Field(default_factory=DecisionRule, description="The canary's decision rule.")
    cooldown_s: float = Field(default=3_600.0, ge=0, description="Quiet time after a generation ends before a trigger may fire.")
    max_rollbacks_in_a_row: int = Field(default=2, ge=1, description="This many harm rollbacks in a row pause the loop.")


def resolve_train_recipe(spec: LoopSpec, loop_path: str | Path | None = None) -> Path:
    """The training recipe's file: absolute, else relative to the working directory, else to a
    directory above the loop recipe (a checkout's root, where ``configs/`` lives)."""
    p = Path(spec.train.recipe)
    candidates = [p] if p.is_absolute() else [Path.cwd() / p]
    if loop_path is not None and not p.is_absolute():
        candidates += [d / p for d in Path(loop_path).resolve().parents]
    for c in candidates:
        if c.is_file():
            return c
    raise StudioError(f"loop {spec.name}: training recipe {spec.train.recipe} does not exist",
                      "set train.recipe to a file under configs/train/ (relative to the working directory)")


def load_loop_recipe(path: str | Path, overrides: list[str] | tuple[str, ...] = ()):
    """The loop recipe and its training recipe, both validated: ``(LoopSpec, TrainSpec)``."""
    from studio.train.spec import TrainSpec

    spec = load_recipe(path, LoopSpec, overrides)
    train_path = resolve_train_recipe(spec, path)
    train = load_recipe(train_path, TrainSpec, spec.train.overrides)
    if train.method not in TRAIN_METHODS:
        raise StudioError(f"loop {spec.name}: training recipe {spec.train.recipe} trains with {train.method}",
                          f"a loop learns from feedback: use a recipe with method {' or '.join(TRAIN_METHODS)}")
    return spec, train


def check_base_model(spec: LoopSpec, train_base_model: str, champion_base_model: str) -> None:
    """A loop trains from the champion: its training recipe must be for the champion's base model."""
    if _model_key(train_base_model) != _model_key(champion_base_model):
        raise StudioError(
            f"loop {spec.name}: training recipe {spec.train.recipe} is for base model {train_base_model}, but "
            f"{spec.served_name}'s champion is an adapter of {champion_base_model}",
            f"use a training recipe whose base_model is {champion_base_model}")


def _model_key(model: str) -> str:
    # A local directory compares by its resolved path (recipes name it relatively); a hub id as given.
    p = Path(model).expanduser()
    return str(p.resolve()) if p.exists() else model
