"""GRPO rollouts from a vLLM engine running as a Ray actor, one per job.

The driver (``run.py``) starts ``RolloutEngine`` as a named actor (``grpo-rollout-<studio>-job-<id>``
in the ``studio-train`` namespace, owned by the driver so it dies with it) before Ray Train starts;
the GRPO workers look it up by name. Each generation step:

1. rank 0 sends the policy's current LoRA weights (the two files of a PEFT directory, a few MB) and
   the engine registers them under a new adapter id ``policy-step-<N>`` with a new LoRA int id, then
   drops the previous version. Never an in-place reload under the same name: vLLM keys its prefix
   cache on the LoRA id, so a reused id could serve KV blocks computed with stale weights.
2. every rank sends its prompts (token ids, already chat-templated by the trainer's tokenizer) and
   gets ``n`` sampled completions per prompt with the sampled tokens' logprobs.

Weights travel as bytes through Ray (not a shared path), so the actor can live on another node.
vLLM facts this relies on (ARCHITECTURE.md): on CPU keep the engine in local processes (the Ray
executor asks for GPU bundles), size the KV cache with VLLM_CPU_KVCACHE_SPACE, enforce_eager.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib.util
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

NAMESPACE = "studio-train"


def log(msg: str) -> None:
    print(f"[studio.train.rollout] {msg}", flush=True)  # actor stdout reaches the job's log


def adapter_id(version: int) -> str:
    return f"policy-step-{version}"


def actor_name(db_url: str, job_id: int) -> str:
    # Job ids repeat across studios (databases) sharing a cluster: key the name on both.
    return f"grpo-rollout-{hashlib.sha1(db_url.encode()).hexdigest()[:8]}-job-{job_id}"


class RolloutEngine:
    """vLLM ``AsyncLLM`` with LoRA in an async Ray actor. ``start`` reports instead of raising when
    vLLM cannot be imported, so the driver can fall back to HF generate and say so."""

    def __init__(self, model: str, rollout: dict[str, Any], max_lora_rank: int, seed: int = 0):
        self.model = model
        self.cfg = rollout  # RolloutSpec as JSON
        self.max_lora_rank = max_lora_rank
        self.seed = seed
        self.engine = None
        self.loaded: dict[int, Any] = {}  # version → LoRARequest
        self.lock = asyncio.Lock()
        self.dir = Path(tempfile.mkdtemp(prefix="studio-rollout-"))
        self.stats = {"requests": 0, "completion_tokens": 0, "generate_s": 0.0}

    async def start(self) -> dict[str, Any]:
        t0 = time.monotonic()
        try:
            import vllm
            from vllm.engine.arg_utils import AsyncEngineArgs
            from vllm.platforms import current_platform
            from vllm.v1.engine.async_llm import AsyncLLM
        except Exception as e:  # noqa: BLE001 - any import failure means "no vLLM here"
            return {"ok": False, "reason": f"vLLM cannot be imported: {type(e).__name__}: {e}"}
        cpu = current_platform.is_cpu()
        if cpu:
            os.environ["VLLM_CPU_KVCACHE_SPACE"] = f"{self.cfg['kv_cache_space_gib']:g}"
            if self.cfg.get("reserved_cpus") is not None:
                os.environ["VLLM_CPU_NUM_OF_RESERVED_CPU"] = str(self.cfg["reserved_cpus"])
        args = AsyncEngineArgs(
            model=self.model,
            distributed_executor_backend="mp" if cpu else None,
            dtype=self.cfg["dtype"],
            max_model_len=self.cfg["max_model_len"],
            max_num_seqs=self.cfg["max_num_seqs"],
            enforce_eager=self.cfg["enforce_eager"],
            gpu_memory_utilization=self.cfg["gpu_memory_utilization"],
            enable_lora=True,
            max_loras=2,  # the current version, and the previous one until it is dropped
            max_cpu_loras=2,
            max_lora_rank=self.max_lora_rank,
            seed=self.seed,
        )
        try:
            self.engine = AsyncLLM.from_engine_args(args)
        except Exception as e:  # vLLM's config errors are pydantic errors that do not pickle across Ray
            raise RuntimeError(f"vLLM could not start {self.model!r}: {e}") from None
        log(f"vLLM {vllm.__version__} engine ready for {self.model} in {time.monotonic() - t0:.0f} s")
        return {"ok": True, "vllm": vllm.__version__, "start_s": time.monotonic() - t0}

    async def load_policy(self, version: int, files: dict[str, bytes]) -> str:
        """Register the policy's weights of step ``version`` as ``policy-step-<version>``."""
        from vllm.lora.request import LoRARequest

        name = adapter_id(version)
        async with self.lock:
            if version in self.loaded:
                return name
            path = self.dir / name
            path.mkdir(parents=True, exist_ok=True)
            for fname, data in files.items():
                (path / fname).write_bytes(data)
            request = LoRARequest(lora_name=name, lora_int_id=version + 1, lora_path=str(path))
            await self.engine.add_lora(request)
            for old in [v for v in self.loaded if v != version]:
                await self.engine.remove_lora(self.loaded.pop(old).lora_int_id)
                shutil.rmtree(self.dir / adapter_id(old), ignore_errors=True)
            self.loaded[version] = request
        log(f"loaded adapter {name} (LoRA id {version + 1}) into the vLLM engine")
        return name

    async def generate(self, prompt_ids: list[list[int]], counts: list[int], version: int,
                       sampling: dict[str, Any]) -> dict[str, Any]:
        """``counts[i]`` completions for ``prompt_ids[i]`` with adapter ``policy-step-<version>``."""
        from vllm import SamplingParams, TokensPrompt
        from vllm.sampling_params import RequestOutputKind

        lora = self.loaded.get(version)
        if lora is None:
            raise RuntimeError(f"adapter {adapter_id(version)} is not loaded; load_policy must run first")
        t0 = time.monotonic()

        async def one(ids: list[int], n: int):
            # Token ids only: TRL decodes them itself, so vLLM need not detokenize (CPU time).
            params = SamplingParams(n=n, output_kind=RequestOutputKind.FINAL_ONLY,
                                    **{"detokenize": False, "logprobs": None, **sampling})
            final = None
            async for out in self.engine.generate(TokensPrompt(prompt_token_ids=ids), params,
                                                  request_id=uuid.uuid4().hex, lora_request=lora):
                final = out
            return final

        outputs = await asyncio.gather(*(one(ids, n) for ids, n in zip(prompt_ids, counts, strict=True)))
        completion_ids, logprobs = [], []
        for out in outputs:
            for c in out.outputs:
                completion_ids.append(list(c.token_ids))
                if c.logprobs is not None:
                    logprobs.append([step[t].logprob for step, t in zip(c.logprobs, c.token_ids, strict=True)])
        seconds = time.monotonic() - t0
        tokens = sum(len(c) for c in completion_ids)
        self.stats["requests"] += len(prompt_ids)
        self.stats["completion_tokens"] += tokens
        self.stats["generate_s"] += seconds
        log(f"{lora.lora_name}: {len(completion_ids)} completions for {len(prompt_ids)} prompts, "
            f"{tokens} tokens in {seconds:.2f} s")
        return {"completion_ids": completion_ids, "logprobs": logprobs or None, "adapter_id": lora.lora_name,
                "tokens": tokens, "seconds": seconds}

    def get_stats(self) -> dict[str, Any]:
        return dict(self.stats)

    def shutdown(self) -> None:
        if self.engine is not None:
            self.engine.shutdown()
            self.engine = None
        shutil.rmtree(self.dir, ignore_errors=True)


def vllm_lora_rank(r: int) -> int:
    """vLLM accepts only these maximum LoRA ranks; the smallest that holds ``r``."""
    return next((x for x in (8, 16, 32, 64, 128, 256, 320, 512) if x >= r), r)


class RolloutActor:
    """The driver's handle on a started engine actor."""

    def __init__(self, handle, name: str):
        self.handle, self.name = handle, name

    def stop(self) -> None:
        import ray

        try:
            ray.get(self.handle.shutdown.remote(), timeout=60)
        except Exception:  # noqa: BLE001 - killing it below ends the engine's processes either way
            pass
        ray.kill(self.handle)


def start_rollout_actor(spec, base_model: str, name: str, say: Callable[[str], None],
                        start_timeout_s: float = 600) -> RolloutActor | None:
    """Start the job's vLLM rollout actor, or return None — after saying so loudly — when vLLM is
    unavailable here and GRPO must fall back to HF generate."""
    import ray

    grpo = spec.grpo
    if grpo.rollout.engine == "hf":
        say("WARNING: GRPO rollouts use HF generate inside the trainer (grpo.rollout.engine: hf), "
            "not vLLM: expect rollouts several times slower")
        return None
    if importlib.util.find_spec("vllm") is None:
        say("WARNING: vLLM is not installed: GRPO rollouts FALL BACK to HF generate inside the trainer "
            "(slow). Install the cpu or gpu extra to use vLLM rollout actors")
        return None
    have = ray.cluster_resources().get("GPU", 0.0)
    if grpo.rollout.num_gpus > have:  # the actor would wait forever for a GPU, without an error
        from studio.errors import StudioError

        raise StudioError(f"grpo.rollout.num_gpus={grpo.rollout.num_gpus:g} but the Ray cluster has {have:g} GPUs",
                          "set grpo.rollout.num_gpus=0 to roll out on CPU, or add GPU nodes")
    actor_cls = ray.remote(RolloutEngine)
    handle = actor_cls.options(
        name=name, namespace=NAMESPACE, num_cpus=grpo.rollout.num_cpus, num_gpus=grpo.rollout.num_gpus,
        max_concurrency=64,  # one rollout call per Ray Train worker at a time, plus load_policy
    ).remote(base_model, grpo.rollout.model_dump(mode="json"), vllm_lora_rank(spec.lora.r), spec.hyper.seed)
    say(f"starting vLLM rollout actor {name} for {base_model}")
    try:
        status = ray.get(handle.start.remote(), timeout=start_timeout_s)
    except BaseException:
        ray.kill(handle)
        raise
    if not status["ok"]:
        ray.kill(handle)
        say(f"WARNING: {status['reason']}: GRPO rollouts FALL BACK to HF generate inside the trainer (slow)")
        return None
    say(f"vLLM rollout actor {name} ready (vLLM {status['vllm']}, {status['start_s']:.0f} s)")
    return RolloutActor(handle, name)
