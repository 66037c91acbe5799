"""The studio on a Ray cluster: what a training job asks the cluster for, and the KubeRay manifest's
embedded Serve config, generated from the same ``configs/serve/*.yaml`` that ``studio up`` deploys.

    python -m studio.cluster serve-config configs/serve/studio_gpu.yaml   # print serveConfigV2
    python -m studio.cluster sync-kuberay                                  # rewrite it in the manifest

Scheduling contract (docs/production.md): every Ray Train worker reserves ``CPU`` (and ``GPU`` with
``use_gpu``) plus ``STUDIO_TRAIN_WORKER_RESOURCES`` (``{"training": 1}`` on a cluster, which only the
training worker group advertises) and, with ``resources.accelerator_type``, that accelerator. When the
cluster cannot place the workers, Ray Train's controller waits for them (its worker-group start
times out and is retried without limit), the autoscaler adds nodes for the pending demand, and the
job stays RUNNING rather than failing. Ray releases the resources when the run ends.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field

from studio.errors import StudioError
from studio.recipes import Spec, read_yaml
from studio.settings import StudioSettings

REPO = Path(__file__).resolve().parent.parent
KUBERAY_SERVICE = REPO / "cluster" / "kuberay" / "rayservice.yaml"
KUBERAY_SERVE_CONFIG = REPO / "configs" / "serve" / "studio_kuberay.yaml"
# In a pod the HTTP proxy must listen on every interface, whatever a local config says.
KUBERAY_HTTP = {"host": "0.0.0.0", "port": 8000}


# ---------------------------------------------------------------- training resources

class ResourcesSpec(Spec):
    """A training recipe's ``resources``: what each Ray Train worker asks the cluster for."""

    num_workers: int = Field(default=1, ge=1, description="Ray Train workers (data-parallel).")
    use_gpu: bool = Field(default=False, description="One GPU per worker; the job is refused without GPUs.")
    cpus_per_worker: float = Field(default=1.0, gt=0, description="Logical CPUs each worker reserves.")
    gpus_per_worker: float = Field(default=1.0, ge=0, description="GPUs each worker reserves when use_gpu.")
    accelerator_type: str | None = Field(
        default=None, description="GPU type every worker must run on, as Ray names it (A100, H100, "
        "L4, ...; ray.util.accelerators): with use_gpu, workers wait for (or the autoscaler adds) such nodes.")
    max_worker_failures: int = Field(
        default=1, ge=0,
        description="Within one attempt, how often Ray Train restarts a failed worker group from the latest "
        "checkpoint before the attempt fails (job-level retries are max_retries).",
    )


def worker_resources(resources: ResourcesSpec, settings: StudioSettings) -> dict[str, float]:
    """What one Ray Train worker reserves: CPU, GPU with use_gpu, and the cluster's custom
    resources from the settings (the recipe stays the same on a laptop and on a cluster)."""
    out: dict[str, float] = {"CPU": resources.cpus_per_worker}
    if resources.use_gpu:
        out["GPU"] = resources.gpus_per_worker
    for name, amount in settings.train_worker_resources.items():
        if name in ("CPU", "GPU"):
            raise StudioError(f"STUDIO_TRAIN_WORKER_RESOURCES names {name!r}, which the recipe sets",
                              "set cpus_per_worker / gpus_per_worker in the recipe's resources instead")
        out[name] = amount
    return out


def cluster_gpu_capacity(current_gpus: float, settings: StudioSettings) -> float:
    """GPUs a job may count on: those attached now, or, on an autoscaling cluster (which may have
    none attached until a job asks), the most it can scale to (STUDIO_CLUSTER_MAX_GPUS)."""
    if settings.cluster_max_gpus is None:
        return current_gpus
    return max(current_gpus, float(settings.cluster_max_gpus))


# ---------------------------------------------------------------- KubeRay serve config

def serve_config(path: str | Path) -> dict[str, Any]:
    """The Serve config KubeRay deploys (``serveConfigV2``) from a local Serve config file: the
    same applications, import path and args; HTTP on every interface of the pod."""
    cfg = read_yaml(Path(path))
    if not cfg.get("applications"):
        raise StudioError(f"{path} has no applications", "pass a Serve config from configs/serve/")
    out = {k: v for k, v in cfg.items() if k != "http_options"}
    out["http_options"] = {**(cfg.get("http_options") or {}), **KUBERAY_HTTP}
    return out


def serve_config_text(path: str | Path) -> str:
    return yaml.safe_dump(serve_config(path), sort_keys=False, default_flow_style=False)


def embedded_serve_config(manifest: str | Path = KUBERAY_SERVICE) -> dict[str, Any]:
    """The ``serveConfigV2`` a RayService manifest holds, parsed."""
    doc = read_yaml(Path(manifest))
    text = (doc.get("spec") or {}).get("serveConfigV2")
    if not isinstance(text, str):
        raise StudioError(f"{manifest} has no spec.serveConfigV2 string", "see cluster/kuberay/README.md")
    return yaml.safe_load(text)


def sync_kuberay(manifest: str | Path = KUBERAY_SERVICE,
                 serve_path: str | Path = KUBERAY_SERVE_CONFIG) -> bool:
    """Rewrite the manifest's serveConfigV2 block from the local Serve config; True if it changed.
    Only that block is replaced, so the manifest's comments and layout stay as written."""
    manifest = Path(manifest)
    lines = manifest.read_text().splitlines(keepends=True)
    start = next((i for i, ln in enumerate(lines) if ln.strip() == "serveConfigV2: |"), None)
    if start is None:
        raise StudioError(f"{manifest} has no `serveConfigV2: |` line", "restore it from git")
    indent = len(lines[start]) - len(lines[start].lstrip()) + 2
    end = start + 1
    while end < len(lines) and (not lines[end].strip()
                                or len(lines[end]) - len(lines[end].lstrip()) >= indent):
        end += 1
    block = [" " * indent + ln + "\n" if ln else "\n"
             for ln in serve_config_text(serve_path).splitlines()]
    if lines[start + 1:end] == block:
        return False
    manifest.write_text("".join(lines[:start + 1] + block + lines[end:]))
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m studio.cluster", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    show = sub.add_parser("serve-config", help="print the serveConfigV2 made from a Serve config")
    show.add_argument("path", nargs="?", default=str(KUBERAY_SERVE_CONFIG))
    sync = sub.add_parser("sync-kuberay", help="rewrite serveConfigV2 in cluster/kuberay/rayservice.yaml")
    sync.add_argument("--serve-config", default=str(KUBERAY_SERVE_CONFIG))
    sync.add_argument("--manifest", default=str(KUBERAY_SERVICE))
    args = parser.parse_args(argv)
    try:
        if args.cmd == "serve-config":
            sys.stdout.write(serve_config_text(args.path))
        else:
            changed = sync_kuberay(args.manifest, args.serve_config)
            print(f"{args.manifest}: {'updated' if changed else 'already up to date'}")
    except StudioError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
