"""GRPO rollouts from a vLLM engine running as a Ray actor, one per job, kept warm for the whole job.

The driver (``run.py``) starts ``RolloutEngine`` as a named actor (``grpo-rollout-<studio>-job-<id>``
in the ``studio-train`` namespace, owned by the driver so it dies with it) before Ray Train starts;
the GRPO workers look it up by name. Each generation step:

1. rank 0 sends the policy's LoRA factors (``grpo_sync.lora_factors``: A, B and the scaling of every
   adapted module, a few MB, through Ray, so the actor may live on another node) and the engine's
   worker merges them into its copy of the base weights and reloads them in place
   (``grpo_sync.PolicySync`` through ``collective_rpc``); then the actor resets vLLM's prefix cache,
   whose blocks were computed with the previous weights. No file, no adapter id, no LoRA kernels.
2. every rank sends its prompts (token ids, already chat-templated by the trainer's tokenizer) and
   gets ``n`` sampled completions per prompt, checked to come from this step's policy.

A dead engine (its EngineCore or worker process gone) fails the step with an error that names the
rollout engine; the attempt fails and the scheduler's retry starts a new engine and resumes from
the job's latest checkpoint. vLLM facts this relies on (ARCHITECTURE.md): on CPU keep the engine in
local processes (the Ray executor asks for GPU bundles), size the KV cache with
VLLM_CPU_KVCACHE_SPACE, enforce_eager; CPU threads: ``cpu_env``.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib.util
import math
import os
import time
import uuid
from collections.abc import Callable
from typing import Any

NAMESPACE = "studio-train"
POLICY_SYNC = "studio.train.grpo_sync.PolicySync"  # vLLM worker extension (worker_extension_cls)


def log(msg: str) -> None:
    print(f"[studio.train.rollout] {msg}", flush=True)  # actor stdout reaches the job's log


def actor_name(db_url: str, job_id: int) -> str:
    # Job ids repeat across studios (databases) sharing a cluster: key the name on both.
    return f"grpo-rollout-{hashlib.sha1(db_url.encode()).hexdigest()[:8]}-job-{job_id}"


class RolloutEngineError(RuntimeError):
    """The rollout engine failed a step (e.g. its EngineCore or worker process died)."""


def cpu_env(cfg: dict[str, Any]) -> dict[str, str]:
    """Environment for a CPU engine, set before it starts (its processes inherit it)."""
    env = {"VLLM_CPU_KVCACHE_SPACE": str(max(1, math.ceil(cfg["kv_cache_space_gib"])))}  # vLLM reads an int
    if cfg["cpu_processes"] == 1:
        # Scheduler and model in the EngineCore process: no worker process whose shared-memory queue
        # both sides busy-poll (sched_yield) for 1 s after every message, stealing the trainers' cores
        # when a rollout ends; the OpenMP threads span every core (the trainers wait meanwhile).
        threads = cfg["cpu_threads"] or len(os.sched_getaffinity(0))
        env |= {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "OMP_NUM_THREADS": str(threads)}
    elif cfg.get("reserved_cpus") is not None:
        env["VLLM_CPU_NUM_OF_RESERVED_CPU"] = str(cfg["reserved_cpus"])
    return env


class RolloutEngine:
    """vLLM ``AsyncLLM`` in an async Ray actor, the policy pushed into its weights each step.
    ``start`` reports instead of raising when vLLM cannot be imported, so the driver can fall back to
    HF generate and say so."""

    def __init__(self, model: str, rollout: dict[str, Any], seed: int = 0, name: str = "rollout engine"):
        self.model = model
        self.cfg = rollout  # RolloutSpec as JSON
        self.seed = seed
        self.name = name
        self.engine = None
        self.version: int | None = None  # the policy step whose weights the engine holds
        self.lock = asyncio.Lock()
        self.stats = {"requests": 0, "completion_tokens": 0, "generate_s": 0.0, "policy_loads": 0,
                      "policy_load_s": 0.0}

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
            os.environ.update(cpu_env(self.cfg))
        args = AsyncEngineArgs(
            model=self.model,
            distributed_executor_backend=("uni" if self.cfg["cpu_processes"] == 1 else "mp") if cpu else None,
            dtype=self.cfg["dtype"],
            max_model_len=self.cfg["max_model_len"],
            max_num_seqs=self.cfg["max_num_seqs"],
            enforce_eager=self.cfg["enforce_eager"],
            gpu_memory_utilization=self.cfg["gpu_memory_utilization"],
            worker_extension_cls=POLICY_SYNC,
            seed=self.seed,
        )
        try:
            self.engine = AsyncLLM.from_engine_args(args)
        except Exception as e:  # vLLM's config errors are pydantic errors that do not pickle across Ray
            raise RuntimeError(f"vLLM could not start {self.model!r}: {e}") from None
        log(f"vLLM {vllm.__version__} engine ready for {self.model} in {time.monotonic() - t0:.0f} s")
        return {"ok": True, "vllm": vllm.__version__, "start_s": time.monotonic() - t0}

    def _failed(self, what: str, e: BaseException) -> RolloutEngineError:
        return RolloutEngineError(f"the GRPO rollout engine ({self.name}) failed while {what}: "
                                  f"{type(e).__name__}: {e}")

    async def load_policy(self, version: int, factors: dict[str, Any]) -> dict[str, Any]:
        """Merge the LoRA ``factors`` of policy step ``version`` into the engine's weights, in place."""
        from studio.train.grpo_sync import pack_factors

        async with self.lock:
            if version == self.version:
                return {"policy_step": version, "loaded": False}
            t0 = time.monotonic()
            try:
                done = await self.engine.collective_rpc("studio_load_policy", args=pack_factors(factors))
                await self.engine.reset_prefix_cache()  # its KV blocks came from the previous weights
            except Exception as e:  # noqa: BLE001 - e.g. EngineDeadError: the job must say which engine
                raise self._failed(f"loading policy step {version}", e) from None
            self.version = version
            seconds = time.monotonic() - t0
            self.stats["policy_loads"] += 1
            self.stats["policy_load_s"] += seconds
        log(f"policy step {version} loaded in place: {done[0]['modules']} LoRA modules merged into "
            f"{done[0]['weights']} weights in {seconds * 1000:.0f} ms, prefix cache reset")
        return {"policy_step": version, "loaded": True, "seconds": seconds}

    async def generate(self, prompt_ids: list[list[int]], counts: list[int], version: int,
                       sampling: dict[str, Any]) -> dict[str, Any]:
        """``counts[i]`` completions for ``prompt_ids[i]`` from the policy of step ``version``."""
        from vllm import SamplingParams, TokensPrompt
        from vllm.sampling_params import RequestOutputKind

        if self.version != version:
            raise RuntimeError(f"the rollout engine holds policy step {self.version}, not {version}; "
                               "load_policy must run first")
        t0 = time.monotonic()

        async def one(ids: list[int], n: int):
            # Token ids only: TRL decodes them itself, so vLLM need not detokenize (CPU time).
            params = SamplingParams(n=n, output_kind=RequestOutputKind.FINAL_ONLY,
                                    **{"detokenize": False, "logprobs": None, **sampling})
            final = None
            async for out in self.engine.generate(TokensPrompt(prompt_token_ids=ids), params,
                                                  request_id=uuid.uuid4().hex):
                final = out
            return final

        try:
            outputs = await asyncio.gather(*(one(ids, n) for ids, n in zip(prompt_ids, counts, strict=True)))
        except Exception as e:  # noqa: BLE001 - e.g. EngineDeadError: the job must say which engine
            raise self._failed(f"sampling step {version}", e) from None
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
        log(f"policy step {version}: {len(completion_ids)} completions for {len(prompt_ids)} prompts, "
            f"{tokens} tokens in {seconds:.2f} s")
        return {"completion_ids": completion_ids, "logprobs": logprobs or None, "policy_step": version,
                "tokens": tokens, "seconds": seconds}

    def get_stats(self) -> dict[str, Any]:
        return dict(self.stats)

    def shutdown(self) -> None:
        if self.engine is not None:
            self.engine.shutdown()
            self.engine = None


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
    ).remote(base_model, grpo.rollout.model_dump(mode="json"), spec.hyper.seed, name)
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
