"""resolve_model_source: a local model directory or a hub id; anything else says what is wrong."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from studio.errors import StudioError
from studio.models.source import resolve_model_source


def _model_dir(root: Path, config: str | None = '{"model_type": "llama"}', weights: bool = True):
    path = root / "model"
    path.mkdir()
    if config is not None:
        (path / "config.json").write_text(config, encoding="utf-8")
    if weights:
        (path / "model.safetensors").write_bytes(b"")
    return path


def test_a_model_directory_resolves_to_its_absolute_path(tiny_model_dir, monkeypatch):
    monkeypatch.chdir(tiny_model_dir.parent)
    resolved = resolve_model_source(f"./{tiny_model_dir.name}")
    assert resolved == str(tiny_model_dir.resolve())
    assert Path(resolved).is_absolute()
    assert resolve_model_source(str(tiny_model_dir)) == resolved


def test_pytorch_bin_weights_count_as_weights(tmp_path):
    path = _model_dir(tmp_path, weights=False)
    (path / "pytorch_model.bin").write_bytes(b"")
    assert resolve_model_source(str(path)) == str(path.resolve())


@pytest.mark.parametrize("name", ["Qwen/Qwen2.5-0.5B", "gpt2"])
def test_a_hub_id_is_returned_unchanged(name):
    assert resolve_model_source(name) == name


def test_a_missing_path_is_named(tmp_path):
    with pytest.raises(StudioError, match="does not exist") as info:
        resolve_model_source(str(tmp_path / "nowhere"))
    assert "nowhere" in str(info.value)


def test_a_file_is_not_a_model_directory(tmp_path):
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"")
    with pytest.raises(StudioError, match="is a file, not a model directory"):
        resolve_model_source(str(path))


@pytest.mark.parametrize(
    "config, weights, message",
    [
        (None, True, "has no config.json"),
        ("{not json", True, "is not valid JSON"),
        ("[1, 2]", True, "holds a JSON list, not an object"),
        ('{"architectures": ["LlamaForCausalLM"]}', True, "has no model_type"),
        ('{"model_type": "llama"}', False, r"no weights \(\*.safetensors or \*.bin\)"),
    ],
)
def test_a_broken_model_directory_names_the_problem(tmp_path, config, weights, message):
    path = _model_dir(tmp_path, config=config, weights=weights)
    with pytest.raises(StudioError, match=message) as info:
        resolve_model_source(str(path))
    assert str(path) in str(info.value)
    assert info.value.fix  # every error says what to do about it


@pytest.mark.parametrize("name", ["", "   ", "a/b/c", "not a model"])
def test_neither_a_path_nor_a_hub_id_is_refused(name):
    with pytest.raises(StudioError):
        resolve_model_source(name)


def test_config_is_read_as_utf8(tmp_path):
    config = json.dumps({"model_type": "llama", "note": "é ü 字"}, ensure_ascii=False)
    path = _model_dir(tmp_path, config=config)
    assert resolve_model_source(str(path)) == str(path.resolve())
