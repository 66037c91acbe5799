"""The PEFT side of the promotion gate's train/serve parity check (studio.evals.parity), computed
where the adapter is: a training job records its greedy answers to the parity prompts when it
registers the version, so the gate only asks the served ``/v1`` and compares text."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from studio.data.snapshots import load_split

N_PROMPTS = 4
# The answers' length (the gate asks /v1 with the same): a template, tokenizer or weights difference
# shows in the first tokens (the e2e's gate uses 16 too).
RECORD_MAX_TOKENS = 16
# Training's driver loads the model once more on CPU (float32) to record answers: only a base model
# whose weight files here total at most this (the gate loads larger ones itself, when asked).
RECORD_MAX_WEIGHT_BYTES = 2 << 30
Messages = list[dict[str, str]]


def snapshot_prompts(uri: str) -> list[Messages] | None:
    """The first ``N_PROMPTS`` prompts of a snapshot; None when its rows have none (a text corpus,
    preference rows)."""
    from studio.train.evaluate import rows_to_examples

    rows = load_split(uri).slice(0, 64).to_pylist()
    if rows and ("messages" in rows[0] or {"prompt", "completion"} <= set(rows[0])):
        return [m for m, _ in rows_to_examples(rows)[:N_PROMPTS]]
    return None


def training_record(snapshot_uri: str, snapshot_id: str, base_model: str, folder: Path,
                    job_id: int) -> dict[str, Any] | None:
    """What a training job stores on the version it registers: its PEFT answers to the parity
    prompts of its snapshot. None (the gate then checks the folder itself) when the snapshot has no
    prompts, or the base model is not a local folder of at most ``RECORD_MAX_WEIGHT_BYTES``."""
    weights = [f for f in Path(base_model).glob("*") if f.suffix in (".safetensors", ".bin")]
    if not weights or sum(f.stat().st_size for f in weights) > RECORD_MAX_WEIGHT_BYTES:
        return None
    prompts = snapshot_prompts(snapshot_uri)
    if not prompts:
        return None
    return {"status": "recorded", "prompts": prompts,
            "peft": peft_answers(base_model, folder, prompts, RECORD_MAX_TOKENS),
            "max_tokens": RECORD_MAX_TOKENS, "source": f"snapshot {snapshot_id}", "peft_by": f"job {job_id}",
            "recorded_at": datetime.now(timezone.utc).isoformat()}


def peft_answers(base_model: str, folder: Path, prompts: list[Messages], max_tokens: int) -> list[str]:
    """Greedy answers from transformers (+ PEFT), with the chat template the version's folder carries."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from studio.train.evaluate import generate_greedy

    is_peft = (folder / "adapter_config.json").is_file()
    tokenizer_dir = folder if (folder / "tokenizer_config.json").is_file() else Path(base_model)
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    if tokenizer.pad_token is None:  # as training's load_tokenizer
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(base_model if is_peft else str(folder), dtype=torch.float32)
    if is_peft:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(folder))
    return generate_greedy(model.eval(), tokenizer, prompts, max_new_tokens=max_tokens)
