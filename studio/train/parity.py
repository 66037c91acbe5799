"""The PEFT side of the promotion gate's train/serve parity check (studio.evals.parity), computed
where the adapter is: a training job records its greedy answers to the parity prompts when it
registers the version, so the gate only asks the served ``/v1`` and compares text.

The answers come from the saved adapter folder, loaded afresh (what the registry will hold, not the
model in memory). Training's rank-0 worker computes them right after saving (``worker_answers``:
transformers is imported there already) and leaves them beside the final adapter; the driver
computes them itself only when they are missing (an older checkpoint, or the worker's try failed),
which costs it the ~8 s of importing transformers and PEFT on 2 CPU cores."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from studio.data.snapshots import load_split

N_PROMPTS = 4
# The answers' length (the gate asks /v1 with the same): a template, tokenizer or weights difference
# shows in the first tokens (the e2e's gate uses 16 too).
RECORD_MAX_TOKENS = 16
# Recording answers loads the model once more on CPU (float32): only a base model
# whose weight files here total at most this (the gate loads larger ones itself, when asked).
RECORD_MAX_WEIGHT_BYTES = 2 << 30
Messages = list[dict[str, str]]


def snapshot_prompts(uri: str) -> list[Messages] | None:
    """The first ``N_PROMPTS`` prompts of a snapshot; None when its rows have none (a text corpus).
    Preference pairs give their first distinct prompts, each one user turn (as DPO trains on them:
    studio.train.dpo)."""
    from studio.train.evaluate import rows_to_examples

    rows = load_split(uri).slice(0, 64).to_pylist()
    if rows and ("messages" in rows[0] or {"prompt", "completion"} <= set(rows[0])):
        return [m for m, _ in rows_to_examples(rows)[:N_PROMPTS]]
    if rows and {"prompt", "chosen", "rejected"} <= set(rows[0]):
        distinct = list(dict.fromkeys(r["prompt"] for r in rows if r["prompt"].strip()))
        return [[{"role": "user", "content": p}] for p in distinct[:N_PROMPTS]] or None
    return None


def worker_answers(snapshot_uri: str, base_model: str, folder: Path) -> dict[str, Any] | None:
    """``{"prompts", "peft"}``: the saved adapter's greedy answers to its snapshot's parity prompts,
    or None when none are recorded (no prompts, or the base model is not a local folder of at most
    ``RECORD_MAX_WEIGHT_BYTES``: loaded once more on CPU in float32)."""
    weights = [f for f in Path(base_model).glob("*") if f.suffix in (".safetensors", ".bin")]
    if not weights or sum(f.stat().st_size for f in weights) > RECORD_MAX_WEIGHT_BYTES:
        return None
    prompts = snapshot_prompts(snapshot_uri)
    if not prompts:
        return None
    return {"prompts": prompts, "peft": peft_answers(base_model, folder, prompts, RECORD_MAX_TOKENS)}


def training_record(snapshot_uri: str, snapshot_id: str, base_model: str, folder: Path,
                    job_id: int, answers: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """What a training job stores on the version it registers: its PEFT answers to the parity
    prompts of its snapshot (``answers``: those its worker computed, else computed here). None (the
    gate then checks the folder itself) when none are recorded (``worker_answers``)."""
    if answers is None:
        answers = worker_answers(snapshot_uri, base_model, folder)
        if answers is None:
            return None
    return {"status": "recorded", "prompts": answers["prompts"], "peft": answers["peft"],
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
