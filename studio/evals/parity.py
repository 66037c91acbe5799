"""Train/serve parity: a version answers the same through PEFT + transformers (as training saw it)
and through the served ``/v1`` (``name@N``), or it cannot become a champion.

What is compared: greedy answers to the first ``N_PROMPTS`` prompts of the version's own training
snapshot (the gate's golden dataset when the version has none), rendered with the chat template the
version's folder carries (what training saved with the adapter: ``trainer.save_model`` writes the
training tokenizer next to it; the base model's when the folder has none), stopped at the model's
EOS (its ``generation_config``, which vLLM reads too). The served side is the gateway
(``studio.gateway.Client``), temperature 0, the same ``max_tokens``.

Where the PEFT side is computed: a training job computes it when it registers the version
(``studio.train.parity.training_record``: it has the adapter and the tokenizer at hand and torch already imported), on
its snapshot's prompts with ``RECORD_MAX_TOKENS`` (16), and stores it on ``ModelVersion.parity`` as
``status: "recorded"`` (prompts, answers, max_tokens); the gate then only asks ``/v1`` the same
prompts with the same ``max_tokens`` and compares text. A version registered without it (by hand,
from a snapshot without prompts, or a folder copied with other tokenizer files after training) is
checked by the gate's process itself: transformers loads the version's folder there (the local check).

Text-exact, not token-exact: ``/v1`` returns text (token ids only through logprobs, which the gate
does not ask for), and text is what a user of the served model gets. Both sides are stripped of
surrounding whitespace and of a trailing U+FFFD: at ``max_tokens`` the last token may be half of a
UTF-8 character, which vLLM's detokenizer holds back and transformers' decode shows as U+FFFD.

The record (stored on ``ModelVersion.parity`` once, reused by every later gate decision)::

    {"status": "ok" | "mismatch", "compare": "text", "prompts": 4, "max_tokens": 16,
     "source": "snapshot <id>" | "gate dataset <name>", "peft_by": "job <id>" | "gate",
     "checked_at": "...",
     "first_mismatch": null | {"index": 2, "prompt": "...", "peft": "...", "served": "..."}}

A version whose weights are not a local directory here (a remote-only artifact) and that has no
recorded answers cannot be loaded by transformers in this process, and a process that cannot reach
the gateway (no key) cannot ask ``/v1``: the check then answers ``status: "unchecked"`` with the
reason, which is not stored (the next gate decision tries again; recorded answers stay) and does not
block.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlparse

from sqlalchemy.orm import Session

from studio.data.snapshots import load_split, resolve_snapshot
from studio.store.models import DatasetSnapshot, ModelVersion
from studio.train.parity import N_PROMPTS, peft_answers, snapshot_prompts

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
    prompts = snapshot_prompts(snap.uri) if snap is not None else None
    if prompts:
        return prompts, f"snapshot {snap.id}"
    rows = load_split(resolve_snapshot(session, golden).snapshot.uri).slice(0, 64).to_pylist()
    return [m for m, _ in rows_to_examples(rows)[:N_PROMPTS]], f"gate dataset {golden}"


def served_answers(ref: str, prompts: list[Messages], max_tokens: int) -> list[str]:
    from studio.gateway import Client

    with Client(service="parity") as client:
        return [client.chat(ref, m, temperature=0, max_tokens=max_tokens)["choices"][0]["message"]["content"] or ""
                for m in prompts]


def check_parity(session: Session, mv: ModelVersion, golden: str | None, max_tokens: int,
                 served: Callable[[str, list[Messages], int], list[str]] = served_answers) -> dict[str, Any]:
    """The version's parity record: the stored one, else checked now and stored on the version.
    With answers its training job recorded, only ``/v1`` is asked (their prompts, their max_tokens);
    without, the version's folder is loaded here."""
    stored = mv.parity or {}
    if stored.get("status") in ("ok", "mismatch"):
        return stored
    recorded = stored if stored.get("status") == "recorded" else None
    if recorded is not None:
        prompts, source, max_tokens = recorded["prompts"], recorded["source"], int(recorded["max_tokens"])
    else:
        folder = local_dir(mv.uri)
        if folder is None:
            return {"status": "unchecked", "reason": f"the version's files at {mv.uri} are not a local model or "
                    "adapter folder here, so transformers cannot load them"}
        prompts, source = parity_prompts(session, mv, golden)
    from studio.gateway import GatewayError

    ref = f"{mv.name}@{mv.version}"
    try:
        answers = served(ref, prompts, max_tokens)
    except GatewayError as e:  # no key in this process, the gateway away: ask again at the next decision
        return {"status": "unchecked", "reason": f"the served {ref} could not be asked: {e.problem}"}
    peft = recorded["peft"] if recorded is not None else peft_answers(mv.base_model, folder, prompts, max_tokens)
    record = {**compare_answers(prompts, peft, answers), "max_tokens": max_tokens, "source": source,
              "peft_by": recorded.get("peft_by", "training") if recorded is not None else "gate"}
    mv.parity = record
    session.flush()
    return record
