"""Checks that run before a training job is queued (API/CLI) and again before any worker starts
(the entrypoint): every input exists and fits the method, so a bad job fails in seconds, clearly."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

from sqlalchemy.orm import Session

from studio.data.snapshots import resolve_snapshot
from studio.errors import StudioError
from studio.models.source import resolve_model_source
from studio.train.spec import METHOD_KINDS, TrainSpec


@dataclass
class ResolvedInputs:
    base_model: str  # absolute directory or hub id
    snapshot_id: str
    snapshot_uri: str
    snapshot_kind: str
    dataset_ref: str  # name@N when the dataset was named, else the id


def preflight(spec: TrainSpec, session: Session, *, cluster_gpus: float | None = None) -> ResolvedInputs:
    """Resolve and check the job's inputs. ``cluster_gpus``: GPUs the Ray cluster has, when known."""
    base = resolve_model_source(spec.base_model)
    ref = resolve_snapshot(session, spec.data.dataset)
    snap = ref.snapshot
    allowed = METHOD_KINDS[spec.method]
    if snap.kind not in allowed:
        raise StudioError(
            f"dataset {spec.data.dataset!r} holds {snap.kind} rows, but {spec.method.upper()} trains on "
            f"{' or '.join(allowed)} rows",
            f"use a {' or '.join(allowed)} dataset for method {spec.method}, or pick the method that fits",
        )
    if spec.resources.use_gpu and cluster_gpus is not None and cluster_gpus < spec.resources.num_workers * spec.resources.gpus_per_worker:
        raise StudioError(
            f"the job asks for {spec.resources.num_workers * spec.resources.gpus_per_worker:g} GPU(s) "
            f"(use_gpu: true) but the Ray cluster has {cluster_gpus:g}",
            "set resources.use_gpu=false to train on CPU, or add GPU nodes to the cluster",
        )
    if spec.adapter == "qlora" and importlib.util.find_spec("bitsandbytes") is None:
        raise StudioError("adapter: qlora needs bitsandbytes, which is not installed",
                          "install bitsandbytes or use adapter: lora")
    if spec.deepspeed is not None and importlib.util.find_spec("deepspeed") is None:
        raise StudioError("a deepspeed section needs the deepspeed package", "install it or remove the section")
    if spec.deepspeed is not None and not spec.resources.use_gpu:
        # Seen with accelerate 1.15 under Ray Train: on CPU workers it sets up no distributed state for
        # DeepSpeed (world size 1 in a 2-process group), so the first collective fails.
        raise StudioError("a deepspeed section needs GPU workers (resources.use_gpu: true)",
                          "remove the deepspeed section to train on CPU (plain DDP), or set resources.use_gpu=true")
    if spec.grpo is not None:
        check_grpo(spec)
    dataset_ref = f"{ref.name}@{ref.version}" if ref.name else snap.id
    return ResolvedInputs(base, snap.id, snap.uri, snap.kind, dataset_ref)


def check_grpo(spec: TrainSpec) -> None:
    """Rewards build (a python callable imports, a regex compiles, a schema is a schema), and vLLM
    rollouts have a LoRA to load each step."""
    from studio.train.rewards import build_reward_funcs

    if spec.adapter == "full" and spec.grpo.rollout.engine == "vllm":
        raise StudioError("GRPO with vLLM rollouts trains a LoRA adapter (the rollout engine loads the policy's "
                          "LoRA each step); adapter: full is not supported with them",
                          "use adapter: lora (or qlora), or grpo.rollout.engine=hf for full fine-tuning")
    build_reward_funcs(spec.grpo.rewards)
