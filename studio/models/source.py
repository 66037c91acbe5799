"""Where a model comes from: a local directory saved with ``save_pretrained``, or a hub id — never
a URL (the server does not download a model from a host a caller names)."""

from __future__ import annotations

import json
from pathlib import Path

from studio.errors import StudioError


def _looks_like_path(name: str) -> bool:
    return name.startswith((".", "/", "~")) or Path(name).expanduser().exists()


def resolve_model_source(name: str) -> str:
    """Return an absolute directory for a local model, or the hub id unchanged.

    A local path must hold a readable ``config.json`` with a ``model_type``; anything else gets an
    error that says what is missing, before any worker or engine is started on it.
    """
    if not name or not name.strip():
        raise StudioError(
            "no model given", "pass a model directory or a hub id such as Qwen/Qwen2.5-0.5B"
        )
    if "://" in name:
        # Never fetched: a URL here would make the server download from a host the caller chose.
        raise StudioError(
            f"model {name!r} is a URL; the studio takes a model directory or a hub id, and does not "
            "download models from URLs",
            "download the model to a directory the studio can read and pass its path, or give a hub id",
        )
    if not _looks_like_path(name):
        if name.count("/") > 1 or " " in name:
            raise StudioError(
                f"{name!r} is neither an existing directory nor a hub id (owner/name)",
                "check the path, or run `studio models make-tiny` to build a local model",
            )
        return name
    path = Path(name).expanduser().resolve()
    if not path.exists():
        raise StudioError(
            f"model path {path} does not exist",
            "check the path, or run `studio models make-tiny --out PATH` to build one",
        )
    if not path.is_dir():
        raise StudioError(
            f"model path {path} is a file, not a model directory",
            "pass the directory that holds config.json and the weights",
        )
    config = path / "config.json"
    if not config.is_file():
        raise StudioError(
            f"{path} is not a model: it has no config.json",
            "pass a directory written by save_pretrained (config.json, weights, tokenizer)",
        )
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise StudioError(
            f"{config} is not valid JSON", "re-save the model with save_pretrained"
        ) from e
    if not isinstance(data, dict):
        raise StudioError(
            f"{config} holds a JSON {type(data).__name__}, not an object",
            "re-save the model with save_pretrained",
        )
    if not data.get("model_type"):
        raise StudioError(f"{config} has no model_type", "re-save the model with save_pretrained")
    if not any(path.glob("*.safetensors")) and not any(path.glob("*.bin")):
        raise StudioError(
            f"{path} has a config but no weights (*.safetensors or *.bin)",
            "copy the weight files next to config.json",
        )
    return str(path)
