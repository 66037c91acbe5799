"""Chunking, prompts and robust parsing of generator replies.

Replies from small or chatty models wrap JSON in prose or code fences, use single objects instead
of lists, or name fields slightly differently; ``parse_reply`` accepts all of that and raises
``ParseError`` (with the reply kept) when no usable structure is found.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from studio.data.synth.spec import SynthSpec


class ParseError(ValueError):
    """The reply is not the asked-for structure; ``reply`` is what the model said."""

    def __init__(self, reason: str, reply: str):
        super().__init__(reason)
        self.reply = reply


@dataclass
class Chunk:
    index: int
    source: str
    text: str
    tokens: int


def chunk_document(text: str, source: str, spec: SynthSpec, start_index: int) -> list[Chunk]:
    """Windows of at most ``chunk_tokens`` tokens, stepping ``chunk_tokens - overlap_tokens``."""
    spans = _token_spans(text, spec.tokenizer)
    step = spec.chunk_tokens - spec.overlap_tokens
    out: list[Chunk] = []
    for i, lo in enumerate(range(0, max(len(spans), 1), step)):
        window = spans[lo: lo + spec.chunk_tokens]
        if not window:
            break
        piece = text[window[0][0]: window[-1][1]].strip()
        if piece:
            out.append(Chunk(start_index + len(out), source, piece, len(window)))
        if lo + spec.chunk_tokens >= len(spans):
            break
    return out


def _token_spans(text: str, tokenizer: str | None) -> list[tuple[int, int]]:
    if tokenizer:
        from pathlib import Path

        from tokenizers import Tokenizer

        path = Path(tokenizer).expanduser() / "tokenizer.json"
        if path.is_file():
            enc = Tokenizer.from_file(str(path)).encode(text, add_special_tokens=False)
            return [o for o in enc.offsets if o[1] > o[0]]
    return [m.span() for m in re.finditer(r"\S+", text)]


_INSTRUCTIONS = {
    "qa": ('Write {n} question-answer pairs that can be answered from the text alone. Reply with '
           'only JSON: {{"pairs": [{{"question": "...", "answer": "..."}}]}}'),
    "cot": ('Write {n} questions about the text, each with step-by-step reasoning and a short final '
            'answer. Reply with only JSON: {{"pairs": [{{"question": "...", "reasoning": "...", '
            '"answer": "..."}}]}}'),
    "summary": 'Summarize the text in a few sentences. Reply with only JSON: {{"summary": "..."}}',
}
_FIELDS = {"qa": ("question", "answer"), "cot": ("question", "reasoning", "answer")}


def response_format(spec: SynthSpec) -> dict[str, Any]:
    """The OpenAI ``response_format`` (json_schema) of the reply the instructions ask for; the root
    is an object (OpenAI refuses array roots). Not strict: ``maxLength`` is outside strict mode."""
    text: dict[str, Any] = {"type": "string", "minLength": 1}
    if spec.max_field_chars:
        text["maxLength"] = spec.max_field_chars

    def obj(fields: tuple[str, ...]) -> dict[str, Any]:
        return {"type": "object", "properties": {f: text for f in fields}, "required": list(fields),
                "additionalProperties": False}

    if spec.mode == "summary":
        schema = obj(("summary",))
    else:
        schema = {"type": "object", "properties": {"pairs": {
            "type": "array", "items": obj(_FIELDS[spec.mode]), "minItems": 1,
            "maxItems": spec.pairs_per_chunk}}, "required": ["pairs"], "additionalProperties": False}
    return {"type": "json_schema", "json_schema": {"name": f"synth_{spec.mode}", "schema": schema}}


def messages_for(chunk: Chunk, spec: SynthSpec) -> list[dict[str, str]]:
    return [{"role": "system", "content": "You write training data. Follow the output format exactly."},
            {"role": "user", "content": f"{_INSTRUCTIONS[spec.mode].format(n=spec.pairs_per_chunk)}"
                                        f"\n\nText:\n{chunk.text}"}]


def _json_candidates(reply: str) -> list[Any]:
    text = reply.strip()
    fenced = re.findall(r"```(?:json)?\s*(.*?)```", text, flags=re.S)
    cands = [*fenced, text]
    out = []
    for c in cands:
        for opener, closer in (("[", "]"), ("{", "}")):
            lo, hi = c.find(opener), c.rfind(closer)
            if lo >= 0 and hi > lo:
                try:
                    # strict=False: raw control characters inside strings (weak models emit them)
                    out.append(json.loads(c[lo: hi + 1], strict=False))
                except json.JSONDecodeError:
                    continue
    return out


def _field(obj: dict[str, Any], *names: str) -> str | None:
    lowered = {k.lower().strip(): v for k, v in obj.items() if isinstance(k, str)}
    for n in names:
        v = lowered.get(n)
        if isinstance(v, str) and v.strip():
            return v.strip()
    return None


def parse_reply(reply: str, chunk: Chunk, mode: str) -> list[dict[str, str]]:
    """Prompt/completion rows from one reply, or ``ParseError``."""
    if not reply or not reply.strip():
        raise ParseError("the generator replied with nothing", reply or "")
    for data in _json_candidates(reply):
        if mode == "summary":
            obj = data[0] if isinstance(data, list) and data and isinstance(data[0], dict) else data
            if isinstance(obj, dict) and (s := _field(obj, "summary", "text")):
                return [{"prompt": f"Summarize the following text.\n\n{chunk.text}", "completion": s}]
            continue
        items = data if isinstance(data, list) else (
            data.get("pairs") or data.get("questions") or data.get("items") or [data]
            if isinstance(data, dict) else [])
        rows = []
        for it in items if isinstance(items, list) else []:
            if not isinstance(it, dict):
                continue
            q, a = _field(it, "question", "q", "prompt"), _field(it, "answer", "a", "final_answer")
            if not q or not a:
                continue
            if mode == "cot":
                r = _field(it, "reasoning", "rationale", "thoughts", "steps")
                if not r:
                    continue
                a = f"{r}\n\nAnswer: {a}"
            rows.append({"prompt": q, "completion": a})
        if rows:
            return rows
    want = {"qa": 'a JSON list of {"question", "answer"}',
            "cot": 'a JSON list of {"question", "reasoning", "answer"}',
            "summary": 'a JSON object {"summary"}'}[mode]
    raise ParseError(f"the reply is not {want}", reply)
