"""The vLLM engine: ``AsyncLLM`` (v1) with LoRA, behind vLLM's own OpenAI serving layer.

The protocol is not re-implemented here. ``start`` builds the argument namespace ``vllm serve``
would parse (vLLM's ``FrontendArgs`` defaults + our ``AsyncEngineArgs``) and calls vLLM's
``init_app_state`` on a bare Starlette ``State`` — exactly what vLLM's API server does, minus the
HTTP app. That yields ``OpenAIServingModels`` (adapter registry), ``OpenAIServingChat`` and
``OpenAIServingCompletion`` (request models, chat templates, sampling params, streaming, usage and
error shapes). Ray Serve LLM wires vLLM the same way.

Adapters are loaded through ``OpenAIServingModels.load_lora_adapter`` (so ``request.model`` resolves
to the LoRA) and evicted with ``unload_lora_adapter`` + ``AsyncLLM.remove_lora`` (vLLM's unload
only forgets the name). ``AdapterLRU`` decides what is loaded.
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Any

from pydantic import ValidationError

from deployments.engines.base import (
    Endpoint,
    EngineAdapters,
    EngineDead,
    GenerateResult,
    check_request,
    engine_dead_body,
    error_body,
    request_schemas,
    pin_forced_tool_arguments,
    released_after,
)
from studio.errors import StudioError, Unavailable
from studio.serving.config import EngineConfig
from studio.settings import StudioSettings

logger = logging.getLogger("ray.serve")


class VLLMEngine:
    def __init__(self, config: EngineConfig):
        self.config = config
        self._client = None  # vllm.v1.engine.async_llm.AsyncLLM
        self._models = self._chat = self._completion = None
        self._adapters = EngineAdapters(config, self._load, self._unload)
        self._death: str | None = None  # why the engine core died, once it has

    def engine_args(self):
        from vllm.config import StructuredOutputsConfig
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.platforms import current_platform

        c = self.config
        return AsyncEngineArgs(
            # Inside a Ray actor vLLM may pick its Ray executor, whose placement group asks for
            # GPU bundles that a CPU cluster never schedules: keep CPU engines in local processes
            # (``uni``: the model runs in the EngineCore process, see ``_start_client``).
            distributed_executor_backend=self._cpu_executor() if current_platform.is_cpu() else None,
            model=c.model,
            served_model_name=[c.name],
            dtype=c.dtype,
            max_model_len=c.max_model_len,
            enable_lora=True,
            max_loras=c.max_loras,
            # vLLM's own CPU-side adapter cache: as large as ours, so a loaded adapter is resident.
            max_cpu_loras=c.max_loras,
            max_lora_rank=c.max_lora_rank,
            max_num_seqs=c.max_num_seqs,
            enforce_eager=c.enforce_eager,
            gpu_memory_utilization=c.gpu_memory_utilization,
            tensor_parallel_size=c.tensor_parallel_size,
            seed=c.seed,
            stream_interval=c.stream_interval,
            structured_outputs_config=StructuredOutputsConfig(
                backend=self.guided_backend(), disable_any_whitespace=c.compact_json),
        )

    def guided_backend(self) -> str:
        """vLLM's structured-outputs backend for this config."""
        backend = self.config.structured_outputs_backend
        if backend == "none":  # ours: the engine keeps its default, check_request refuses guidance
            backend = "auto"
        if self.config.compact_json and backend == "auto":
            backend = "xgrammar"  # vLLM takes compact JSON only with a named backend
        return backend

    def frontend_args(self, engine_args) -> argparse.Namespace:
        """What ``vllm serve`` would parse: vLLM's frontend defaults, our engine args, and the
        chat settings of the config (chat template, tool parser)."""
        from vllm.entrypoints.launchers.cli_args import FrontendArgs
        from vllm.tool_parsers import ToolParserManager

        c = self.config
        parser = c.tool_call_parser
        if parser is not None and parser not in ToolParserManager.list_registered():
            raise StudioError(f"engine.tool_call_parser {parser!r} is not a vLLM tool parser",
                              "choose one of: "
                              + ", ".join(sorted(ToolParserManager.list_registered())))
        return argparse.Namespace(**(vars(FrontendArgs()) | vars(engine_args) | {
            "chat_template": c.chat_template, "tool_call_parser": parser,
            "enable_auto_tool_choice": c.enable_auto_tool_choice,
            "tool_strict_level": c.tool_strict_level}))

    async def start(self) -> None:
        if self._client is not None:
            return
        from starlette.datastructures import State
        from vllm.entrypoints.launchers.api_server.app_state import init_app_state
        from vllm.platforms import current_platform

        if current_platform.is_cpu() and self.config.kv_cache_space_gib:
            # Read by the engine-core process this starts; vLLM's CPU default takes far more.
            os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(self.config.kv_cache_space_gib)
        engine_args = self.engine_args()
        args = self.frontend_args(engine_args)  # a bad tool parser fails before the engine starts
        try:
            from deployments.engines.vllm_load import EngineLoad

            self._load_stats = EngineLoad()
            self._client = self._start_client(engine_args, [self._load_stats.factory])
        except Exception as e:
            # vLLM's config errors are pydantic dataclass errors that do not pickle across Ray.
            raise Unavailable(f"vLLM could not start {self.config.model!r}: {e}",
                              "check the model path and the engine config fields") from None
        state = State()
        try:
            tasks = await self._client.get_supported_tasks()
            await init_app_state(self._client, state, args, supported_tasks=tasks)
            if state.openai_serving_chat is None or state.openai_serving_completion is None:
                raise StudioError(f"{self.config.model!r} does not generate text (tasks: {tasks})",
                                  "serve a causal language model")
        except BaseException:
            self.shutdown()  # the engine processes are already running
            raise
        if self.config.compact_json and getattr(state.online_renderer, "parser", None):
            # The renderer's parser is the one whose adjust_request turns tools into the grammar.
            state.online_renderer.parser = bounded_tool_whitespace(state.online_renderer.parser)
        self._models = state.openai_serving_models
        self._chat = state.openai_serving_chat
        self._completion = state.openai_serving_completion
        if current_platform.is_cpu() and StudioSettings().serve_isolate_engine and os.environ.get("STUDIO_HOME"):
            from deployments.engines.cpu_isolation import keep_off_engine_cores

            keep_off_engine_cores(os.environ["STUDIO_HOME"])

    def _cpu_executor(self) -> str:
        return "uni" if self.config.tensor_parallel_size == 1 else "mp"

    def _start_client(self, engine_args, stat_loggers):
        """``AsyncLLM`` with its EngineCore process started. On CPU with one process (``uni``), the
        model runs inside the EngineCore instead of a worker process of its own: no second process
        to spawn (~11 s on 2 cores) and none to wait for at shutdown (vLLM's 5 s grace), and no
        shared-memory queue that both sides busy-poll after every step. vLLM's CPU platform turns
        ``uni`` back into ``mp`` unless ``VLLM_ENABLE_V1_MULTIPROCESSING=0`` (read while the config
        is built, here only: the client below still runs the core in a process of its own), and it
        sets the OpenMP threads and CPU binding (``VLLM_CPU_OMP_THREADS_BIND``) only for the
        workers its ``mp`` executor spawns; so the same ``OMPProcessManager`` sets them here for the
        EngineCore process: the thread count and cores are the ones its worker had."""
        from vllm.platforms import current_platform
        from vllm.usage.usage_lib import UsageContext
        from vllm.utils.ompmultiprocessing import OMPProcessManager
        from vllm.v1.engine.async_llm import AsyncLLM

        if not (current_platform.is_cpu() and engine_args.distributed_executor_backend == "uni"):
            return AsyncLLM.from_engine_args(engine_args, stat_loggers=stat_loggers)
        with _env({"VLLM_ENABLE_V1_MULTIPROCESSING": "0"}):
            vllm_config = engine_args.create_engine_config(UsageContext.ENGINE_CONTEXT)
        assert vllm_config.parallel_config.distributed_executor_backend == "uni"
        with OMPProcessManager(vllm_config).configure_omp_envs(rank=0, local_rank=0):
            return AsyncLLM.from_vllm_config(vllm_config, stat_loggers=stat_loggers)

    async def generate(self, endpoint: Endpoint, request: dict[str, Any]) -> GenerateResult:
        from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
        from vllm.entrypoints.openai.completion.protocol import CompletionRequest
        from vllm.entrypoints.serve import create_error_response
        from vllm.entrypoints.serve.engine.protocol import ErrorResponse

        max_len = self._client.model_config.max_model_len if self._client is not None else None
        refused = check_request(self.config, endpoint, request, max_len)
        if refused is not None:
            return refused
        if endpoint == "chat":
            request = pin_forced_tool_arguments(request)
        if self.guided_backend() == "xgrammar":
            refused = unsupported_by_xgrammar(endpoint, request)
            if refused is not None:
                return refused
        if self._client is None:
            return error_body("the engine is not started", 503, "ServiceUnavailableError")
        if (why := self.dead()) is not None:
            return engine_dead_body(self.config.name, why)
        model_cls = ChatCompletionRequest if endpoint == "chat" else CompletionRequest
        try:
            parsed = model_cls.model_validate(request)
        except ValidationError as e:
            first = e.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            return error_body(f"{where}: {first['msg']}", 400, param=where or None)
        release = await self._adapters.acquire(parsed.model or "")
        if isinstance(release, dict):
            return release
        try:
            if endpoint == "chat":
                result = await self._chat.create_chat_completion(parsed, None)
            else:
                result = await self._completion.create_completion(parsed, None)
        except Exception as e:  # noqa: BLE001 — vLLM's own mapping of exceptions to statuses
            release()
            if (why := self.dead()) is not None:  # in flight when the engine died: vLLM says 500
                return engine_dead_body(self.config.name, why)
            return create_error_response(e).model_dump(mode="json")
        if isinstance(result, ErrorResponse) or not isinstance(result, AsyncIterator):
            release()
            if isinstance(result, ErrorResponse) and (why := self.dead()) is not None:
                return engine_dead_body(self.config.name, why)
            return result.model_dump(mode="json")
        return released_after(result, release)

    async def add_adapter(self, adapter_id: str, path: str) -> None:
        await self._adapters.add(adapter_id, path)

    async def remove_adapter(self, adapter_id: str) -> None:
        await self._adapters.remove(adapter_id)

    def has_adapter(self, adapter_id: str) -> bool:
        return adapter_id in self._adapters

    def list_adapters(self) -> list[dict[str, Any]]:
        return self._adapters.describe()

    async def _load(self, adapter_id: str, path: str) -> None:
        from vllm.entrypoints.serve.engine.protocol import ErrorResponse
        from vllm.entrypoints.serve.lora.protocol import LoadLoRAAdapterRequest

        result = await self._models.load_lora_adapter(
            LoadLoRAAdapterRequest(lora_name=adapter_id, lora_path=path))
        if isinstance(result, ErrorResponse):
            raise StudioError(f"vLLM could not load adapter {adapter_id!r} from {path}: "
                              f"{result.error.message}", "check the adapter directory")

    async def _unload(self, adapter_id: str) -> None:
        from vllm.entrypoints.serve.lora.protocol import UnloadLoRAAdapterRequest

        lora = self._models.lora_requests.get(adapter_id)
        if lora is None:
            return
        await self._models.unload_lora_adapter(UnloadLoRAAdapterRequest(lora_name=adapter_id))
        await self._client.remove_lora(lora.lora_int_id)

    def dead(self) -> str | None:
        """Why this engine can serve no more (its EngineCore process died), else None. vLLM's
        client watches the process (a thread waiting on its sentinel, 1 s timeout) and, when it
        exits, marks the client dead and fails the requests in flight with ``EngineDeadError``."""
        client = self._client
        if client is None or not client.errored:
            return None
        if self._death is None:
            self._death = _death_reason(client)
        return self._death

    async def health(self) -> None:
        if self._client is None:
            raise Unavailable("the vLLM engine is not started", "wait for the replica to start")
        if (why := self.dead()) is not None:
            raise EngineDead(f"the vLLM engine of {self.config.name!r} died: {why}",
                             "Serve replaces this replica")
        await self._client.check_health()

    async def stats(self) -> dict[str, Any]:
        started = self._client is not None
        return {
            "engine": "vllm",
            "model": self.config.model,
            "served_model_name": self.config.name,
            "started": started,
            "unfinished_requests": self._client.get_num_unfinished_requests() if started else 0,
            "engine_dead": self.dead(),
            "adapters": self._adapters.stats(),
            **(self._load_stats.as_dict() if started else {}),
        }

    async def engine_lora_ids(self) -> list[int]:
        """The LoRA ids vLLM itself holds. Not part of ``stats`` (reported every few seconds): it
        is a call into vLLM's engine core (and, with the ``mp`` executor, its worker, which spins
        on its queue for a second after each call: a periodic one kept an idle engine burning half
        a core)."""
        return sorted(await self._client.list_loras()) if self._client is not None else []

    def shutdown(self) -> None:
        if self._client is not None:
            self._client.shutdown()
            self._client = None


# Keywords that vLLM's xgrammar check refuses in some combination (has_xgrammar_unsupported_json_
# features); the one to name is found by taking each away.
_XGRAMMAR_HINTS = ("multipleOf", "uniqueItems", "contains", "minContains", "maxContains", "format",
                   "pattern", "minLength", "maxLength", "propertyNames", "patternProperties",
                   "allOf")
# Keywords xgrammar 0.2.8 accepts and does not enforce (the grammar is the same without them, or
# allows any value), which vLLM lets through: the answer would look guided and not be.
_XGRAMMAR_IGNORES = ("not", "if", "then", "else", "dependentRequired", "dependentSchemas",
                     "unevaluatedProperties", "unevaluatedItems")
# Where a schema holds subschemas: one, a list of them, or a map of names to them.
_ONE = ("items", "additionalProperties", "not", "if", "then", "else", "contains",
        "propertyNames", "additionalItems", "unevaluatedItems", "unevaluatedProperties")
_LIST = ("prefixItems", "allOf", "anyOf", "oneOf")
_MAP = ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas")


def unsupported_by_xgrammar(endpoint: Endpoint, request: dict[str, Any]) -> dict[str, Any] | None:
    """A 400 naming the schema, the keyword and where it is, for a guided schema that xgrammar
    cannot follow: one vLLM refuses saying only "features not supported by xgrammar", or one
    it lets through although xgrammar ignores the keyword."""
    from vllm.v1.structured_output.backend_xgrammar import (
        has_xgrammar_unsupported_json_features as unsupported,
    )

    for where, schema in request_schemas(endpoint, request, guided_only=True):
        found = _unsupported_keyword(schema, [], unsupported) if isinstance(schema, dict) else None
        if found is not None:
            keyword, at = found
            return error_body(
                f"{where} uses {keyword!r} at {at}, which guided decoding (the engine's xgrammar "
                "backend) cannot enforce; drop the keyword there and check that constraint on "
                "the answer instead", 400, param=where)
    return None


def _unsupported_keyword(node: Any, path: list[str], unsupported) -> tuple[str, str] | None:
    """(keyword, path) of the deepest schema node xgrammar cannot enforce, or None."""
    if not isinstance(node, dict):
        return None
    children: list[tuple[list[str], Any]] = []
    for key in _ONE:
        if isinstance(node.get(key), dict):
            children.append(([*path, key], node[key]))
    for key in _LIST:
        if isinstance(node.get(key), list):
            children += [([*path, key, str(i)], sub) for i, sub in enumerate(node[key])]
    for key in _MAP:
        if isinstance(node.get(key), dict):
            children += [([*path, key, name], sub) for name, sub in node[key].items()]
    for sub_path, sub in children:
        found = _unsupported_keyword(sub, sub_path, unsupported)
        if found is not None:
            return found
    at = "/".join(path) or "(root)"
    for keyword in _XGRAMMAR_IGNORES:
        if keyword in node:
            return keyword, at
    ref = node.get("$ref")
    if isinstance(ref, str) and not ref.startswith("#"):
        return "$ref", at  # xgrammar resolves only refs inside the schema; others allow anything
    if not unsupported(node):
        return None
    for keyword in _XGRAMMAR_HINTS:
        if keyword in node and not unsupported({k: v for k, v in node.items() if k != keyword}):
            return keyword, at
    return next(iter(node), "(schema)"), at


def bounded_tool_whitespace(parser_cls: type) -> type:
    """vLLM's parser class (the tool parser composed by ``ParserManager``), whose tool-call
    grammar allows at most one whitespace character between JSON tokens.

    A guided tool call is an xgrammar structural tag (the call envelope + a ``json_schema`` format
    per tool), and vLLM's ``disable_any_whitespace`` reaches only ``response_format`` JSON, not
    these formats: an untrained model wrote tabs until ``max_tokens``. xgrammar's own knob on the
    format, ``max_whitespace_cnt`` (≥ 1), bounds it; set wherever the format does not set it."""
    import json

    class BoundedWhitespaceParser(parser_cls):
        def adjust_request(self, request):
            request = super().adjust_request(request)
            guided = getattr(request, "structured_outputs", None)
            tag = getattr(guided, "structural_tag", None)
            if isinstance(tag, str):
                guided.structural_tag = json.dumps(_bound_whitespace(json.loads(tag)))
            return request

    BoundedWhitespaceParser.__name__ = BoundedWhitespaceParser.__qualname__ = (
        f"BoundedWhitespace{parser_cls.__name__}")
    return BoundedWhitespaceParser


def _bound_whitespace(node: Any) -> Any:
    if isinstance(node, dict):
        if node.get("type") == "json_schema" and "json_schema" in node:  # the schema: as sent
            return {**node, "max_whitespace_cnt": node.get("max_whitespace_cnt") or 1}
        return {k: _bound_whitespace(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_bound_whitespace(v) for v in node]
    return node


def _death_reason(client) -> str:
    """What happened to the engine core processes of an errored ``AsyncLLM``: which exited, how
    (a negative exit code is the signal that killed it), from vLLM's process manager."""
    import signal

    manager = getattr(getattr(getattr(client, "engine_core", None), "resources", None),
                      "engine_manager", None)
    gone = []
    for proc in getattr(manager, "processes", None) or []:
        code = proc.exitcode
        if code is None:
            continue
        if code < 0:
            try:
                how = f"killed by signal {-code} ({signal.Signals(-code).name})"
            except ValueError:
                how = f"killed by signal {-code}"
        else:
            how = f"exit code {code}"
        gone.append(f"its process {proc.name} (pid {proc.pid}) exited, {how}")
    return "; ".join(gone) or "the engine core stopped answering (vLLM: EngineDeadError)"


@contextmanager
def _env(values: dict[str, str]) -> Iterator[None]:
    """``values`` in ``os.environ`` for the block, the previous values back after it (the replica
    or test process that starts the engine keeps its own)."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
