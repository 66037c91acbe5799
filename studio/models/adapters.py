"""LoRA adapter directories on their way into an engine: fetched from the artifact store into a
local cache, checked to be whole and to fit the base model — before any engine sees them, so a bad
adapter gets a clear error and never reaches (or crashes) an engine that serves other adapters.

An adapter directory is what PEFT's ``save_pretrained`` writes: ``adapter_config.json`` and
``adapter_model.safetensors``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from fsspec.core import url_to_fs

from studio.egress import guard_location
from studio.errors import NotFound, StudioError

logger = logging.getLogger(__name__)

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
_PEFT_PREFIX = "base_model.model."


@dataclass(frozen=True)
class AdapterInfo:
    path: Path
    base_model: str | None  # adapter_config.json base_model_name_or_path, as trained
    rank: int
    # lora_A/lora_B tensor name → shape, names as in the base model ("model.layers.0…q_proj")
    shapes: dict[str, tuple[str, tuple[int, ...]]] = field(repr=False, default_factory=dict)


def fetch_adapter(uri: str, cache_dir: str | Path) -> Path:
    """Copy the adapter directory at ``uri`` (local path or fsspec URL) into ``cache_dir``; an
    http(s) URL passes the egress guard first (``studio.egress``).

    Adapter URIs are version-unique (a registry version never changes), so a directory fetched
    once is reused; it appears under its final name only when complete (copy, then rename)."""
    cache_dir = Path(cache_dir)
    guard_location(uri, what="adapter URI")  # an http(s) URI must not reach the server's own network
    dest = cache_dir / hashlib.sha256(uri.encode()).hexdigest()[:24]
    if (dest / CONFIG_FILE).is_file():
        return dest
    fs, path = url_to_fs(uri)
    path = path.rstrip("/")
    # Object-store filesystems cache listings per process: a replica that listed before this
    # version was written elsewhere (by a training job on another node) would not see it.
    fs.invalidate_cache(path)
    if not fs.isdir(path):
        raise NotFound(
            f"adapter {uri} does not exist (or is not a directory)",
            "check the model version's uri (`studio models show NAME@N`) and the artifact store",
        )
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = cache_dir / f".{dest.name}.tmp-{uuid.uuid4().hex}"
    try:
        fs.get(path + "/", str(tmp) + "/", recursive=True)
        os.replace(tmp, dest)
    except OSError:
        if not (dest / CONFIG_FILE).is_file():  # a concurrent fetch of the same uri may have won
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def inspect_adapter(path: str | Path) -> AdapterInfo:
    """Read and check an adapter directory: config readable, weights present and not corrupt."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    fix = "re-export the adapter with PEFT's save_pretrained (or register its version again)"
    config_file, weights_file = path / CONFIG_FILE, path / WEIGHTS_FILE
    if not config_file.is_file():
        raise StudioError(f"adapter {path} has no {CONFIG_FILE}", fix)
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
        rank = int(config.get("r") or 0)
    except (json.JSONDecodeError, UnicodeDecodeError, TypeError, ValueError) as e:
        raise StudioError(f"adapter {path}: {CONFIG_FILE} is not valid PEFT JSON ({e})", fix) from e
    if config.get("peft_type", "LORA") != "LORA" or rank < 1:
        raise StudioError(f"adapter {path} is not a LoRA adapter (peft_type "
                          f"{config.get('peft_type')!r}, r={rank})", "serve LoRA adapters only")
    if not weights_file.is_file():
        raise StudioError(f"adapter {path} has no {WEIGHTS_FILE}", fix)
    shapes: dict[str, tuple[str, tuple[int, ...]]] = {}
    try:
        # Opening checks the header against the file size, so a truncated file fails here; only
        # headers are read (shapes), never the tensors.
        with safe_open(str(weights_file), framework="pt") as f:
            for key in f.keys():
                for part in ("lora_A", "lora_B"):
                    if f".{part}." in key:
                        base_key = key.removeprefix(_PEFT_PREFIX).replace(f".{part}.", ".")
                        shapes[f"{base_key}|{part}"] = (part, tuple(f.get_slice(key).get_shape()))
    except (SafetensorError, OSError, RuntimeError, ValueError) as e:
        raise StudioError(f"adapter {path}: {WEIGHTS_FILE} is unreadable or truncated ({e})",
                          fix) from e
    if not shapes:
        raise StudioError(f"adapter {path}: {WEIGHTS_FILE} holds no LoRA weights", fix)
    return AdapterInfo(path=path, base_model=config.get("base_model_name_or_path"), rank=rank,
                       shapes=shapes)


def check_adapter_fits(info: AdapterInfo, base_model: str) -> None:
    """Reject an adapter trained on another base model.

    Shapes decide where the base model's weights are on local disk: every LoRA pair must sit on a
    base weight of matching in/out size. A different ``base_model_name_or_path`` alone is only
    logged (the same base is often at another path on another machine). Without local base weights
    (a hub id not in the local cache) the names must agree."""
    base_shapes = _base_weight_shapes(base_model)
    if base_shapes is None:
        if info.base_model and _short(info.base_model) != _short(base_model):
            raise StudioError(
                f"adapter {info.path} was trained on {info.base_model!r}, not on {base_model!r}",
                f"load it into the deployment serving {info.base_model!r}",
            )
        return
    for name, (part, shape) in sorted(info.shapes.items()):
        weight = name.split("|")[0]
        base = base_shapes.get(weight)
        # lora_A is (r, in_features) and lora_B (out_features, r); base weights are (out, in).
        fits = base is not None and len(base) == 2 and (
            shape[-1] == base[1] if part == "lora_A" else shape[0] == base[0])
        if not fits:
            trained_on = f" (trained on {info.base_model!r})" if info.base_model else ""
            got = "no such weight" if base is None else f"base weight is {list(base)}"
            raise StudioError(
                f"adapter {info.path}{trained_on} does not fit base model {base_model!r}: "
                f"{weight} {part} has shape {list(shape)}, {got}",
                "load it into the deployment of the base model it was trained on",
            )
    if info.base_model and _short(info.base_model) != _short(base_model):
        logger.info("adapter %s names base %r; its shapes fit %r", info.path, info.base_model,
                    base_model)


def _short(name: str) -> str:
    return Path(name.rstrip("/")).name.lower()


def _base_weight_shapes(base_model: str) -> dict[str, tuple[int, ...]] | None:
    from safetensors import safe_open

    root = Path(base_model).expanduser()
    if not root.is_dir():
        root = _hub_cache_dir(base_model)
        if root is None:
            return None
    files = sorted(root.glob("*.safetensors"))
    if not files:
        return None
    shapes: dict[str, tuple[int, ...]] = {}
    for file in files:
        with safe_open(str(file), framework="pt") as f:  # header only: no tensor is read
            for key in f.keys():
                shapes[key] = tuple(f.get_slice(key).get_shape())
    return shapes


def _hub_cache_dir(model_id: str) -> Path | None:
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(model_id, local_files_only=True))
    except Exception:  # noqa: BLE001 — not in the local cache (or not a hub id): names decide
        return None
