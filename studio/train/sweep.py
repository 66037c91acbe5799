"""A sweep: one training recipe, a search space over its fields, trials run by Ray Tune.

``SweepSpec`` is the schema of ``configs/sweeps/*.yaml``, of ``POST /api/jobs/sweep``'s body and of
``python -m studio.train.sweep_run --recipe``. The space is written as strings over the recipe's
dotted fields (``hyper.learning_rate: loguniform(1e-4, 1e-2)``, ``lora.r: choice([4, 8, 16])``);
they are checked here, before anything is queued: the field exists in the recipe, the domain can be
sampled, and its bounds (every choice) make a valid recipe. ``enqueue_sweep_job`` preflights the
recipe once and stores the sweep as one QUEUED job of kind ``sweep``; its trials become training
jobs with the sweep as their ``parent_id`` while it runs (``studio.train.sweep_run``).
"""

from __future__ import annotations

import ast
import re
import typing
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError, model_validator
from sqlalchemy.orm import Session

from studio.errors import StudioError
from studio.recipes import Spec, apply_overrides, expand_home_paths, read_yaml, validate_spec
from studio.train.spec import TrainSpec

# A domain: name(arguments), the arguments a Python literal (numbers, a list for choice).
_DOMAIN = re.compile(r"^\s*(uniform|loguniform|randint|choice)\s*\((.*)\)\s*$", re.S)
DOMAINS = "uniform(low, high), loguniform(low, high), randint(low, high) or choice([a, b, …])"
# Fields a trial may not vary: they name what the sweep is, not how a trial trains.
FIXED = ("name", "method", "base_model", "data.dataset", "max_retries", "after_training")


class Domain(BaseModel):
    kind: Literal["uniform", "loguniform", "randint", "choice"]
    args: list[Any]

    def values_to_check(self) -> list[Any]:
        """What a valid recipe must accept: both bounds, or every choice."""
        if self.kind == "choice":
            return list(self.args[0])
        if self.kind == "randint":  # Tune's randint excludes the upper bound
            return [self.args[0], self.args[1] - 1]
        return list(self.args)

    def tune(self):
        from ray import tune

        return {"uniform": tune.uniform, "loguniform": tune.loguniform, "randint": tune.randint,
                "choice": tune.choice}[self.kind](*self.args)


def parse_domain(field: str, text: Any) -> Domain:
    """``loguniform(1e-4, 1e-2)`` → Domain; a StudioError naming the field otherwise."""
    m = _DOMAIN.match(text) if isinstance(text, str) else None
    if m is None:
        raise StudioError(f"space.{field}: {text!r} is not a search domain", f"write one of {DOMAINS}")
    kind, raw = m.group(1), m.group(2)
    try:
        args = list(ast.literal_eval(f"({raw},)")) if raw.strip() else []
    except (ValueError, SyntaxError) as e:
        raise StudioError(f"space.{field}: the arguments of {text!r} are not literals",
                          f"write one of {DOMAINS}") from e
    if kind == "choice":
        if len(args) != 1 or not isinstance(args[0], list) or not args[0]:
            raise StudioError(f"space.{field}: {text!r} cannot be sampled: choice needs one non-empty list",
                              "write choice([4, 8, 16])")
        return Domain(kind=kind, args=args)
    if len(args) != 2 or not all(isinstance(a, (int, float)) and not isinstance(a, bool) for a in args):
        raise StudioError(f"space.{field}: {text!r} cannot be sampled: {kind} needs two numbers (low, high)",
                          f"write {kind}(low, high)")
    low, high = args
    if not low < high:
        raise StudioError(f"space.{field}: {text!r} cannot be sampled: low {low!r} is not below high {high!r}",
                          "put the smaller bound first")
    if kind == "loguniform" and low <= 0:
        raise StudioError(f"space.{field}: {text!r} cannot be sampled: loguniform needs low > 0",
                          "use a positive lower bound, e.g. loguniform(1e-5, 1e-2)")
    if kind == "randint" and not (isinstance(low, int) and isinstance(high, int)):
        raise StudioError(f"space.{field}: {text!r} cannot be sampled: randint needs whole numbers",
                          "write randint(1, 9) or use uniform")
    return Domain(kind=kind, args=args)


def _model_of(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model inside an annotation (``X``, ``X | None``), else None."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) in (list, dict, tuple):  # a list of sections is one value
        return None
    for arg in typing.get_args(annotation):
        found = _model_of(arg)
        if found is not None:
            return found
    return None


def recipe_fields(model: type[BaseModel] = TrainSpec, prefix: str = "") -> list[str]:
    """Every dotted leaf field of a recipe: ``hyper.learning_rate``, ``lora.r``, …"""
    out = []
    for name, info in model.model_fields.items():
        key = info.alias or name
        sub = _model_of(info.annotation)
        out += recipe_fields(sub, f"{prefix}{key}.") if sub is not None else [f"{prefix}{key}"]
    return out


def set_field(data: dict[str, Any], dotted: str, value: Any) -> dict[str, Any]:
    """``data`` (a recipe as JSON, changed in place) with ``dotted`` set to ``value``."""
    *parents, last = dotted.split(".")
    node = data
    for p in parents:
        if not isinstance(node.get(p), dict):
            node[p] = {}
        node = node[p]
    node[last] = value
    return data


class AshaSpec(Spec):
    grace_period: int = Field(default=1, ge=1, description="Reports (checkpoints with a metric) a trial "
                              "gets before it may be stopped.")
    reduction_factor: float = Field(default=2.0, gt=1, description="ASHA keeps 1/reduction_factor of the "
                                    "trials at each rung.")


class SweepSpec(Spec):
    """A search over one training recipe's fields (docs/training.md, "Sweeps")."""

    train: TrainSpec = Field(description="The recipe every trial starts from (a TrainSpec). In a YAML "
                             "file `recipe: PATH` may name a training recipe instead (with `train:` "
                             "fields on top); over HTTP the recipe is inline.")
    space: dict[str, str] = Field(description="Dotted recipe field → domain: uniform(low, high), "
                                  "loguniform(low, high), randint(low, high), choice([a, b]).")
    num_trials: int = Field(default=4, ge=1, le=256, description="Trials to sample (Tune's num_samples).")
    search: Literal["random", "optuna"] = Field(
        default="optuna", description="random: Tune's random search; optuna: Optuna's TPE via OptunaSearch.")
    metric: Literal["eval_loss", "exact_match"] = Field(
        default="eval_loss", description="What picks the best trial: eval_loss (the recipe's `eval` "
        "section, reported at every checkpoint) or exact_match (its `eval_after` score, the one the "
        "registered version records; reported once per trial).")
    mode: Literal["min", "max"] | None = Field(default=None, description="Default: min for eval_loss, "
                                               "max for exact_match.")
    scheduler: Literal["asha", "fifo"] = Field(
        default="asha", description="asha: stop trials early on the metric (ASHAScheduler); fifo: run every trial to the end.")
    asha: AshaSpec = Field(default_factory=AshaSpec, description="ASHA's settings.")
    max_concurrent_trials: int | None = Field(
        default=None, ge=1, description="Trials at once; default (and upper bound): as many as the "
        "cluster's CPUs (GPUs) hold, each trial being the recipe's workers.")
    seed: int | None = Field(default=0, description="Seed of the search algorithm (None: random).")

    @model_validator(mode="after")
    def _check(self) -> SweepSpec:
        if self.train.after_training is not None:
            raise ValueError("train.after_training: a sweep registers only its best trial; evaluate or "
                             "promote that version afterwards (drop after_training from the recipe)")
        if self.metric == "eval_loss" and self.train.method == "grpo":
            raise ValueError("metric eval_loss does not rank GRPO trials: GRPO's eval_loss is its policy loss on "
                             "freshly sampled completions, ~0 whatever the policy (its group-relative advantages "
                             "average out); use metric: exact_match with the recipe's `eval_after`")
        if self.metric == "eval_loss" and self.train.eval is None:
            raise ValueError("metric eval_loss needs the recipe's `eval` section (e.g. eval.split_ratio: 0.1)")
        if self.metric == "exact_match" and self.train.eval_after is None:
            raise ValueError("metric exact_match needs the recipe's `eval_after` section")
        if not self.space:
            raise ValueError("space is empty: name at least one recipe field to search over")
        return self

    @property
    def best_mode(self) -> str:
        return self.mode or ("min" if self.metric == "eval_loss" else "max")

    def domains(self) -> dict[str, Domain]:
        """The space, parsed and checked against the recipe (StudioError naming the field)."""
        known = recipe_fields()
        out: dict[str, Domain] = {}
        for field, text in self.space.items():
            if field not in known:
                raise StudioError(f"space.{field}: the recipe has no field {field!r}",
                                  f"search over the recipe's fields: {', '.join(known)}")
            if field in FIXED:
                raise StudioError(f"space.{field}: a sweep's trials share {field}",
                                  "search over training fields (hyper.*, lora.*, …)")
            domain = parse_domain(field, text)
            for value in domain.values_to_check():
                data = set_field(self.train.model_dump(mode="json", by_alias=True), field, value)
                try:
                    TrainSpec.model_validate(data)
                except ValidationError as e:
                    why = e.errors()[0]["msg"]
                    raise StudioError(f"space.{field}: {text!r} cannot be sampled: {value!r} is not a valid "
                                      f"{field} ({why})", "narrow the domain to valid values") from None
            out[field] = domain
        return out

    def trial_spec(self, params: dict[str, Any], trial: str) -> TrainSpec:
        """The recipe of one trial: the sampled values set, retries left to the sweep."""
        data = self.train.model_dump(mode="json", by_alias=True)
        for field, value in params.items():
            set_field(data, field, value)
        data["max_retries"] = 0
        return validate_spec(TrainSpec, data, f"trial {trial}")


def load_sweep(path: str | Path, overrides: list[str] | tuple[str, ...] = (), *, home: Path | None = None) -> SweepSpec:
    """A sweep YAML: ``recipe: PATH`` (relative to the file) becomes ``train:``, with the file's own
    ``train:`` fields on top; then overrides (``train.hyper.epochs=3``, ``num_trials=2``)."""
    path = Path(path)
    data = read_yaml(path)
    recipe = data.pop("recipe", None)
    if recipe is not None:
        base = Path(recipe) if Path(recipe).is_absolute() else path.parent / recipe
        train = read_yaml(base)
        _merge(train, data.get("train") or {})
        data["train"] = train
    data = apply_overrides(data, overrides)
    if isinstance(data.get("space"), dict):  # an override space.lora.r=… arrives nested: dotted again
        data["space"] = _dotted(data["space"])
    if isinstance(data.get("train"), dict):
        expand_home_paths(data["train"], TrainSpec, home, f"sweep {path}")
    spec = validate_spec(SweepSpec, data, f"sweep {path}")
    spec.domains()
    return spec


def _dotted(space: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in space.items():
        out.update(_dotted(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def _merge(into: dict[str, Any], top: dict[str, Any]) -> None:
    for k, v in top.items():
        if isinstance(v, dict) and isinstance(into.get(k), dict):
            _merge(into[k], v)
        else:
            into[k] = v


def enqueue_sweep_job(session: Session, spec: SweepSpec, submitted_by: str | None, *,
                      cluster_gpus: float | None = None, key=None, check_fit: bool = False):
    """Check the space, preflight the recipe once (as ``studio train submit`` does: the dataset
    pinned to ``name@N``, the model to an absolute path), and store the sweep QUEUED."""
    from studio.access import claim_name, principal_id
    from studio.jobs.status import create_job
    from studio.train.preflight import preflight

    spec.domains()
    if key is not None:
        claim_name(session, "model", spec.train.name, key)
    inputs = preflight(spec.train, session, cluster_gpus=cluster_gpus)
    if check_fit:
        from studio.train.plan import check_submit_fits

        check_submit_fits(spec.train, session, inputs)
    pinned = spec.model_copy(deep=True)
    pinned.train.base_model = inputs.base_model
    pinned.train.data.dataset = inputs.dataset_ref
    pinned.train.init_adapter = inputs.init_adapter_ref
    if inputs.eval_dataset_ref:
        pinned.train.eval.dataset = inputs.eval_dataset_ref
    return create_job(session, name=spec.train.name, kind="sweep",
                      spec=pinned.model_dump(mode="json", by_alias=True), max_retries=spec.train.max_retries,
                      submitted_by=submitted_by, owner_key_id=principal_id(key) if key is not None else None)
