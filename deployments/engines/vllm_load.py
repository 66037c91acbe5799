"""The load of a vLLM engine, as its own stat loggers see it: running and waiting requests,
KV-cache use and generated tokens. vLLM hands every logger the scheduler's figures after each
engine step (``log_stats``, on by default); this one keeps the latest for ``VLLMEngine.stats``."""

from __future__ import annotations

from typing import Any

from vllm.v1.metrics.loggers import StatLoggerBase


class EngineLoad:
    """Latest figures, shared by the engine and the logger vLLM builds from ``factory``."""

    def __init__(self):
        self.running = self.waiting = 0
        self.kv_cache_usage = 0.0
        self.generated_tokens = 0  # since the engine started; the Router turns it into tokens/s

    def factory(self, vllm_config, engine_index: int = 0) -> StatLoggerBase:
        return _LoadLogger(self)

    def as_dict(self) -> dict[str, Any]:
        return {"running_requests": self.running, "waiting_requests": self.waiting,
                "kv_cache_usage": self.kv_cache_usage,
                "generated_tokens_total": self.generated_tokens}


class _LoadLogger(StatLoggerBase):
    def __init__(self, load: EngineLoad):  # noqa: D107 — vLLM calls the factory, not this
        self.load = load

    def record(self, scheduler_stats, iteration_stats, mm_cache_stats=None, engine_idx: int = 0):
        if scheduler_stats is not None:
            self.load.running = scheduler_stats.num_running_reqs
            self.load.waiting = scheduler_stats.num_waiting_reqs
            self.load.kv_cache_usage = scheduler_stats.kv_cache_usage
        if iteration_stats is not None:
            self.load.generated_tokens += iteration_stats.num_generation_tokens

    def log_engine_initialized(self):
        pass
