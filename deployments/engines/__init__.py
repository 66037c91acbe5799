"""Inference engines behind one small interface (``base.Engine``): vLLM (CPU and GPU) and SGLang
(GPU only). Engine packages are imported lazily, on the replica that runs them."""

from deployments.engines.base import Engine, EngineConfig
from deployments.engines.registry import make_engine

__all__ = ["Engine", "EngineConfig", "make_engine"]
