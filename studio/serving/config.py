"""What a served base model is: its engine (``EngineConfig``) and how Serve places and scales it
(``ModelDeploymentConfig``). Shared by the serving recipes and the API (services) and by the Serve
deployments in ``deployments/`` (which import them from here). Validation only checks the config
itself; whether this cluster can run it (a GPU for SGLang) is checked when it is built
(``deployments.model.build_model_deployment``)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from studio.errors import StudioError
from studio.recipes import Spec


COMPACT_BACKENDS = ("auto", "xgrammar", "guidance")  # vLLM's disable_any_whitespace: these only


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
    stream_interval: int = Field(
        default=1, ge=1, description="Tokens per streamed chunk after the first (vLLM's "
        "stream_interval; the first token is always sent at once). Each chunk crosses the "
        "Serve hops (model replica → Router → ingress) as one message, so on a small CPU "
        "machine 4-8 cuts that overhead several-fold; 1 streams token by token."
    )
    chat_template: str | None = Field(
        default=None, description="Chat template (a Jinja file path or the template itself) "
        "replacing the model's own; for tools it must render the request's `tools`."
    )
    tool_call_parser: str | None = Field(
        default=None, description="vLLM tool parser that turns the model's output into OpenAI "
        "`tool_calls` (e.g. hermes for ChatML-style models such as the tiny one, llama3_json, "
        "mistral); needed for any `tool_choice` other than none."
    )
    enable_auto_tool_choice: bool = Field(
        default=False, description="Let the model decide to call a tool (`tool_choice: auto`, "
        "the default when a request has tools); needs tool_call_parser."
    )
    tool_strict_level: Literal["auto", "function", "parameter"] = Field(
        default="auto", description="How tightly vLLM guides tool calls: auto (when tool_choice "
        "forces a call — required or a named function — the call and its arguments, pinned to "
        "the tool's schema unless the tool says `strict: false`; with tool_choice auto, only "
        "tools sent with `strict: true`), function (the call's envelope for every request with "
        "tools), parameter (also every tool's arguments, as if all were strict)."
    )
    structured_outputs_backend: Literal[
        "auto", "xgrammar", "guidance", "outlines", "lm-format-enforcer", "none"] = Field(
        default="auto", description="Guided-decoding library for `response_format` JSON schemas "
        "and named/required tool choices; `none`: this engine does not guide, and such requests "
        "get a 400."
    )
    structured_outputs_compact: bool | None = Field(
        default=None, description="Guided JSON without free whitespace: none in `response_format` "
        "JSON, at most one character between tokens of tool-call arguments. Keeps a weak model "
        "from writing spaces until max_tokens (the untrained tiny model does). xgrammar/guidance "
        "only; with backend auto this picks xgrammar (whose unsupported schema keywords are then "
        "a 400). None (default): on with backends auto, xgrammar and guidance, off with the others."
    )

    @model_validator(mode="after")
    def _tools_need_a_parser(self) -> EngineConfig:
        if self.enable_auto_tool_choice and not self.tool_call_parser:
            raise ValueError("enable_auto_tool_choice needs tool_call_parser (e.g. hermes)")
        if self.structured_outputs_compact and self.structured_outputs_backend not in (
                COMPACT_BACKENDS):
            raise ValueError("structured_outputs_compact works with the xgrammar or guidance "
                             "backend only")
        return self

    @property
    def name(self) -> str:
        return self.served_model_name or self.model

    @property
    def compact_json(self) -> bool:
        """Whether guided JSON is compact: the field, or by default wherever the backend can."""
        if self.structured_outputs_compact is not None:
            return self.structured_outputs_compact
        return self.structured_outputs_backend in COMPACT_BACKENDS


class AutoscalingSpec(Spec):
    """Serve autoscaling of one model's replicas (each replica holds one engine)."""

    min_replicas: int = Field(default=1, ge=0, description="Replicas kept when idle.")
    max_replicas: int = Field(default=1, ge=1, description="Replicas at most.")
    target_ongoing_requests: float = Field(
        default=8, gt=0, description="In-flight requests per replica Serve scales towards.")


class ModelDeploymentConfig(Spec):
    """One base model's deployment: its engine and how Serve places and scales it."""

    engine: EngineConfig = Field(description="The inference engine and what it serves.")
    num_replicas: int = Field(default=1, ge=1, description="Replicas, when not autoscaling.")
    autoscaling: AutoscalingSpec | None = Field(
        default=None, description="Autoscale between min and max replicas (replaces num_replicas).")
    num_cpus: float = Field(
        default=1.0, gt=0, description="Logical CPUs a replica reserves; fractional is fine.")
    num_gpus: float = Field(
        default=0, ge=0,
        description="GPUs a replica reserves: 0 on CPU, tensor_parallel_size on GPU.")
    memory_gib: float | None = Field(
        default=None, gt=0, description="Memory a replica reserves in Ray's accounting (GiB; "
        "a vLLM CPU engine of a small model takes about 3): a deploy the cluster cannot hold "
        "then fails up front, naming the memory missing. None: reserve nothing.")
    resources: dict[str, float] = Field(
        default_factory=dict, description="Custom Ray resources a replica reserves, e.g. "
        "{serving: 1}: on a cluster this pins replicas to the serving worker group "
        "(cluster/aws.yaml), so training cannot take their GPUs.")
    max_ongoing_requests: int = Field(
        default=32, ge=1, description="Requests one replica takes at once before Serve queues.")
    adapter_cache_dir: str | None = Field(
        default=None, description="Local directory adapters are fetched into; default "
        "$STUDIO_HOME/cache/adapters.")

    @model_validator(mode="after")
    def _engine_has_its_device(self) -> ModelDeploymentConfig:
        if self.engine.engine == "sglang" and self.num_gpus <= 0:
            raise StudioError("an SGLang deployment reserves no GPU (num_gpus is 0)",
                              "set num_gpus to the engine's tensor_parallel_size")
        return self


def deployment_name(base_model: str) -> str:
    """A Serve deployment name per base model: readable, unique, no '/' (which Serve rejects)."""
    tail = Path(base_model.rstrip("/")).name or "model"
    return f"Model-{tail}-{hashlib.sha256(base_model.encode()).hexdigest()[:8]}"


SERVE_BUILDERS = "studio.serve"


def serve_builder(name: str) -> Callable[..., Any]:
    """The Serve builder registered as ``name`` in the ``studio.serve`` entry points (pyproject:
    ``model_deployment`` is ``deployments.model:build_model_deployment``): the interface layer
    supplies it, the services only call it."""
    from importlib.metadata import entry_points

    found = entry_points(group=SERVE_BUILDERS, name=name)
    if not found:
        raise StudioError(f"no Serve builder {name!r} is installed (entry point group "
                          f"{SERVE_BUILDERS!r})", "reinstall the studio: `make setup` (pip install -e .)")
    return next(iter(found)).load()
