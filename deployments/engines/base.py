"""One small engine interface, with vLLM and SGLang behind it, and the config that picks one.

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

from pydantic import Field, model_validator

from studio.errors import StudioError
from studio.recipes import Spec

Endpoint = Literal["chat", "completions"]
GenerateResult = dict[str, Any] | AsyncIterator[str]


class EngineConfig(Spec):
    """What an engine serves and how. Fields map onto vLLM's engine args (SGLang's where it has
    the same knob); CPU defaults are the ones measured to work on a small machine."""

    model: str = Field(description="Base model: a local directory or a model hub id.")
    served_model_name: str | None = Field(
        default=None,
        description="Name requests use for the base model (the request's `model`); default: model.",
    )
    engine: Literal["vllm", "sglang"] = Field(
        default="vllm", description="Inference engine. SGLang needs a CUDA GPU."
    )
    dtype: str = Field(
        default="auto",
        description="Weight/activation dtype: auto, float32, bfloat16, float16. vLLM on CPU turns "
        "auto into bfloat16; the tiny test model needs float32 to match transformers.",
    )
    max_model_len: int | None = Field(
        default=None, ge=16, description="Context length in tokens; default: the model's own."
    )
    max_loras: int = Field(
        default=4, ge=1, description="Adapters loaded at once (and in one batch); the least "
        "recently used one is evicted when another must load."
    )
    max_lora_rank: int = Field(default=16, ge=1, description="Largest LoRA rank accepted.")
    max_num_seqs: int = Field(default=16, ge=1, description="Sequences decoded together at most.")
    enforce_eager: bool = Field(
        default=True,
        description="Skip graph capture/compilation: on CPU compile warm-up costs a minute; "
        "turn it off on GPUs for throughput.",
    )
    kv_cache_space_gib: int | None = Field(
        default=1, ge=1, description="KV cache size on CPU in whole GiB (VLLM_CPU_KVCACHE_SPACE, "
        "which vLLM reads as an integer); ignored on GPU, where gpu_memory_utilization sizes it."
    )
    gpu_memory_utilization: float = Field(
        default=0.9, gt=0, le=1,
        description="Fraction of GPU memory the engine may take (GPU only).",
    )
    tensor_parallel_size: int = Field(default=1, ge=1, description="GPUs one replica shards over.")
    seed: int = Field(default=0, description="Sampling seed of the engine.")

    @model_validator(mode="after")
    def _sglang_needs_cuda(self) -> EngineConfig:
        # Fail when the config is read, not minutes later inside a replica that never gets ready.
        if self.engine == "sglang" and not cuda_available():
            raise StudioError(
                "SGLang needs a CUDA GPU, and there is none on this machine or in the connected "
                "Ray cluster",
                "use `engine: vllm` on CPU; on a GPU machine install the `sglang` extra "
                "(pip install -e '.[sglang]')",
            )
        return self

    @property
    def name(self) -> str:
        return self.served_model_name or self.model


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

    async def stats(self) -> dict[str, Any]:
        """Load and adapter numbers for the router and /metrics."""

    def shutdown(self) -> None:
        """Stop the engine's processes (synchronous: it runs from destructors too)."""


def make_engine(config: EngineConfig) -> Engine:
    """The engine ``config.engine`` names; its package is imported only here, on the replica."""
    if config.engine == "sglang":
        from deployments.engines.sglang_engine import SGLangEngine

        return SGLangEngine(config)
    from deployments.engines.vllm_engine import VLLMEngine

    return VLLMEngine(config)


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
