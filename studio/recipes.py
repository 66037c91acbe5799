"""YAML recipes → typed pydantic specs.

One schema per concept is shared by YAML, CLI and HTTP: a recipe file is loaded, ``key.sub=value``
overrides from the command line are applied on top, and the result is validated by the spec class.
Every failure names the file, the field and the fix. A spec's path fields (``Spec.home_paths``)
may start with ``${STUDIO_HOME}``, read against the settings' home when the recipe is loaded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from studio.errors import StudioError

S = TypeVar("S", bound=BaseModel)


class Spec(BaseModel):
    """Base of every recipe schema: unknown fields are errors, never silently ignored."""

    model_config = ConfigDict(extra="forbid")
    #: Dotted fields holding a path that may start with ``${STUDIO_HOME}`` (``expand_home_paths``).
    home_paths: ClassVar[tuple[str, ...]] = ()


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise StudioError(f"recipe {path} does not exist", "pass the path of a YAML file")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise StudioError(f"recipe {path} is not UTF-8 text", "save it as UTF-8") from e
    except yaml.YAMLError as e:
        where = ""
        mark = getattr(e, "problem_mark", None)
        if mark is not None:
            where = f" at line {mark.line + 1}, column {mark.column + 1}"
        problem = getattr(e, "problem", None) or str(e)
        raise StudioError(
            f"recipe {path} is not valid YAML{where}: {problem}", "fix the YAML syntax there"
        ) from e
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise StudioError(
            f"recipe {path} must be a mapping of fields, got {type(data).__name__}",
            "write it as `field: value` lines",
        )
    return data


def apply_overrides(data: dict[str, Any], overrides: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """Apply ``a.b.c=value`` overrides; values are parsed as YAML (``3``, ``true``, ``[1,2]``)."""
    for item in overrides:
        if "=" not in item:
            raise StudioError(
                f"override {item!r} has no '='", "write overrides as key.sub=value, e.g. lora.r=16"
            )
        key, raw = item.split("=", 1)
        parts = [p for p in key.strip().split(".") if p]
        if not parts:
            raise StudioError(f"override {item!r} has an empty key", "write key.sub=value")
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        node = data
        for p in parts[:-1]:
            child = node.get(p)
            if child is None:
                child = node[p] = {}
            elif not isinstance(child, dict):
                raise StudioError(
                    f"override {item!r}: {p!r} is a value, not a section", f"override {p} itself"
                )
            node = child
        node[parts[-1]] = value
    return data


def format_validation_error(err: ValidationError, source: str) -> str:
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown field (check the spelling; see the spec's fields in the docs)"
        elif "input" in e and e["type"] != "missing":
            msg = f"{msg} (got {e['input']!r:.80})"
        lines.append(f"  {loc}: {msg}")
    return f"{source} is invalid:\n" + "\n".join(lines)


def validate_spec(spec_cls: type[S], data: dict[str, Any], source: str) -> S:
    try:
        return spec_cls.model_validate(data)
    except ValidationError as e:
        raise StudioError(format_validation_error(e, source), "correct the fields listed") from e


def expand_home_paths(data: dict[str, Any], spec_cls: type[BaseModel], home: Path | None,
                      source: str) -> dict[str, Any]:
    """``data`` with ``${STUDIO_HOME}`` expanded in the spec's ``home_paths`` (``studio.settings.
    expand_home``); ``home`` defaults to this process's settings. Errors name the source and field."""
    from studio.settings import StudioSettings, expand_home

    fields = getattr(spec_cls, "home_paths", ())
    for dotted in fields:
        *parents, last = dotted.split(".")
        node: Any = data
        for p in parents:
            node = node.get(p) if isinstance(node, dict) else None
        if not isinstance(node, dict) or not isinstance(node.get(last), str):
            continue
        if home is None:
            home = StudioSettings().home_abs
        try:
            node[last] = expand_home(node[last], home, field=dotted)
        except StudioError as e:
            raise StudioError(f"{source}: {e.problem}", e.fix) from None
    return data


def with_home_paths(spec: S, home: Path, source: str) -> S:
    """A validated spec (e.g. an HTTP body) with its ``home_paths`` expanded against ``home``."""
    if not getattr(spec, "home_paths", ()):
        return spec
    data = expand_home_paths(spec.model_dump(mode="json", by_alias=True), type(spec),
                             home, source)
    return validate_spec(type(spec), data, source)


def load_recipe(
    path: str | Path, spec_cls: type[S], overrides: list[str] | tuple[str, ...] = (),
    *, home: Path | None = None,
) -> S:
    """Read, override, expand ``${STUDIO_HOME}`` (against ``home``, default the settings' home), validate."""
    data = apply_overrides(read_yaml(path), overrides)
    expand_home_paths(data, spec_cls, home, f"recipe {path}")
    return validate_spec(spec_cls, data, f"recipe {path}")
