"""Serving recipes, the status of a runtime deployment, and its database rows.

A recipe is one base model's deployment (``ModelDeploymentConfig``: engine, engine settings, LoRA
limits, replicas/autoscaling, resources) plus a name and the lifecycle policy. The same schema is
read from YAML (``studio serve deploy``) and from ``POST /api/deployments``.

Status (``DeploymentStatus``)::

    DEPLOYING ──► READY ──► EVICTING ──► EVICTED ──► DEPLOYING (deployed again)
        │           ▲           ▲           ▲
        │       RESTORING ──────┘           │   a restart: DEPLOYING/READY ──► RESTORING
        │           │                       │
        └──► FAILED ◄┘ ──► DEPLOYING        │
               └────────────────────────────┘ (evicting a failed row just marks it)

RESTORING: the row was live (DEPLOYING or READY) when its Serve application went away — ``studio
down`` + ``studio up``, a Ray head that died — and the studio deploys it again from the stored
recipe (``studio.serving.restore``); it ends READY, or FAILED with the reason (its model folder is
gone, the cluster lacks the resources, the engine did not start).

This is the *stored* lifecycle. What ``studio serve ls`` / ``GET /api/deployments`` report adds
the live Serve facts (``studio.serving.status``): a READY row whose replicas are not healthy is
reported UNHEALTHY, never "ready" with 0 replicas.
"""

from __future__ import annotations

import enum
import re
from pathlib import Path
from typing import Any

from pydantic import Field, model_validator
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from studio.serving.config import ModelDeploymentConfig
from studio.errors import Conflict, NotFound, StudioError
from studio.recipes import Spec
from studio.store.models import ServingDeployment

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class DeploymentStatus(str, enum.Enum):
    DEPLOYING = "deploying"  # Serve application submitted, replicas starting
    READY = "ready"  # every replica healthy; the Router serves the name
    FAILED = "failed"  # did not start (bad model, short of resources, timeout); app removed
    EVICTING = "evicting"  # the Router stopped routing new requests; in-flight ones finish
    EVICTED = "evicted"  # Serve application deleted; the name answers "not deployed"
    RESTORING = "restoring"  # was live before a restart; being deployed again from its recipe

    def is_live(self) -> bool:
        """Holds (or is about to hold) the name and cluster resources."""
        return self in (DeploymentStatus.DEPLOYING, DeploymentStatus.READY,
                        DeploymentStatus.EVICTING, DeploymentStatus.RESTORING)

    def is_coming(self) -> bool:
        """Will serve soon: requests get a 503 with Retry-After, not a 404."""
        return self in (DeploymentStatus.DEPLOYING, DeploymentStatus.RESTORING)


S = DeploymentStatus
TRANSITIONS: dict[DeploymentStatus, set[DeploymentStatus]] = {
    S.DEPLOYING: {S.READY, S.FAILED, S.EVICTING, S.RESTORING},
    S.READY: {S.EVICTING, S.RESTORING},
    S.RESTORING: {S.READY, S.FAILED, S.EVICTING},
    S.FAILED: {S.DEPLOYING, S.EVICTED},
    S.EVICTING: {S.EVICTED},
    S.EVICTED: {S.DEPLOYING},
}


class ServingRecipe(Spec):
    """A base model deployed at runtime, by name, as its own Serve application."""

    home_paths = ("deployment.engine.model",)  # may start with ${STUDIO_HOME} (studio.recipes)

    name: str = Field(description="The model name requests use (`model`); letters, digits, "
                      "'.', '_', '-'; unique among served models.")
    deployment: ModelDeploymentConfig = Field(
        description="Engine (vllm | sglang) and its settings, LoRA limits (engine.max_loras, "
        "engine.max_lora_rank), replicas or autoscaling, and the resources each replica reserves.")
    evict_idle: bool = Field(
        default=False, description="When the cluster lacks the resources, evict another "
        "runtime-deployed model that has had no request for `idle_s` to make room (else fail).")
    idle_s: float = Field(default=300.0, gt=0, description="How long without a request makes a "
                          "model idle, for `evict_idle`.")
    deploy_timeout_s: float = Field(
        default=600.0, gt=0, description="Give up (and remove the half-started application) if "
        "the replicas are not healthy by then.")

    @model_validator(mode="after")
    def _name_is_served_name(self) -> ServingRecipe:
        if not NAME.match(self.name):
            raise ValueError(f"name {self.name!r} is not a valid model name: use letters, digits, "
                             "'.', '_' and '-' (at most 64 characters)")
        engine = self.deployment.engine
        if engine.served_model_name not in (None, self.name):
            raise ValueError(f"deployment.engine.served_model_name ({engine.served_model_name!r}) "
                             f"differs from name ({self.name!r}); drop it, the name is served")
        self.deployment.engine.served_model_name = self.name
        return self

    @property
    def app_name(self) -> str:
        return app_name(self.name)

    def replicas(self) -> int:
        """Replicas that must start for the deployment to be ready."""
        auto = self.deployment.autoscaling
        return max(1, auto.min_replicas) if auto else self.deployment.num_replicas

    def on_cpu(self) -> bool:
        """A replica without a GPU: its engine keeps the weights and KV cache in host memory."""
        return not self.deployment.num_gpus

    def kv_cache_gib(self) -> float:
        """Host memory one replica's KV cache takes: engine.kv_cache_space_gib on CPU (unset:
        vLLM sizes it itself, counted 0); 0 on GPU, where it is a share of the GPU's memory
        (gpu_memory_utilization) that num_gpus reserves already."""
        return float(self.deployment.engine.kv_cache_space_gib or 0) if self.on_cpu() else 0.0

    def memory_per_replica_gib(self) -> float:
        """Host memory one replica needs in Ray's accounting. On CPU at least its KV cache plus
        its weights (the model folder's weight files); an explicit memory_gib is the replica's
        whole reservation (the KV cache included), so the larger of the two counts, never their
        sum. On GPU: memory_gib alone."""
        floor = self.kv_cache_gib() + weights_gib(self.deployment.engine.model) if self.on_cpu() else 0.0
        return max(self.deployment.memory_gib or 0.0, floor)

    def replica_resources(self) -> dict[str, float]:
        """Ray resources one replica needs (CPU, GPU, memory in bytes, custom)."""
        d = self.deployment
        need = {"CPU": d.num_cpus}
        if d.num_gpus:
            need["GPU"] = d.num_gpus
        if memory_gib := self.memory_per_replica_gib():
            need["memory"] = memory_gib * 2**30
        for key, value in d.resources.items():
            need[key] = need.get(key, 0) + value
        return need

    def resources_needed(self) -> dict[str, float]:
        """Ray resources all starting replicas reserve together (CPU, GPU, memory, custom)."""
        n = self.replicas()
        return {key: value * n for key, value in self.replica_resources().items()}


WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")


def weights_gib(model: str) -> float:
    """Size of the weight files in a local model folder (one directory listing); 0 for a hub id
    or a folder that is gone (the deploy names that itself)."""
    path = Path(model).expanduser()
    try:
        return sum(f.stat().st_size for f in path.iterdir()
                   if f.suffix in WEIGHT_SUFFIXES and f.is_file()) / 2**30
    except OSError:
        return 0.0


def app_name(name: str) -> str:
    """The Serve application of a runtime-deployed model (never "studio")."""
    return f"model-{name}"


def resolve_model_path(recipe: ServingRecipe, base_dir: Path | None = None) -> ServingRecipe:
    """The recipe with a local model path made absolute; refuses a path that does not exist or is
    no model directory. A hub id (``org/name``) that is not a local path passes unchanged."""
    model = recipe.deployment.engine.model
    path = Path(model).expanduser()
    if not path.is_absolute() and base_dir is not None and (base_dir / path).exists():
        path = base_dir / path
    if path.exists():
        if not (path / "config.json").is_file():
            raise StudioError(f"model path {path} is not a model directory (no config.json)",
                              "point deployment.engine.model at a directory written by "
                              "save_pretrained (e.g. `studio models make-tiny --out DIR`)")
        engine = recipe.deployment.engine.model_copy(update={"model": str(path.resolve())})
        deployment = recipe.deployment.model_copy(update={"engine": engine})
        return recipe.model_copy(update={"deployment": deployment})
    if HUB_ID.match(model) and not model.startswith("."):
        return recipe
    raise StudioError(f"model path {model!r} does not exist",
                      "fix deployment.engine.model: an existing model directory (absolute, or "
                      "relative to where you run the command) or a hub id like org/name")


# ---- rows -----------------------------------------------------------------------------------------
def get_row(session: Session, name: str) -> ServingDeployment | None:
    return session.scalars(select(ServingDeployment).where(ServingDeployment.name == name)).first()


def list_rows(session: Session) -> list[ServingDeployment]:
    return list(session.scalars(select(ServingDeployment).order_by(ServingDeployment.id)))


def set_status(row: ServingDeployment, status: DeploymentStatus, message: str | None = None) -> None:
    current = DeploymentStatus(row.status)
    if status not in TRANSITIONS[current]:
        raise Conflict(f"deployment {row.name!r} cannot go from {current.value} to {status.value}",
                       "see `studio serve ls` for its state")
    row.status = status.value
    row.message = message


def claim(session: Session, recipe: ServingRecipe, created_by: str | None,
          owner_key_id: int | None = None) -> ServingDeployment:
    """The row of a new deployment, in DEPLOYING, keeping the whole validated recipe (what a
    restore deploys again) and who deployed it; a name that is live already is a conflict."""
    row = get_row(session, recipe.name)
    data = recipe.model_dump(mode="json")
    if row is None:
        row = ServingDeployment(name=recipe.name, app_name=recipe.app_name, recipe=data,
                                status=DeploymentStatus.DEPLOYING.value, created_by=created_by,
                                owner_key_id=owner_key_id)
        session.add(row)
        try:
            session.flush()  # the unique name: a concurrent deploy of the same name fails here
        except IntegrityError:
            raise Conflict(f"model {recipe.name!r} is being deployed by another request",
                           "wait for it, then see `studio serve ls`") from None
        return row
    if DeploymentStatus(row.status).is_live():
        raise Conflict(f"model {recipe.name!r} is already deployed (status {row.status})",
                       f"evict it first (`studio serve evict {recipe.name}`) or choose another name")
    set_status(row, DeploymentStatus.DEPLOYING)
    row.recipe, row.app_name, row.created_by = data, recipe.app_name, created_by
    row.owner_key_id = owner_key_id
    return row


def require_row(session: Session, name: str) -> ServingDeployment:
    row = get_row(session, name)
    if row is None:
        raise NotFound(f"no model named {name!r} was deployed at runtime",
                       "see `studio serve ls` (GET /api/deployments) for the deployments")
    return row


def row_dict(row: ServingDeployment) -> dict[str, Any]:
    return {"name": row.name, "source": "runtime", "app_name": row.app_name,
            "status": row.status, "message": row.message, "recipe": row.recipe,
            "created_by": row.created_by, "owner_key_id": row.owner_key_id,
            "created_at": row.created_at.isoformat(),
            "updated_at": row.updated_at.isoformat()}
