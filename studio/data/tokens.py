"""Token counting for length bounds and stats: a model's tokenizer from a local path, or words.

``token_counter("path/to/model")`` loads ``tokenizer.json`` with the ``tokenizers`` library when the
folder has one (fast, no transformers import), else ``transformers.AutoTokenizer``. Without a
tokenizer, counts are whitespace-separated words and every report says so (unit ``words``).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache
from pathlib import Path

from studio.errors import StudioError

Counter = Callable[[str], int]


def _words(text: str) -> int:
    return len(text.split())


@lru_cache(maxsize=4)
def token_counter(tokenizer: str | None) -> tuple[Counter, str]:
    """Return ``(count, unit)``; unit is ``tokens`` or ``words``."""
    if not tokenizer:
        return _words, "words"
    path = Path(tokenizer).expanduser()
    if (path / "tokenizer.json").is_file():
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(str(path / "tokenizer.json"))
        return (lambda text: len(tok.encode(text, add_special_tokens=False).ids)), "tokens"
    try:
        from transformers import AutoTokenizer

        hf = AutoTokenizer.from_pretrained(tokenizer)
    except (OSError, ValueError) as e:
        raise StudioError(f"cannot load tokenizer {tokenizer!r}: {str(e).splitlines()[0][:200]}",
                          "pass a local model folder (with tokenizer.json) or a cached hub id") from e
    return (lambda text: len(hf(text, add_special_tokens=False)["input_ids"])), "tokens"
