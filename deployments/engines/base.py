"""One small engine interface, with vLLM and SGLang behind it (their config, ``EngineConfig``, lives
in ``studio.serving.config``; the factory in ``deployments.engines.registry``).

An engine serves one base model plus LoRA adapters, speaking the OpenAI protocol of the engine's own
serving layer. ``generate`` answers with

* a ``dict``: the complete JSON body — a response, or an error in OpenAI's shape
  ``{"error": {"message", "type", "param", "code"}}`` where ``code`` is the HTTP status; or
* an async iterator of server-sent-event strings (``"data: {...}\\n\\n"`` …
  ``"data: [DONE]\\n\\n"``), only for an accepted ``"stream": true`` request.

Adapter ids are version-unique (``name@3``-like): the weights behind an id never change, so an id is
never re-loaded in place with other weights; a new version is a new id.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Literal, Protocol, runtime_checkable

from studio.errors import StudioError, Unavailable
from studio.serving.config import EngineConfig

Endpoint = Literal["chat", "completions"]
GenerateResult = dict[str, Any] | AsyncIterator[str]


def cuda_available() -> bool:
    """A CUDA GPU here, or GPUs in the Ray cluster this process is connected to (a CPU-only head
    may deploy to GPU workers)."""
    try:
        import torch

        if torch.cuda.is_available():
            return True
    except ImportError:
        pass
    try:
        import ray

        return ray.is_initialized() and ray.cluster_resources().get("GPU", 0) > 0
    except ImportError:
        return False


@runtime_checkable
class Engine(Protocol):
    """What a ModelDeployment needs from an inference engine."""

    config: EngineConfig

    async def start(self) -> None:
        """Start the engine (load weights, allocate the KV cache); idempotent."""

    async def generate(self, endpoint: Endpoint, request: dict[str, Any]) -> GenerateResult:
        """Answer an OpenAI chat/completions request body; see the module docs for the result."""

    async def add_adapter(self, adapter_id: str, path: str) -> None:
        """Register the adapter in local directory ``path`` under ``adapter_id`` and load it
        (evicting the least recently used one if ``max_loras`` are loaded)."""

    async def remove_adapter(self, adapter_id: str) -> None:
        """Unload and forget the adapter; requests naming it then get a 404."""

    def has_adapter(self, adapter_id: str) -> bool:
        """Whether ``adapter_id`` is registered here (loaded now or loadable on demand)."""

    def list_adapters(self) -> list[dict[str, Any]]:
        """Registered adapters: id, path, loaded, in-flight requests, last use."""

    async def health(self) -> None:
        """Raise if the engine cannot serve (Serve then replaces the replica)."""

    def dead(self) -> str | None:
        """Why the engine can serve no more (its processes died: ``health`` raises
        ``EngineDead``, requests get ``engine_dead_body``), else None."""

    async def stats(self) -> dict[str, Any]:
        """Load and adapter numbers for the router and /metrics."""

    def shutdown(self) -> None:
        """Stop the engine's processes (synchronous: it runs from destructors too)."""


def check_adapter(path: str, config: EngineConfig) -> None:
    """Refuse an adapter directory that is incomplete, corrupt, of too high a rank or made for
    another base model — before the engine sees it (a bad adapter must not take down an engine
    that serves others). Blocking file reads: call it off the event loop."""
    from studio.models.adapters import check_adapter_fits, inspect_adapter

    info = inspect_adapter(path)
    if info.rank > config.max_lora_rank:
        raise StudioError(
            f"adapter {path} has LoRA rank {info.rank}, above max_lora_rank {config.max_lora_rank}",
            f"raise engine.max_lora_rank to at least {info.rank} (restarts the replicas)",
        )
    check_adapter_fits(info, config.model)


def error_body(message: str, status: int = 400, err_type: str = "BadRequestError",
               param: str | None = None) -> dict[str, Any]:
    """An error in OpenAI's shape, for failures found before the engine's serving layer runs."""
    return {"error": {"message": message, "type": err_type, "param": param, "code": status}}


class EngineDead(Unavailable):
    """The engine's processes died under a running replica: it answers no request again. The
    replica fails its health check with this (Serve replaces it) and answers 503 meanwhile."""


def engine_dead_body(name: str, why: str) -> dict[str, Any]:
    """The OpenAI 503 for a request to a replica whose engine died (the HTTP layer adds
    ``Retry-After``)."""
    return error_body(f"The model `{name}` cannot answer now: its engine died ({why}); Serve is "
                      "replacing the replica, which takes a minute or less; retry after the "
                      "Retry-After seconds (`studio serve ls` shows its state)", 503,
                      "ServiceUnavailableError", "model")


CHAT_ROLES = ("system", "developer", "user", "assistant", "tool", "function")
MAX_STOP_STRINGS = 256


def check_request(config: EngineConfig, endpoint: Endpoint, request: dict[str, Any],
                  max_model_len: int | None = None) -> dict[str, Any] | None:
    """An OpenAI 400, naming the field, for what the engine's serving layer would accept and then
    mishandle (or refuse in terms of its CLI flags): empty messages, an unknown role, max_tokens
    below 1 or above the context length (``max_model_len``: the engine's; vLLM itself would
    quietly cut it to what is left after the prompt), thousands of stop strings, a tool or response schema that is not JSON Schema, a
    tool_choice the engine is not set up for, guided decoding asked of an engine that has it off.
    None when the request may go on."""
    from jsonschema import SchemaError, validators

    messages = request.get("messages") if endpoint == "chat" else None
    if messages == []:
        return error_body("messages is empty; a chat request needs at least one message", 400,
                          param="messages")
    if isinstance(messages, list):
        for i, message in enumerate(messages):
            role = message.get("role") if isinstance(message, dict) else None
            if isinstance(role, str) and role not in CHAT_ROLES:
                return error_body(f"messages[{i}].role is {role!r}, which is not a chat role; use "
                                  f"one of {', '.join(CHAT_ROLES)}", 400,
                                  param=f"messages[{i}].role")
    for field in ("max_tokens", "max_completion_tokens"):
        value = request.get(field)
        if isinstance(value, int) and not isinstance(value, bool) and value < 1:
            return error_body(f"{field} is {value}; it must be at least 1 (or left out: up to the "
                              "context length)", 400, param=field)
        if isinstance(value, int) and max_model_len and value > max_model_len:
            return error_body(f"{field} is {value}, above the context length of {config.name!r} "
                              f"({max_model_len} tokens, prompt included); ask for at most "
                              f"{max_model_len} (or leave it out)", 400, param=field)
    stop = request.get("stop")
    if isinstance(stop, list) and len(stop) > MAX_STOP_STRINGS:
        return error_body(f"stop has {len(stop)} strings; at most {MAX_STOP_STRINGS} are accepted "
                          "(each one is checked after every generated token)", 400, param="stop")
    tools = request.get("tools") if endpoint == "chat" else None
    for where, schema in request_schemas(endpoint, request):
        if not isinstance(schema, dict):
            return error_body(f"{where} must be a JSON Schema object, not "
                              f"{type(schema).__name__}", 400, param=where)
        try:
            validators.validator_for(schema).check_schema(schema)
        except SchemaError as e:
            at = "/".join(str(p) for p in e.path) or "(root)"
            return error_body(f"{where} is not a valid JSON Schema: {e.message} (at {at}); fix "
                              "the schema (https://json-schema.org)", 400, param=where)
    choice = request.get("tool_choice") if tools else None
    if choice not in (None, "none") and not config.tool_call_parser:
        return error_body(f"model {config.name!r} is served without a tool parser, so it cannot "
                          "answer with tool calls; send tool_choice none, or serve the model with "
                          "engine.tool_call_parser set (e.g. hermes)", 400, param="tool_choice")
    if choice == "auto" and not config.enable_auto_tool_choice:
        return error_body(f"model {config.name!r} is served without automatic tool choice; name "
                          "the tool in tool_choice (or send required), or serve the model with "
                          "engine.enable_auto_tool_choice: true", 400, param="tool_choice")
    if config.structured_outputs_backend == "none" and _wants_guidance(request):
        return error_body(
            f"model {config.name!r} is served by an engine with guided decoding off "
            "(engine.structured_outputs_backend: none), so it cannot follow `response_format` "
            "or a named/required `tool_choice`; drop them, or serve the model with "
            "structured_outputs_backend: auto", 400, param="response_format")
    return None


def request_schemas(endpoint: Endpoint, request: dict[str, Any],
                    guided_only: bool = False) -> list[tuple[str, Any]]:
    """(where, schema) of each JSON schema in the request: the tools' ``parameters`` (with
    ``guided_only``, only strict tools', the ones decoding is guided by) and the
    ``response_format`` schema."""
    schemas: list[tuple[str, Any]] = []
    tools = request.get("tools") if endpoint == "chat" else None
    if isinstance(tools, list):
        for i, tool in enumerate(tools):
            function = tool.get("function") if isinstance(tool, dict) else None
            if not isinstance(function, dict) or "parameters" not in function:
                continue
            if not guided_only or function.get("strict") is True:
                schemas.append((f"tools[{i}].function.parameters", function["parameters"]))
    fmt = request.get("response_format")
    if isinstance(fmt, dict) and isinstance(fmt.get("json_schema"), dict):
        json_schema = fmt["json_schema"]
        schema = json_schema.get("schema", json_schema.get("json_schema"))
        if schema is not None:
            schemas.append(("response_format.json_schema.schema", schema))
    return schemas


def _wants_guidance(request: dict[str, Any]) -> bool:
    fmt = request.get("response_format")
    if isinstance(fmt, dict) and fmt.get("type") not in (None, "text"):
        return True
    if any(request.get(k) is not None for k in ("structured_outputs", "guided_json",
                                                 "guided_regex", "guided_choice",
                                                 "guided_grammar")):
        return True
    choice = request.get("tool_choice")
    return bool(request.get("tools")) and (choice == "required" or isinstance(choice, dict))


def pin_forced_tool_arguments(request: dict[str, Any]) -> dict[str, Any]:
    """The request with every tool marked ``strict: true`` when ``tool_choice`` forces a call
    (``required`` or a named function) — a tool that says ``strict: false`` is left as sent.

    vLLM guides a forced call's envelope (the call syntax and the tool's name) but pins the
    arguments to the tool's ``parameters`` only for strict tools (its ``tool_strict_level: auto``);
    a weak model then fills the arguments with any JSON value (the untrained tiny model answered
    ``true``). A forced call is the caller asking for a call of that function, so its arguments
    are guided too. ``auto`` is left alone: there the model may answer in text."""
    tools = request.get("tools")
    choice = request.get("tool_choice")
    if not isinstance(tools, list) or not (choice == "required" or isinstance(choice, dict)):
        return request
    pinned = []
    for tool in tools:
        function = tool.get("function") if isinstance(tool, dict) else None
        if isinstance(function, dict) and function.get("strict") is None:
            tool = {**tool, "function": {**function, "strict": True}}
        pinned.append(tool)
    return {**request, "tools": pinned}


class EngineAdapters:
    """The adapter bookkeeping every engine shares: refuse bad adapters before the engine sees
    them, keep at most ``max_loras`` loaded (``AdapterLRU``), and hold an adapter loaded while a
    request uses it. The engine supplies only its own ``load(id, path)`` / ``unload(id)``."""

    def __init__(self, config: EngineConfig, load: Callable[[str, str], Awaitable[None]],
                 unload: Callable[[str], Awaitable[None]]):
        from deployments.engines.adapter_lru import AdapterLRU

        self.config = config
        self.lru = AdapterLRU(config.max_loras, load, unload)

    def __contains__(self, adapter_id: str) -> bool:
        return adapter_id in self.lru.registered

    async def add(self, adapter_id: str, path: str) -> None:
        from deployments.engines.adapter_lru import check_adapter_id

        check_adapter_id(adapter_id, self.config.name)
        if adapter_id not in self.lru.registered:
            await asyncio.to_thread(check_adapter, path, self.config)
        await self.lru.add(adapter_id, path)

    async def remove(self, adapter_id: str) -> None:
        await self.lru.remove(adapter_id)

    def describe(self) -> list[dict[str, Any]]:
        return self.lru.describe()

    def stats(self) -> dict[str, Any]:
        return self.lru.stats()

    async def acquire(self, model: str) -> Callable[[], None] | dict[str, Any]:
        """The release function of the request's adapter (loaded again if it was evicted), or an
        OpenAI error body when it cannot be loaded. Other names pass through untouched."""
        try:
            return await self.lru.acquire(model)
        except StudioError as e:  # an evicted adapter could not be loaded again
            return error_body(str(e), e.status_code, type(e).__name__, "model")


async def released_after(stream: AsyncIterator[Any], release: Callable[[], None]):
    """Relay an engine's SSE stream as text, then release the request's adapter. Closing it
    early (client gone) closes the engine's stream, which aborts the request in the engine."""
    try:
        async for chunk in stream:
            yield chunk.decode() if isinstance(chunk, bytes) else chunk
    finally:
        aclose = getattr(stream, "aclose", None)
        if aclose is not None:
            await aclose()
        release()
