"""Build a tiny Llama and its tokenizer offline, deterministically.

No model hub is reachable on the machines this runs on, so tests and the demo use a model the
studio builds itself: a byte-level BPE tokenizer trained on generated text (digits split one per
token, so the digit-reversal task is learnable), a ChatML-style chat template, and a small
random-init Llama whose head_dim (hidden_size / num_attention_heads) is one vLLM's CPU attention
supports. Real users name a hub id or a local path wherever a model is asked for.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from pydantic import Field, model_validator

from studio.errors import StudioError
from studio.recipes import Spec

# vLLM's CPU attention kernels support these head sizes only.
VLLM_CPU_HEAD_SIZES = (32, 64, 80, 96, 112, 128, 160, 192, 224, 256)

SPECIAL_TOKENS = ["<|pad|>", "<|begin_of_text|>", "<|end_of_text|>", "<|im_start|>", "<|im_end|>"]

# {% generation %} marks assistant text so TRL can train on completions only
# (assistant_only_loss); transformers and vLLM both render it.
# With `tools` (OpenAI tool calling) a system turn lists them and asks for Hermes-style
# <tool_call>{"name": …, "arguments": {…}}</tool_call> answers (vLLM's `hermes` tool parser reads
# them back); assistant turns with tool_calls render them that way. Without tools or tool calls
# the rendering is exactly the plain ChatML one.
CHAT_TEMPLATE = (
    "{% if tools %}{{ '<|im_start|>system\n# Tools\n<tools>\n' }}"
    "{% for tool in tools %}{{ (tool['function'] if tool['function'] is defined else tool) "
    "| tojson }}{{ '\n' }}{% endfor %}"
    "{{ '</tools>\nTo call a tool answer <tool_call>{\"name\": <name>, \"arguments\": "
    "<arguments object>}</tool_call><|im_end|>\n' }}{% endif %}"
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['role'] == 'assistant' and message['tool_calls'] is defined "
    "and message['tool_calls'] %}"
    "{% generation %}{{ message['content'] or '' }}{% for call in message['tool_calls'] %}"
    "{% set fn = call['function'] if call['function'] is defined else call %}"
    "{{ '<tool_call>{\"name\": \"' + fn['name'] + '\", \"arguments\": ' }}"
    "{% if fn['arguments'] is string %}{{ fn['arguments'] }}{% else %}"
    "{{ fn['arguments'] | tojson }}{% endif %}{{ '}</tool_call>' }}{% endfor %}"
    "{{ '<|im_end|>' }}{% endgeneration %}{{ '\n' }}"
    "{% elif message['role'] == 'assistant' %}"
    "{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}{{ '\n' }}"
    "{% else %}{{ message['content'] + '<|im_end|>\n' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_WORDS = (
    "the a an and or of to in on for with is are was be this that it you we they answer question "
    "reverse sort add count digits numbers list copy repeat write say yes no true false good bad "
    "system user assistant model data train test eval score reward prompt completion chosen "
    "rejected text hello world please thanks what which how why when where who json key value"
).split()


class TinyModelSpec(Spec):
    """Shape and seed of the tiny model. ``configs/models/tiny.yaml`` holds the defaults."""

    seed: int = Field(default=0, description="Seed for the corpus, tokenizer and weight init.")
    vocab_size: int = Field(default=512, ge=300, description="BPE vocabulary size incl. bytes.")
    hidden_size: int = Field(default=128, ge=32, description="Model width.")
    intermediate_size: int = Field(default=384, ge=32, description="MLP width.")
    num_hidden_layers: int = Field(default=4, ge=1, description="Transformer blocks.")
    num_attention_heads: int = Field(default=4, ge=1, description="Query heads.")
    num_key_value_heads: int = Field(default=4, ge=1, description="KV heads (GQA if fewer).")
    max_position_embeddings: int = Field(default=512, ge=64, description="Context length.")
    corpus_lines: int = Field(default=4000, ge=100, description="Generated lines to train BPE on.")

    @model_validator(mode="after")
    def _vllm_compatible(self) -> TinyModelSpec:
        if self.hidden_size % self.num_attention_heads:
            raise ValueError("hidden_size must be divisible by num_attention_heads")
        head_dim = self.hidden_size // self.num_attention_heads
        if head_dim not in VLLM_CPU_HEAD_SIZES:
            raise ValueError(
                f"head_dim = hidden_size / num_attention_heads = {head_dim}, which vLLM's CPU "
                f"attention does not support; choose one of {VLLM_CPU_HEAD_SIZES}"
            )
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError("num_attention_heads must be a multiple of num_key_value_heads")
        return self


def reversal_example(
    rng: random.Random, min_digits: int = 3, max_digits: int = 5
) -> tuple[str, str]:
    """The toy task the tiny model learns: "reverse: 6 0 4 8" → "8 4 0 6"."""
    digits = [str(rng.randrange(10)) for _ in range(rng.randint(min_digits, max_digits))]
    return "reverse: " + " ".join(digits), " ".join(reversed(digits))


def _corpus(spec: TinyModelSpec) -> list[str]:
    rng = random.Random(spec.seed)
    lines = []
    for i in range(spec.corpus_lines):
        if i % 2 == 0:
            prompt, answer = reversal_example(rng)
            lines.append(f"{prompt}\n{answer}")
        else:
            words = rng.choices(_WORDS, k=rng.randint(4, 12))
            lines.append(" ".join(words).capitalize() + rng.choice([".", "?", "!", ":"]))
    lines.append("".join(chr(c) for c in range(32, 127)))
    return lines


def build_tokenizer(spec: TinyModelSpec):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=spec.vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(spec), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|begin_of_text|>",
        eos_token="<|im_end|>",
        pad_token="<|pad|>",
        unk_token=None,
        additional_special_tokens=["<|im_start|>", "<|end_of_text|>"],
        model_max_length=spec.max_position_embeddings,
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def make_tiny(out: str | Path, spec: TinyModelSpec | None = None) -> Path:
    """Build the tokenizer and model and ``save_pretrained`` both (safetensors) into ``out``."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    spec = spec or TinyModelSpec()
    out = Path(out).expanduser().resolve()
    if out.exists() and not out.is_dir():
        raise StudioError(f"{out} is a file, not a directory", "choose a new directory with --out")
    if out.exists() and any(out.iterdir()) and not (out / "studio_tiny.json").exists():
        raise StudioError(
            f"{out} exists and is not a tiny model built by the studio",
            "choose an empty or new directory with --out",
        )
    tokenizer = build_tokenizer(spec)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_hidden_layers,
        num_attention_heads=spec.num_attention_heads,
        num_key_value_heads=spec.num_key_value_heads,
        max_position_embeddings=spec.max_position_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
        dtype="float32",
    )
    # Seed a forked RNG so a build is reproducible without resetting the caller's torch RNG.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed)
        model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    (out / "studio_tiny.json").write_text(json.dumps(spec.model_dump(), indent=2, sort_keys=True))
    return out
