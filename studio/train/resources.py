"""Free resources a training run is planned against (``studio.train.plan``): per node of the Ray
cluster this process is connected to (a Serve replica is), or this machine when Ray is not up, and
whether a recipe's workers fit on them."""

from __future__ import annotations

import os
import sys
from typing import Literal

from pydantic import BaseModel, Field

from studio.settings import StudioSettings
from studio.train.spec import TrainSpec

MiB = 2**20


class NodeResources(BaseModel):
    node: str = Field(description="Ray node id (or 'this machine').")
    cpus: float = Field(description="Logical CPUs in all.")
    gpus: float = Field(description="GPUs in all.")
    memory_mb: float = Field(description="Memory a worker may use in all: Ray's memory resource, or the machine's RAM.")
    free_cpus: float = Field(description="Logical CPUs not reserved now.")
    free_gpus: float = Field(description="GPUs not reserved now.")
    free_memory_mb: float = Field(description="Ray's unreserved memory resource, or the machine's available RAM.")
    gpu_memory_mb: float | None = Field(default=None, description="Memory of one GPU, when known (pynvml); else null.")


class FreeResources(BaseModel):
    source: Literal["ray", "machine"] = Field(description="ray: the connected cluster; machine: Ray is not up.")
    nodes: list[NodeResources]
    autoscaling: bool = Field(description="The cluster may add nodes (STUDIO_CLUSTER_MAX_GPUS set): counts do not refuse.")


class FitCheck(BaseModel):
    fits: bool = Field(description="The workers can be placed on the cluster's nodes (in all), memory included.")
    fits_now: bool = Field(description="They can be placed on what is free right now (else the job waits).")
    reason: str = Field(description="Why (not), in words.")
    knobs: list[str] = Field(default_factory=list, description="Overrides that would make it fit (when it does not).")
    resources: FreeResources


def free_resources(settings: StudioSettings | None = None) -> FreeResources:
    settings = settings or StudioSettings()
    autoscaling = settings.cluster_max_gpus is not None
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        from ray._private.state import available_resources_per_node

        free = available_resources_per_node()
        nodes = []
        for n in ray.nodes():
            if not n.get("Alive"):
                continue
            total, avail = n.get("Resources") or {}, free.get(n["NodeID"], {})
            nodes.append(NodeResources(
                node=n["NodeID"][:12], cpus=total.get("CPU", 0.0), gpus=total.get("GPU", 0.0),
                memory_mb=total.get("memory", 0.0) / MiB, free_cpus=avail.get("CPU", 0.0),
                free_gpus=avail.get("GPU", 0.0), free_memory_mb=avail.get("memory", 0.0) / MiB,
                gpu_memory_mb=_local_gpu_memory_mb() if total.get("GPU") else None))
        return FreeResources(source="ray", nodes=nodes, autoscaling=autoscaling)
    import psutil

    vm = psutil.virtual_memory()
    gpus = float(_local_gpu_count())
    # Ray started by the studio advertises settings.ray_num_cpus logical CPUs (more than the cores).
    cpus = float(max(settings.ray_num_cpus, os.cpu_count() or 1))
    return FreeResources(source="machine", autoscaling=autoscaling, nodes=[NodeResources(
        node="this machine", cpus=cpus, gpus=gpus, memory_mb=vm.total / MiB, free_cpus=cpus, free_gpus=gpus,
        free_memory_mb=vm.available / MiB, gpu_memory_mb=_local_gpu_memory_mb() if gpus else None)])


def _local_gpu_count() -> int:
    try:
        import pynvml

        pynvml.nvmlInit()
        return pynvml.nvmlDeviceGetCount()
    except Exception:  # no NVIDIA driver or no pynvml: count none rather than initialize CUDA here
        return 0


def _local_gpu_memory_mb() -> float | None:
    try:
        import pynvml

        pynvml.nvmlInit()
        return pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(0)).total / MiB
    except Exception:  # unknown: the GPU memory is then not checked
        return None


def workers_placeable(spec: TrainSpec, per_worker_mb: float, device: str, nodes: list[NodeResources],
                      *, now: bool) -> int:
    """How many of the recipe's workers the nodes can hold (each worker on one node)."""
    r = spec.resources
    placed = 0
    for n in nodes:
        cpus, gpus = (n.free_cpus, n.free_gpus) if now else (n.cpus, n.gpus)
        fit = [int(cpus // r.cpus_per_worker)]
        if device == "gpu":
            fit.append(int(gpus // r.gpus_per_worker) if r.gpus_per_worker else fit[0])
            if n.gpu_memory_mb is not None and per_worker_mb > n.gpu_memory_mb:
                fit.append(0)
        else:
            memory = min(n.free_memory_mb, n.memory_mb) if now else n.memory_mb
            fit.append(int(memory // per_worker_mb) if per_worker_mb > 0 else fit[0])
        placed += max(0, min(fit))
    return placed


def check_fit(spec: TrainSpec, per_worker_mb: float, device: str, free: FreeResources) -> FitCheck:
    """Whether ``spec``'s workers, ``per_worker_mb`` each, fit the nodes; knobs are filled in by the plan."""
    want = spec.resources.num_workers
    ever = workers_placeable(spec, per_worker_mb, device, free.nodes, now=False)
    now = workers_placeable(spec, per_worker_mb, device, free.nodes, now=True)
    biggest = max(((n.gpu_memory_mb or 0.0) if device == "gpu" else n.memory_mb for n in free.nodes), default=0.0)
    where = "the Ray cluster" if free.source == "ray" else "this machine (Ray is not up)"
    too_big = biggest > 0 and per_worker_mb > biggest
    if too_big:
        mem = "GPU memory" if device == "gpu" else "memory"
        reason = (f"one worker needs ~{per_worker_mb:,.0f} MiB but the largest node of {where} has "
                  f"{biggest:,.0f} MiB of {mem}")
    elif ever < want and not free.autoscaling:
        reason = (f"{where} can place {ever} of the {want} workers ({spec.resources.cpus_per_worker:g} CPU"
                  f"{f', {spec.resources.gpus_per_worker:g} GPU' if device == 'gpu' else ''} and "
                  f"~{per_worker_mb:,.0f} MiB each)")
    else:
        reason = (f"{want} worker(s) of ~{per_worker_mb:,.0f} MiB fit {where}"
                  + ("" if now >= want else f"; {now} fit what is free now, so the job waits for the rest"))
    fits = not too_big and (ever >= want or free.autoscaling)
    return FitCheck(fits=fits, fits_now=fits and now >= want, reason=reason, resources=free)
