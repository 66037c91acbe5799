"""Router: the OpenAI endpoint's brain. It turns the request's ``model`` into a concrete answer —
which base model's ModelDeployment, which adapter — and relays the engine's answer.

Names (docs: ARCHITECTURE.md "Endpoint model names"):

* a served base model id → that base, no adapter;
* a registry name → its champion version (else its newest);
* ``name@N`` → that version;
* anything else → a 404 in OpenAI's shape pointing at ``GET /v1/models``.

A registry version is served as the adapter id ``name@N-<model_versions.id>`` (unique per version,
never reused even if a name is deleted and registered again), loaded on the base's ModelDeployment
on first use. Registry lookups hit the database with a TTL cache of ``REGISTRY_TTL_S`` so a newly
registered or promoted version answers within about a second, without a redeploy.

``chat(body)`` / ``completions(body)`` are generators (call with ``handle.options(stream=True)``):
the first item is ``{"studio_model_version": "name@N"}`` (or the base id), then the engine's
items — one dict (a whole JSON body; errors carry ``error.code`` = HTTP status) or SSE strings.
When the name does not resolve, the only item is the error dict.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ray import serve
from ray.serve.handle import DeploymentHandle

from deployments.engines.base import error_body
from studio.errors import StudioError

logger = logging.getLogger("ray.serve")
REGISTRY_TTL_S = 1.0
MODELS_HINT = "see GET /v1/models for the models served"


@dataclass(frozen=True)
class Target:
    base: str  # the served base model id (key of the router's handles)
    label: str  # what answered: the base id or name@N
    adapter_id: str | None = None
    uri: str | None = None


def normalize_base(model: str) -> str:
    """A base model reference as the router compares it: an existing path resolved absolute."""
    path = Path(model).expanduser()
    return str(path.resolve()) if path.exists() else model


def adapter_id(name: str, version: int, row_id: int) -> str:
    return f"{name}@{version}-{row_id}"


@serve.deployment(name="Router", ray_actor_options={"num_cpus": 0.05})
class Router:
    def __init__(self, bases: dict[str, dict[str, Any]]):
        """``bases``: served base id → ``{"handle": ModelDeployment handle, "model": path or hub
        id}``. Registry versions whose ``base_model`` is either the id or the path go to it."""
        from studio.settings import StudioSettings

        self._handles: dict[str, DeploymentHandle] = {k: v["handle"] for k, v in bases.items()}
        self._aliases: dict[str, str] = {}
        for base, info in bases.items():
            self._aliases[base] = base
            self._aliases[normalize_base(info.get("model") or base)] = base
        self._db_url = StudioSettings().db_url
        self._cache: dict[str, tuple[float, Target | dict]] = {}
        self._loaded: dict[str, set[str]] = {b: set() for b in self._handles}

    # ---- names -------------------------------------------------------------------------------
    def _base_of(self, base_model: str) -> str | None:
        return self._aliases.get(base_model) or self._aliases.get(normalize_base(base_model))

    def _lookup(self, ref: str) -> Target | dict:
        """Blocking DB read: a Target, or an OpenAI error dict."""
        from studio.registry.versions import get_version
        from studio.store.db import session_scope

        try:
            with session_scope(self._db_url) as session:
                mv = get_version(session, ref)
                name, version, row_id, base_model, uri = (mv.name, mv.version, mv.id,
                                                          mv.base_model, mv.uri)
        except StudioError:
            return error_body(f"The model `{ref}` does not exist: it is neither a served base "
                              f"model nor a registered name or name@version; {MODELS_HINT}",
                              404, "NotFoundError", "model")
        base = self._base_of(base_model)
        if base is None:
            return error_body(f"The model `{ref}` ({name}@{version}) is an adapter of base model "
                              f"`{base_model}`, which this studio does not serve; add it to the "
                              f"serve config's models: section, or {MODELS_HINT}",
                              404, "NotFoundError", "model")
        return Target(base, f"{name}@{version}", adapter_id(name, version, row_id), uri)

    async def resolve(self, model: Any) -> Target | dict:
        if not isinstance(model, str) or not model:
            return error_body(f"`model` must name a model; {MODELS_HINT}", 400,
                              "BadRequestError", "model")
        if model in self._handles:
            return Target(model, model)
        now = time.monotonic()
        hit = self._cache.get(model)
        if hit and hit[0] > now:
            return hit[1]
        target = await asyncio.to_thread(self._lookup, model)
        self._cache[model] = (now + REGISTRY_TTL_S, target)
        return target

    async def _ensure_loaded(self, target: Target, force: bool = False) -> None:
        loaded = self._loaded[target.base]
        if target.adapter_id in loaded and not force:
            return
        await self._handles[target.base].load_adapter.remote(target.adapter_id, target.uri)
        loaded.add(target.adapter_id)

    # ---- endpoints ---------------------------------------------------------------------------
    async def models(self) -> dict[str, Any]:
        """The OpenAI model list: served bases, then registry names and name@N on those bases."""
        rows = await asyncio.to_thread(self._registry_rows)
        now = int(time.time())
        data = [{"id": b, "object": "model", "created": now, "owned_by": "studio", "root": b,
                 "parent": None} for b in self._handles]
        for ref, base, created in rows:
            data.append({"id": ref, "object": "model", "created": created, "owned_by": "studio",
                         "root": base, "parent": base})
        return {"object": "list", "data": data}

    def _registry_rows(self) -> list[tuple[str, str, int]]:
        from studio.registry.versions import list_versions
        from studio.store.db import session_scope

        with session_scope(self._db_url) as session:
            versions = list_versions(session)
            rows, names = [], {}
            for mv in versions:
                base = self._base_of(mv.base_model)
                if base is None:
                    continue
                created = int(mv.created_at.timestamp())
                rows.append((f"{mv.name}@{mv.version}", base, created))
                names.setdefault(mv.name, (base, created))
        return [(n, b, c) for n, (b, c) in names.items()] + rows

    async def chat(self, body: dict[str, Any]):
        async for item in self._forward("chat", body):
            yield item

    async def completions(self, body: dict[str, Any]):
        async for item in self._forward("completions", body):
            yield item

    async def _forward(self, endpoint: str, body: dict[str, Any]):
        target = await self.resolve(body.get("model"))
        if isinstance(target, dict):
            yield target
            return
        yield {"studio_model_version": target.label}
        request = dict(body)
        if target.adapter_id:
            await self._ensure_loaded(target)
            request["model"] = target.adapter_id
        handle = getattr(self._handles[target.base].options(stream=True), endpoint)
        gen = handle.remote(request)
        try:
            first = await gen.__anext__()
            if target.adapter_id and _is_unknown_model(first):
                # Loaded on another replica, or forgotten (replica restarted): load, then retry once.
                gen.cancel()
                await self._ensure_loaded(target, force=True)
                gen = handle.remote(request)
                first = await gen.__anext__()
            yield _relabel(first, target)
            async for item in gen:
                yield _relabel(item, target)
        except StopAsyncIteration:
            return
        finally:
            # Client gone (our generator cancelled/closed) or done: stop the engine request too.
            gen.cancel()


def _is_unknown_model(item: Any) -> bool:
    return isinstance(item, dict) and (item.get("error") or {}).get("code") == 404


def _relabel(item: Any, target: Target) -> Any:
    """Show clients the name they can use (name@N), not the internal adapter id."""
    if target.adapter_id is None:
        if isinstance(item, dict) and "error" not in item:
            item["studio_model_version"] = target.label
        return item
    if isinstance(item, str):
        return item.replace(f'"model":"{target.adapter_id}"', f'"model":"{target.label}"')
    if isinstance(item, dict) and "error" not in item:
        item["model"] = target.label
        item["studio_model_version"] = target.label
    return item
