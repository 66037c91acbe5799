"""Train/serve parity: a version answers the same through PEFT + transformers (as training saw it)
and through the served ``/v1`` (``name@N``), or it cannot become a champion.

What is compared: greedy answers to the first ``N_PROMPTS`` prompts of the version's own training
snapshot (the gate's golden dataset when the version has none), rendered with the chat template the
version's folder carries (what training saved with the adapter: ``trainer.save_model`` writes the
training tokenizer next to it; the base model's when the folder has none), stopped at the model's
EOS (its ``generation_config``, which vLLM reads too), ``max_tokens`` the gate's. The served side is
the gateway (``studio.gateway.Client``), temperature 0, the same ``max_tokens``.

Text-exact, not token-exact: ``/v1`` returns text (token ids only through logprobs, which the gate
does not ask for), and text is what a user of the served model gets. Both sides are stripped of
surrounding whitespace and of a trailing U+FFFD: at ``max_tokens`` the last token may be half of a
UTF-8 character, which vLLM's detokenizer holds back and transformers' decode shows as U+FFFD.

The record (stored on ``ModelVersion.parity`` once, reused by every later gate decision)::

    {"status": "ok" | "mismatch", "compare": "text", "prompts": 4, "max_tokens": 16,
     "source": "snapshot <id>" | "gate dataset <name>", "checked_at": "...",
     "first_mismatch": null | {"index": 2, "prompt": "...", "peft": "...", "served": "..."}}

A version whose weights are not a local directory here (a remote-only artifact) cannot be loaded by
transformers in this process, and a process that cannot reach the gateway (no key) cannot ask
``/v1``: the check then answers ``status: "unchecked"`` with the reason, which is not stored (the
next gate decision tries again) and does not block.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlparse

from sqlalchemy.orm import Session

from studio.data.snapshots import load_split, resolve_snapshot
from studio.store.models import DatasetSnapshot, ModelVersion

N_PROMPTS = 4
Messages = list[dict[str, str]]


def normalize(text: str) -> str:
    return (text or "").strip().rstrip("\ufffd").strip()


def compare_answers(prompts: list[Messages], peft: list[str], served: list[str]) -> dict[str, Any]:
    """The parity record of two answer lists (text-exact after ``normalize``); pure."""
    first = None
    for i, (msgs, a, b) in enumerate(zip(prompts, peft, served, strict=True)):
        if normalize(a) != normalize(b):
            first = {"index": i, "prompt": msgs[-1]["content"], "peft": a, "served": b}
            break
    return {"status": "ok" if first is None else "mismatch", "compare": "text", "prompts": len(prompts),
            "first_mismatch": first, "checked_at": datetime.now(timezone.utc).isoformat()}


def describe(record: dict[str, Any]) -> str:
    """One line for a gate verdict."""
    if record["status"] == "ok":
        return f"parity ok ({record['prompts']} prompts, {record['compare']}-exact)"
    if record["status"] == "unchecked":
        return f"parity unchecked: {record['reason']}"
    m = record["first_mismatch"]
    return (f"parity check failed: PEFT and the served model answer differently to prompt {m['prompt']!r}: "
            f"PEFT {m['peft']!r}, served {m['served']!r}")


def local_dir(uri: str) -> Path | None:
    path = Path(urlparse(uri).path) if uri.startswith("file://") else Path(uri)
    ok = path.is_dir() and ((path / "adapter_config.json").is_file() or (path / "config.json").is_file())
    return path if ok else None


def parity_prompts(session: Session, mv: ModelVersion, golden: str | None) -> tuple[list[Messages], str]:
    """The first ``N_PROMPTS`` prompts of the version's training snapshot, else (no snapshot, or one
    without prompts: a text corpus) of the gate's golden dataset; and where they came from."""
    from studio.train.evaluate import rows_to_examples

    snap = session.get(DatasetSnapshot, mv.dataset_snapshot_id) if mv.dataset_snapshot_id else None
    if snap is not None:
        rows = load_split(snap.uri).slice(0, 64).to_pylist()
        if rows and ("messages" in rows[0] or {"prompt", "completion"} <= set(rows[0])):
            return [m for m, _ in rows_to_examples(rows)[:N_PROMPTS]], f"snapshot {snap.id}"
    rows = load_split(resolve_snapshot(session, golden).snapshot.uri).slice(0, 64).to_pylist()
    return [m for m, _ in rows_to_examples(rows)[:N_PROMPTS]], f"gate dataset {golden}"


def peft_answers(mv: ModelVersion, folder: Path, prompts: list[Messages], max_tokens: int) -> list[str]:
    """Greedy answers from transformers (+ PEFT), with the chat template the version's folder carries."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from studio.train.evaluate import generate_greedy

    is_peft = (folder / "adapter_config.json").is_file()
    tokenizer_dir = folder if (folder / "tokenizer_config.json").is_file() else Path(mv.base_model)
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    if tokenizer.pad_token is None:  # as training's load_tokenizer
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(mv.base_model if is_peft else str(folder), dtype=torch.float32)
    if is_peft:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(folder))
    return generate_greedy(model.eval(), tokenizer, prompts, max_new_tokens=max_tokens)


def served_answers(ref: str, prompts: list[Messages], max_tokens: int) -> list[str]:
    from studio.gateway import Client

    with Client(service="parity") as client:
        return [client.chat(ref, m, temperature=0, max_tokens=max_tokens)["choices"][0]["message"]["content"] or ""
                for m in prompts]


def check_parity(session: Session, mv: ModelVersion, golden: str | None, max_tokens: int,
                 served: Callable[[str, list[Messages], int], list[str]] = served_answers) -> dict[str, Any]:
    """The version's parity record: the stored one, else checked now and stored on the version."""
    if mv.parity and mv.parity.get("status") in ("ok", "mismatch"):
        return mv.parity
    folder = local_dir(mv.uri)
    if folder is None:
        return {"status": "unchecked", "reason": f"the version's files at {mv.uri} are not a local model or "
                "adapter folder here, so transformers cannot load them"}
    from studio.gateway import GatewayError

    prompts, source = parity_prompts(session, mv, golden)
    ref = f"{mv.name}@{mv.version}"
    try:
        answers = served(ref, prompts, max_tokens)
    except GatewayError as e:  # no key in this process, the gateway away: ask again at the next decision
        return {"status": "unchecked", "reason": f"the served {ref} could not be asked: {e.problem}"}
    record = {**compare_answers(prompts, peft_answers(mv, folder, prompts, max_tokens), answers),
              "max_tokens": max_tokens, "source": source}
    mv.parity = record
    session.flush()
    return record
