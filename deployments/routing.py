"""What the Router and its clients share: the name cache, the resolved ``Target`` of a request, and
how base models and registry versions are named on the engines."""

from __future__ import annotations

import logging
import random
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sqlalchemy.orm import Session





REGISTRY_TTL_S = 1.0
NAME_CACHE_SIZE = 4096
MODELS_HINT = "see GET /v1/models for the models served"


class NameCache:
    """name → value for ``ttl_s``, at most ``max_size`` names (the least recently used go first).
    Unknown names are cached too (their 404), so without the bound a caller sending endless
    made-up model names would grow the Router's memory without end."""

    def __init__(self, max_size: int = NAME_CACHE_SIZE):
        self.max_size = max_size
        self._entries: OrderedDict[str, tuple[float, Any]] = OrderedDict()

    def get(self, name: Any) -> Any | None:
        hit = self._entries.get(name) if isinstance(name, str) else None
        if hit is None or hit[0] <= time.monotonic():
            return None
        self._entries.move_to_end(name)
        return hit[1]

    def put(self, name: str, value: Any, ttl_s: float) -> None:
        self._entries[name] = (time.monotonic() + ttl_s, value)
        self._entries.move_to_end(name)
        while len(self._entries) > self.max_size:
            self._entries.popitem(last=False)

    def pop(self, name: str, default: Any = None) -> Any:
        hit = self._entries.pop(name, None)
        return default if hit is None else hit[1]

    def __len__(self) -> int:
        return len(self._entries)


@dataclass(frozen=True)
class Target:
    base: str  # the served base model id (key of the router's handles)
    label: str  # what answered: the base id or name@N
    adapter_id: str | None = None
    uri: str | None = None
    experiment: str | None = None  # the alias requested, when an experiment chose this
    arm: str | None = None  # the arm's model name
    deployment: str = ""  # the base's ModelDeployment: Serve deployment and application names
    app: str = ""
    # A request the Router chose to mirror to a loop's candidate in SHADOW (after answering):
    # the candidate's name@N and the generation the pair belongs to.
    shadow: str | None = None
    shadow_generation: int | None = None

    def meta(self) -> dict[str, str]:
        meta = {"studio_model_version": self.label}
        if self.experiment:
            meta.update(studio_experiment=self.experiment, studio_arm=self.arm)
        return meta


class ShadowMarks:
    """Marks a share (``shadow.share``) of the requests for a served name whose loop generation is
    in SHADOW, when its champion answers them, to be mirrored to the candidate (``Target.shadow``).
    ``read(query)`` runs ``query(session)`` off the event loop; the names are re-read every
    ``REGISTRY_TTL_S``."""

    def __init__(self, read: Callable[[Callable[[Session], Any]], Awaitable[Any]]):
        self._read = read
        self._shadows: tuple[float, dict[str, dict[str, Any]]] = (0.0, {})

    async def mark(self, model: str, target: Target) -> Target:
        expires, shadows = self._shadows
        if expires <= time.monotonic():
            try:
                shadows = await self._read(_shadowed_names)
            except Exception as e:  # noqa: BLE001 — never fail a request over the shadow's books
                logging.getLogger("ray.serve").warning("reading the loops in shadow failed: %s", e)
                shadows = {}
            self._shadows = (time.monotonic() + REGISTRY_TTL_S, shadows)
        shadow = shadows.get(model)
        if shadow is None or shadow["champion"] != target.label or random.random() >= shadow["share"]:
            return target
        return replace(target, shadow=shadow["candidate"], shadow_generation=shadow["generation_id"])


def _shadowed_names(session: Session) -> dict[str, dict[str, Any]]:
    from studio.loops.shadow import shadowed_names  # in the reading thread: off the event loop

    return shadowed_names(session)


def normalize_base(model: str) -> str:
    """A base model reference as the router compares it: an existing path resolved absolute."""
    path = Path(model).expanduser()
    return str(path.resolve()) if path.exists() else model


def adapter_id(name: str, version: int, row_id: int) -> str:
    return f"{name}@{version}-{row_id}"
