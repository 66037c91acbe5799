"""Exact match on a held-out split: greedy decoding with transformers (+ PEFT), the prompt rendered
through the model's chat template, the stripped output compared with the stripped completion.

Small on purpose: the evaluation service replaces it. It backs ``eval_after`` and the tests.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from studio.data.snapshots import load_split, resolve_snapshot
from studio.errors import StudioError


def rows_to_examples(rows: list[dict[str, Any]]) -> list[tuple[list[dict[str, str]], str]]:
    """Rows → (messages to prompt with, expected answer). prompt_completion: the prompt as one user
    turn; chat: everything before the last assistant turn, whose content is the answer."""
    out = []
    for row in rows:
        if "messages" in row:
            msgs = list(row["messages"])
            last = max((i for i, m in enumerate(msgs) if m["role"] == "assistant"), default=None)
            if last is None:
                continue
            out.append((msgs[:last], msgs[last]["content"]))
        elif "prompt" in row and "completion" in row:
            out.append(([{"role": "user", "content": row["prompt"]}], row["completion"]))
        else:
            raise StudioError(f"cannot score exact match on rows with columns {sorted(row)}",
                              "evaluate a prompt_completion or chat dataset")
    return out


def load_for_generation(base_model: str, adapter_dir: str | None = None):
    """(model, tokenizer) in eval mode; ``adapter_dir`` is a PEFT directory or a full model."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    is_peft = adapter_dir is not None and (Path(adapter_dir) / "adapter_config.json").is_file()
    weights = adapter_dir if adapter_dir is not None and not is_peft else base_model
    tokenizer = AutoTokenizer.from_pretrained(adapter_dir or base_model)
    model = AutoModelForCausalLM.from_pretrained(weights, dtype=torch.float32)
    if is_peft:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter_dir)
    model.eval()
    return model, tokenizer


def generate_greedy(model, tokenizer, prompts: list[list[dict[str, str]]], *, max_new_tokens: int = 16,
                    batch_size: int = 32) -> list[str]:
    import torch

    tokenizer.padding_side = "left"  # decoder-only: pad on the left so generation continues the prompt
    outputs: list[str] = []
    for i in range(0, len(prompts), batch_size):
        texts = [tokenizer.apply_chat_template(m, tokenize=False, add_generation_prompt=True)
                 for m in prompts[i:i + batch_size]]
        enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.no_grad():
            gen = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id)
        outputs += tokenizer.batch_decode(gen[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    return outputs


def exact_match(base_model: str, adapter_dir: str | None, rows: list[dict[str, Any]], *,
                max_new_tokens: int = 16, limit: int | None = None) -> dict[str, Any]:
    """``{"exact_match": share of rows answered exactly, "n": rows scored, "samples": first 5}``."""
    examples = rows_to_examples(rows[:limit] if limit else rows)
    if not examples:
        raise StudioError("no rows to evaluate", "pass a dataset with prompt/completion or chat rows")
    model, tokenizer = load_for_generation(base_model, adapter_dir)
    answers = generate_greedy(model, tokenizer, [m for m, _ in examples], max_new_tokens=max_new_tokens)
    hits = [a.strip() == want.strip() for a, (_, want) in zip(answers, examples, strict=True)]
    samples = [{"prompt": m[-1]["content"], "expected": want, "got": a}
               for a, (m, want) in list(zip(answers, examples, strict=True))[:5]]
    return {"exact_match": sum(hits) / len(hits), "n": len(hits), "samples": samples}


def exact_match_on_dataset(session: Session, dataset: str, base_model: str, adapter_dir: str | None, *,
                           max_new_tokens: int = 16, limit: int | None = None) -> dict[str, Any]:
    """Exact match on every row of a dataset snapshot (name, name@N or id)."""
    snap = resolve_snapshot(session, dataset).snapshot
    rows = load_split(snap.uri, "all").to_pylist()
    return exact_match(base_model, adapter_dir, rows, max_new_tokens=max_new_tokens, limit=limit)
