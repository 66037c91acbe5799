"""The tiny model the studio builds offline: loadable, digit-per-token, chat-ready, reproducible."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError
from transformers import AutoModelForCausalLM, AutoTokenizer

from studio.errors import StudioError
from studio.models.tiny import TinyModelSpec, make_tiny
from studio.recipes import load_recipe

REPO = Path(__file__).resolve().parents[2]

CONVERSATION = [
    {"role": "system", "content": "Answer with the digits only."},
    {"role": "user", "content": "reverse: 6 0 4 8"},
    {"role": "assistant", "content": "8 4 0 6"},
    {"role": "user", "content": "reverse: 1 2 3"},
    {"role": "assistant", "content": "3 2 1"},
]


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir: Path):
    return AutoTokenizer.from_pretrained(tiny_model_dir)


def test_model_loads_in_float32_and_generates_with_transformers(tiny_model_dir, tokenizer):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert model.dtype == torch.float32
    assert model.config.hidden_size // model.config.num_attention_heads == 32
    assert model.config.vocab_size == len(tokenizer)
    inputs = tokenizer("reverse: 6 0 4 8", return_tensors="pt")
    out = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    assert out.shape[1] > inputs["input_ids"].shape[1]


def test_every_digit_is_its_own_token(tokenizer):
    tokens = tokenizer.tokenize("reverse: 6 0 4 8")
    assert [t for t in tokens if t.isdigit()] == ["6", "0", "4", "8"]
    for digit in "0123456789":
        assert tokenizer.tokenize(digit) == [digit]
        assert digit in tokenizer.get_vocab()
    # Even a run of digits with no spaces splits one digit per token.
    assert tokenizer.tokenize("9876543210") == list("9876543210")


def test_chat_template_renders_a_generation_prompt_and_round_trips(tokenizer):
    messages = CONVERSATION[:2]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == (
        "<|im_start|>system\nAnswer with the digits only.<|im_end|>\n"
        "<|im_start|>user\nreverse: 6 0 4 8<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=True)[
        "input_ids"
    ]
    assert ids == tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == text
    for special in ("<|im_start|>", "<|im_end|>"):
        assert len(tokenizer.tokenize(special)) == 1
    without_prompt = tokenizer.apply_chat_template(messages, tokenize=False)
    assert not without_prompt.endswith("<|im_start|>assistant\n")


def test_assistant_tokens_mask_marks_only_the_assistant_replies(tokenizer):
    # TRL's assistant_only_loss trains on exactly these tokens.
    out = tokenizer.apply_chat_template(
        CONVERSATION, return_assistant_tokens_mask=True, return_dict=True
    )
    ids, mask = out["input_ids"], out["assistant_masks"]
    assert len(ids) == len(mask) and set(mask) == {0, 1}
    spans, current = [], []
    for token_id, masked in zip(ids, mask):
        if masked:
            current.append(token_id)
        elif current:
            spans.append(current)
            current = []
    if current:
        spans.append(current)
    assert [tokenizer.decode(s) for s in spans] == ["8 4 0 6<|im_end|>", "3 2 1<|im_end|>"]
    unmasked = tokenizer.decode([t for t, m in zip(ids, mask) if not m])
    assert "8 4 0 6" not in unmasked and "3 2 1" not in unmasked
    assert "reverse: 6 0 4 8" in unmasked


def test_build_records_its_spec(tiny_model_dir):
    recorded = json.loads((tiny_model_dir / "studio_tiny.json").read_text())
    assert TinyModelSpec.model_validate(recorded) == TinyModelSpec()


def test_models_tiny_recipe_is_the_default_spec():
    assert load_recipe(REPO / "configs/models/tiny.yaml", TinyModelSpec) == TinyModelSpec()


def test_same_seed_gives_identical_files_and_another_seed_other_weights(tiny_model_dir, tmp_path):
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    again = make_tiny(tmp_path / "again", TinyModelSpec(seed=0))
    # The build seeds its own RNG; the caller's torch RNG stream is left where it was.
    assert torch.equal(torch.rand(3), expected_next)
    for name in ("model.safetensors", "tokenizer.json", "config.json", "chat_template.jinja"):
        assert (again / name).read_bytes() == (tiny_model_dir / name).read_bytes(), name

    # Rebuilding over a directory the studio built is allowed.
    other = make_tiny(again, TinyModelSpec(seed=1))
    assert (other / "model.safetensors").read_bytes() != (
        tiny_model_dir / "model.safetensors"
    ).read_bytes()
    assert json.loads((other / "studio_tiny.json").read_text())["seed"] == 1


def test_head_dim_vllm_cannot_run_is_rejected(tmp_path):
    with pytest.raises(ValidationError, match="head_dim"):
        TinyModelSpec(hidden_size=120, num_attention_heads=4)
    with pytest.raises(StudioError, match="head_dim") as info:
        load_recipe(REPO / "configs/models/tiny.yaml", TinyModelSpec, ["hidden_size=120"])
    assert "32, 64" in str(info.value)  # names the sizes to choose from


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"hidden_size": 130, "num_attention_heads": 4}, "divisible"),
        ({"num_attention_heads": 4, "num_key_value_heads": 3}, "multiple of num_key_value_heads"),
    ],
)
def test_inconsistent_shapes_are_rejected(fields, message):
    with pytest.raises(ValidationError, match=message):
        TinyModelSpec(**fields)


def test_building_into_a_foreign_directory_is_refused(tmp_path):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(StudioError, match="not a tiny model built by the studio"):
        make_tiny(foreign)
    assert sorted(p.name for p in foreign.iterdir()) == ["notes.txt"]

    a_file = tmp_path / "weights.bin"
    a_file.write_text("x")
    with pytest.raises(StudioError, match="is a file"):
        make_tiny(a_file)
