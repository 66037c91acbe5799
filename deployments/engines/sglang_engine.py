"""The SGLang engine: ``sglang.Engine`` behind SGLang's own OpenAI serving classes, GPU only.

SGLang installs only with CUDA torch and cannot run on CPU; it is the optional ``sglang`` extra and
is imported here, lazily, on the GPU replica that runs it. Building the deployment
(``deployments.model.check_device``) refuses ``engine: sglang`` where no CUDA GPU is visible. Not exercised by the CPU test suite: tests marked
``gpu`` run it on a GPU machine.

As with vLLM, the protocol is SGLang's: ``OpenAIServingChat`` / ``OpenAIServingCompletion`` built
around the engine's tokenizer manager, as SGLang's HTTP server builds them. Adapters load through
the tokenizer manager under their version-unique id; a request selects one with ``lora_path``.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import ValidationError

from deployments.engines.base import (
    Endpoint,
    EngineAdapters,
    GenerateResult,
    check_request,
    error_body,
    released_after,
)
from studio.errors import StudioError, Unavailable
from studio.serving.config import EngineConfig

_INSTALL = ("make SGLang's own environment: make setup GPU=1 SGLANG=1, and set "
            "STUDIO_SGLANG_PYTHON=.venv-sglang/bin/python (SGLang cannot share vLLM's environment)")


class SGLangEngine:
    def __init__(self, config: EngineConfig):
        self.config = config
        self._engine = None
        self._chat = self._completion = None
        self._adapters = EngineAdapters(config, self._load, self._unload)

    def engine_kwargs(self) -> dict[str, Any]:
        c = self.config
        return {
            "model_path": c.model,
            "served_model_name": c.name,
            "dtype": c.dtype,
            "context_length": c.max_model_len,
            "enable_lora": True,
            "max_loras_per_batch": c.max_loras,
            "max_loaded_loras": c.max_loras,
            "max_lora_rank": c.max_lora_rank,
            "lora_target_modules": ["all"],  # adapters may target any linear layer
            "max_running_requests": c.max_num_seqs,
            "disable_cuda_graph": c.enforce_eager,
            "mem_fraction_static": c.gpu_memory_utilization,
            "tp_size": c.tensor_parallel_size,
            "random_seed": c.seed,
            # SGLang's own names for these (its tool parsers are named differently from vLLM's).
            "tool_call_parser": c.tool_call_parser,
            "chat_template": c.chat_template,
        }

    async def start(self) -> None:
        if self._engine is not None:
            return
        try:
            import sglang
            from sglang.srt.entrypoints.openai.serving_chat import OpenAIServingChat
            from sglang.srt.entrypoints.openai.serving_completions import OpenAIServingCompletion
        except ImportError as e:
            raise StudioError(f"SGLang is not installed here ({e})", _INSTALL) from None
        kwargs = {k: v for k, v in self.engine_kwargs().items() if v is not None}
        self._engine = sglang.Engine(**kwargs)
        tm, templates = self._engine.tokenizer_manager, self._engine.template_manager
        self._chat = OpenAIServingChat(tm, templates)
        self._completion = OpenAIServingCompletion(tm, templates)

    async def generate(self, endpoint: Endpoint, request: dict[str, Any]) -> GenerateResult:
        refused = check_request(self.config, endpoint, request)
        if refused is not None:
            return refused
        from sglang.srt.entrypoints.openai.protocol import (
            ChatCompletionRequest,
            CompletionRequest,
            ErrorResponse,
        )
        from starlette.responses import Response, StreamingResponse

        if self._engine is None:
            return error_body("the engine is not started", 503, "ServiceUnavailableError")
        body = dict(request)
        model = body.get("model") or ""
        if model in self._adapters:
            body.update(model=self.config.name, lora_path=model)
        elif model and model != self.config.name:
            return error_body(f"The model `{model}` does not exist.", 404, "NotFoundError", "model")
        try:
            parsed = (ChatCompletionRequest if endpoint == "chat" else CompletionRequest)(**body)
        except ValidationError as e:
            return error_body(str(e.errors()[0]["msg"]), 400)
        release = await self._adapters.acquire(model)
        if isinstance(release, dict):
            return release
        serving = self._chat if endpoint == "chat" else self._completion
        try:
            result = await serving.handle_request(parsed, None)
        except Exception as e:  # noqa: BLE001 — reported in OpenAI's shape
            release()
            return error_body(str(e), 500, "InternalServerError")
        if isinstance(result, StreamingResponse):
            return released_after(result.body_iterator, release)
        release()
        if isinstance(result, ErrorResponse):  # SGLang's error is flat; ours nests under "error"
            return error_body(result.message, result.code, result.type, result.param)
        if isinstance(result, Response):
            return json.loads(result.body)
        return result.model_dump(mode="json")

    async def add_adapter(self, adapter_id: str, path: str) -> None:
        await self._adapters.add(adapter_id, path)

    async def remove_adapter(self, adapter_id: str) -> None:
        await self._adapters.remove(adapter_id)

    def has_adapter(self, adapter_id: str) -> bool:
        return adapter_id in self._adapters

    def list_adapters(self) -> list[dict[str, Any]]:
        return self._adapters.describe()

    async def _load(self, adapter_id: str, path: str) -> None:
        from sglang.srt.managers.io_struct import LoadLoRAAdapterReqInput

        result = await self._engine.tokenizer_manager.load_lora_adapter(
            LoadLoRAAdapterReqInput(lora_name=adapter_id, lora_path=path), None)
        if not getattr(result, "success", True):
            raise StudioError(f"SGLang could not load adapter {adapter_id!r} from {path}: "
                              f"{getattr(result, 'error_message', result)}",
                              "check the adapter directory")

    async def _unload(self, adapter_id: str) -> None:
        from sglang.srt.managers.io_struct import UnloadLoRAAdapterReqInput

        await self._engine.tokenizer_manager.unload_lora_adapter(
            UnloadLoRAAdapterReqInput(lora_name=adapter_id), None)

    async def health(self) -> None:
        # The in-process Engine has no health probe (SGLang's lives in its HTTP server); a dead
        # scheduler surfaces as failed requests.
        if self._engine is None:
            raise Unavailable("the SGLang engine is not started", "wait for the replica to start")

    def dead(self) -> str | None:
        return None  # not watched: see ``health``

    async def stats(self) -> dict[str, Any]:
        return {"engine": "sglang", "model": self.config.model,
                "served_model_name": self.config.name, "started": self._engine is not None,
                "adapters": self._adapters.stats()}

    def shutdown(self) -> None:
        if self._engine is not None:
            self._engine.shutdown()
            self._engine = None

