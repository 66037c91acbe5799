"""Inputs a training job's preflight accepts, made in milliseconds: a model directory that looks
like `save_pretrained` output (nothing loads the weights here), and small ingested datasets."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from studio.data.ingest import ingest_file
from studio.settings import StudioSettings


def make_model_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (path / "model.safetensors").write_bytes(b"")
    return path


def ingest_datasets(settings: StudioSettings, folder: Path) -> None:
    """``digits`` (prompt_completion, 20 rows) and ``prose`` (text, 5 rows)."""
    folder.mkdir(parents=True, exist_ok=True)
    digits = folder / "digits.jsonl"
    digits.write_text("".join(json.dumps({"prompt": f"reverse: {i}", "completion": str(i)[::-1]}) + "\n"
                              for i in range(10, 30)))
    prose = folder / "prose.jsonl"
    prose.write_text("".join(json.dumps({"text": f"line {i} of prose"}) + "\n" for i in range(5)))
    ingest_file(digits, "digits", settings)
    ingest_file(prose, "prose", settings)


def train_spec(model_dir: Path, name: str = "ok-job", dataset: str = "digits", **fields: Any) -> dict[str, Any]:
    """A TrainSpec body (the same fields as a configs/train YAML)."""
    return {"name": name, "method": "sft", "base_model": str(model_dir), "data": {"dataset": dataset},
            "hyper": {"max_steps": 5}, "max_retries": 1, **fields}
