"""Engine name -> engine class. The base class (``deployments.engines.base``) knows no engine; each
engine's package (vLLM, SGLang) is imported only when a replica makes that engine."""

from __future__ import annotations

from importlib import import_module

from deployments.engines.base import Engine, EngineConfig

ENGINES = {
    "vllm": "deployments.engines.vllm_engine:VLLMEngine",
    "sglang": "deployments.engines.sglang_engine:SGLangEngine",
}


def make_engine(config: EngineConfig) -> Engine:
    """The engine ``config.engine`` names (``EngineConfig`` validates the name)."""
    module, _, cls = ENGINES[config.engine].partition(":")
    return getattr(import_module(module), cls)(config)
