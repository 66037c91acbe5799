"""Checks that run before a training job is queued (API/CLI) and again before any worker starts
(the entrypoint): every input exists and fits the method, so a bad job fails in seconds, clearly."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.orm import Session

from studio.data.snapshots import resolve_snapshot, split_indices
from studio.data.sources import check_model_location
from studio.egress import guard_url
from studio.errors import NotFound, StudioError
from studio.models.source import resolve_model_source
from studio.scorer_specs import check_http_scorer
from studio.settings import StudioSettings
from studio.train.spec import METHOD_KINDS, TrainSpec, is_adapter_location


@dataclass
class ResolvedInputs:
    base_model: str  # absolute directory or hub id
    snapshot_id: str
    snapshot_uri: str
    snapshot_kind: str
    dataset_ref: str  # name@N when the dataset was named, else the id
    init_adapter_uri: str | None = None  # where the starting adapter is (absolute path or artifact URI)
    init_adapter_ref: str | None = None  # name@N when it was given as a registry reference, else the URI
    init_adapter_rank: int | None = None  # its LoRA rank (GRPO's rollout engine must accept it)
    eval_snapshot_uri: str | None = None  # eval.dataset's rows (None: none, or eval.split_ratio of the data)
    eval_dataset_ref: str | None = None  # eval.dataset as name@N (or the snapshot id)


def check_caller_paths(spec: TrainSpec, settings: StudioSettings, admin: bool) -> TrainSpec:
    """The spec with the places a key named over HTTP checked (docs/security.md, "Server paths"):
    ``base_model`` a folder under ``$STUDIO_HOME/models`` (path or folder name), in the artifact
    store, or a hub id; ``init_adapter`` a registry reference or a folder under the models folder or
    the artifact store (an admin's also under ``STUDIO_DATA_ROOTS``). Anything else is 403 before
    preflight looks at it, so no answer tells a key whether a server path exists. Run after
    ``${STUDIO_HOME}`` is expanded (``studio.recipes.with_home_paths``)."""
    update: dict[str, str] = {}
    if "://" not in spec.base_model or spec.base_model.startswith("file://"):  # preflight refuses URLs
        update["base_model"] = check_model_location(spec.base_model, settings, admin, "base_model")
    if spec.init_adapter and is_adapter_location(spec.init_adapter):
        update["init_adapter"] = check_model_location(
            spec.init_adapter, settings, admin, "init_adapter", hub_ids=False,
            fix="name a registered version (name or name@N, see `studio models ls`) or a folder under "
                "$STUDIO_HOME/models" + ("" if admin else "; an admin key may also name folders under STUDIO_DATA_ROOTS"))
    return spec.model_copy(update=update) if update else spec


def preflight(spec: TrainSpec, session: Session, *, cluster_gpus: float | None = None) -> ResolvedInputs:
    """Resolve and check the job's inputs. ``cluster_gpus``: GPUs the Ray cluster has, when known."""
    try:
        base = resolve_model_source(spec.base_model)
    except StudioError as e:  # the field it came from, as a recipe's other errors name theirs
        raise StudioError(f"base_model: {e.problem}", e.fix, status_code=e.status_code) from None
    ref = resolve_snapshot(session, spec.data.dataset)
    snap = ref.snapshot
    allowed = METHOD_KINDS[spec.method]
    if snap.kind not in allowed:
        raise StudioError(
            f"dataset {spec.data.dataset!r} holds {snap.kind} rows, but {spec.method.upper()} trains on "
            f"{' or '.join(allowed)} rows",
            f"use a {' or '.join(allowed)} dataset for method {spec.method}, or pick the method that fits",
        )
    eval_uri, eval_ref = check_validation(spec, session, snap.row_count, snap.kind)
    check_eval_after(spec, session)
    check_trackers(spec)
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
    gate_scorer = spec.after_training.scorer if spec.after_training else None
    if gate_scorer is not None and gate_scorer.type == "http":
        check_http_scorer(gate_scorer)  # the auto-eval's evaluator URL passes the egress guard now
    init = resolve_init_adapter(spec, session, base) if spec.init_adapter else (None, None, None)
    dataset_ref = f"{ref.name}@{ref.version}" if ref.name else snap.id
    return ResolvedInputs(base, snap.id, snap.uri, snap.kind, dataset_ref, *init, eval_uri, eval_ref)


def check_validation(spec: TrainSpec, session: Session, num_rows: int, kind: str) -> tuple[str | None, str | None]:
    """The rows a held-out split leaves for training and validation, and ``eval.dataset``: it exists and
    fits the method. Returns (eval snapshot URI, name@N) when it names one."""
    ratio = spec.holdout_ratio()
    field = "eval.split_ratio" if spec.eval is not None and spec.eval.split_ratio is not None else "data.validation_ratio"
    if ratio > 0 and spec.data.split != "all":
        n_val = len(split_indices(num_rows, "validation", ratio, spec.data.seed))
        n_train = num_rows - n_val
        if spec.data.split == "train" and n_train == 0:
            raise StudioError(f"{field} {ratio} holds out all {num_rows} rows of dataset {spec.data.dataset!r}: "
                              "0 rows are left for training", f"lower {field}, or give eval.dataset instead")
        if field == "eval.split_ratio" and n_val == 0:
            raise StudioError(f"eval.split_ratio {ratio} of dataset {spec.data.dataset!r} ({num_rows} rows) holds "
                              "out no row to validate on", "raise eval.split_ratio, or give eval.dataset instead")
    if spec.eval is None or spec.eval.dataset is None:
        return None, None
    try:
        ref = resolve_snapshot(session, spec.eval.dataset)
    except StudioError as e:
        raise StudioError(f"eval.dataset: {e.problem}", e.fix, status_code=e.status_code) from None
    snap = ref.snapshot
    if snap.kind != kind:  # validated as trained: the same row shape, template and loss mask
        raise StudioError(f"eval.dataset {spec.eval.dataset!r} holds {snap.kind} rows, but the training data "
                          f"{spec.data.dataset!r} holds {kind} rows",
                          f"give a {kind} dataset, or eval.split_ratio to hold out part of the training data")
    if snap.row_count == 0:
        raise StudioError(f"eval.dataset {spec.eval.dataset!r} has no rows", "give a dataset with rows")
    return snap.uri, f"{ref.name}@{ref.version}" if ref.name else snap.id


# The rows eval_after's exact match scores (studio.train.evaluate.rows_to_examples).
EVAL_AFTER_KINDS = ("prompt_completion", "chat")


def check_eval_after(spec: TrainSpec, session: Session) -> None:
    """``eval_after.dataset`` exists and holds rows exact match can score: it is read only after
    training, so without this check a typo would cost the whole run."""
    if spec.eval_after is None:
        return
    name = spec.eval_after.dataset
    try:
        snap = resolve_snapshot(session, name).snapshot
    except StudioError as e:
        raise StudioError(f"eval_after.dataset: {e.problem}", e.fix, status_code=e.status_code) from None
    if snap.kind not in EVAL_AFTER_KINDS:
        raise StudioError(f"eval_after.dataset {name!r} holds {snap.kind} rows, but exact match scores "
                          f"{' or '.join(EVAL_AFTER_KINDS)} rows (a prompt and the answer to match)",
                          f"give a {' or '.join(EVAL_AFTER_KINDS)} dataset, or leave eval_after out")
    if snap.row_count == 0:
        raise StudioError(f"eval_after.dataset {name!r} has no rows", "give a dataset with rows")


# report_to → the package transformers' integration needs (either one, for tensorboard).
TRACKER_PACKAGES = {"tensorboard": ("tensorboard", "tensorboardX"), "wandb": ("wandb",)}


def check_trackers(spec: TrainSpec) -> None:
    for tracker in spec.tracking.report_to:
        packages = TRACKER_PACKAGES.get(tracker, ())
        if packages and not any(importlib.util.find_spec(p) for p in packages):
            raise StudioError(f"tracking.report_to names {tracker}, but the {packages[0]} package is not installed",
                              f"install it (pip install {packages[-1]}) where the studio and its Ray workers run, "
                              f"or remove {tracker} from tracking.report_to")


def resolve_init_adapter(spec: TrainSpec, session: Session, base: str) -> tuple[str, str, int | None]:
    """``init_adapter`` → (its location, how lineage names it, its rank): a registry reference is pinned to
    ``name@N``; a path or URI must hold a PEFT LoRA adapter (``adapter_config.json``). Either way
    the adapter must have been trained on ``base``."""
    from studio.registry.versions import get_version

    given = spec.init_adapter
    if is_adapter_location(given):
        uri = guard_url(given, what="init_adapter") if "://" in given else str(Path(given).expanduser().resolve())
        config = _adapter_config(uri, given)
        trained_on = config.get("base_model_name_or_path")
        ref = uri
    else:
        try:
            mv = get_version(session, given)
        except NotFound as e:
            raise StudioError(f"init_adapter {given!r}: {e.problem}",
                              "name a registered adapter version (see `studio models ls`), or give its directory") from e
        ref, uri, trained_on = f"{mv.name}@{mv.version}", mv.uri, mv.base_model
        if mv.adapter_type not in ("lora", "qlora"):
            raise StudioError(f"init_adapter {ref} holds {mv.adapter_type} weights, not a LoRA adapter",
                              "start from a lora or qlora version, or train from base_model without init_adapter")
        config = _adapter_config(uri, ref)
    if trained_on and _same_model(trained_on) != _same_model(base):
        raise StudioError(
            f"init_adapter {ref} was trained on base model {trained_on}, but this job's base_model is {base}",
            f"set base_model to {trained_on}, or pick an adapter trained on {base}")
    return uri, ref, config.get("r")


def _adapter_config(uri: str, given: str) -> dict:
    """The adapter's ``adapter_config.json``: it must exist and describe a LoRA adapter."""
    import json

    from studio.store.artifacts import filesystem

    fs, path = filesystem(uri)
    config_path = f"{path.rstrip('/')}/adapter_config.json"
    fs.invalidate_cache(path)
    if not fs.exists(config_path):
        what = "does not exist" if not fs.exists(path) else "holds no adapter_config.json (not a PEFT adapter)"
        raise StudioError(f"init_adapter {given}: {uri} {what}",
                          "give the directory of a LoRA adapter (the registry's `uri` of a version), or name@N")
    with fs.open(config_path, "rb") as f:
        try:
            config = json.loads(f.read())
        except ValueError as e:
            raise StudioError(f"init_adapter {given}: {config_path} is not valid JSON", "re-save the adapter") from e
    if config.get("peft_type") != "LORA":
        raise StudioError(f"init_adapter {given} is a {config.get('peft_type')} adapter, not LoRA",
                          "start from a LoRA adapter")
    return config


def _same_model(name: str) -> str:
    """A model path compared by its real location; a hub id as is."""
    path = Path(name).expanduser()
    return str(path.resolve()) if path.is_absolute() or path.exists() else name


def check_grpo(spec: TrainSpec) -> None:
    """Rewards build (a python callable imports, a regex compiles, a schema is a schema), and vLLM
    rollouts have a LoRA to load each step."""
    from studio.train.rewards import build_reward_funcs

    if spec.adapter == "full" and spec.grpo.rollout.engine == "vllm":
        raise StudioError("GRPO with vLLM rollouts trains a LoRA adapter (the rollout engine loads the policy's "
                          "LoRA each step); adapter: full is not supported with them",
                          "use adapter: lora (or qlora), or grpo.rollout.engine=hf for full fine-tuning")
    build_reward_funcs(spec.grpo.rewards)
