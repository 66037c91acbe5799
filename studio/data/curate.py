"""Curation: recorded, re-runnable transforms from one snapshot to a new one with lineage.

A :class:`CurateSpec` is a source snapshot and an ordered list of steps. Running it reads the
source, applies the steps row by row, and writes a new snapshot whose lineage is (source id,
``curate``, the resolved steps); every dropped row is kept with its step and reason
(``studio data show SNAP --dropped``). The id hashes the lineage and the rows, so running the same
steps on the same input gives the same snapshot id, and ``rerun`` applies a snapshot's recorded
steps to another source.

Steps: ``dedupe`` (exact, and near-duplicates by MinHash-estimated Jaccard over word shingles with
``datasketch``'s LSH — one pass, memory linear in rows), ``length`` (token or character bounds with
the base model's tokenizer), ``turns`` (empty or broken turns), ``charset`` (control characters,
U+FFFD from broken decoding, share of non-ASCII), ``redact`` (e-mails and phone numbers replaced,
the row kept) and ``mix`` (add a share of rows of a general snapshot against forgetting).
"""

from __future__ import annotations

import hashlib
import random
import re
import unicodedata
from collections.abc import Iterator
from typing import Annotated, Any, Literal

import pyarrow.parquet as pq
from pydantic import Field

from studio.data.kinds import DatasetKind, row_text
from studio.data.snapshots import resolve_snapshot
from studio.data.tokens import token_counter
from studio.data.writer import Lineage, Owner, SnapshotWriter, check_owner
from studio.errors import StudioError
from studio.recipes import Spec, load_recipe
from studio.settings import StudioSettings
from studio.store.artifacts import open_uri
from studio.store.db import session_scope
from studio.store.models import DatasetSnapshot


class DedupeStep(Spec):
    type: Literal["dedupe"] = Field(description="Drop exact and (optionally) near-duplicate rows.")
    near_threshold: float | None = Field(
        default=0.85, gt=0, le=1,
        description="Estimated Jaccard similarity of word shingles at or above which a row is a "
        "near-duplicate of an earlier one; null: exact duplicates only.")
    shingle_words: int = Field(default=3, ge=1, le=16, description="Words per shingle.")
    num_perm: int = Field(default=128, ge=16, le=512, description="MinHash permutations (accuracy).")


class LengthStep(Spec):
    type: Literal["length"] = Field(description="Keep rows whose length is within bounds.")
    tokenizer: str | None = Field(
        default=None, description="Local model folder (or cached hub id) whose tokenizer counts "
        "tokens; null: whitespace words.")
    min_tokens: int | None = Field(default=None, ge=0, description="Fewest tokens (or words).")
    max_tokens: int | None = Field(default=None, ge=1, description="Most tokens (or words).")
    min_chars: int | None = Field(default=None, ge=0, description="Fewest characters.")
    max_chars: int | None = Field(default=None, ge=1, description="Most characters.")


class TurnsStep(Spec):
    type: Literal["turns"] = Field(description="Drop rows with empty or broken turns.")
    require_assistant_last: bool = Field(
        default=True, description="Chat rows must end with an assistant turn (something to learn).")


class CharsetStep(Spec):
    type: Literal["charset"] = Field(description="Drop rows with unwanted characters.")
    max_non_ascii_ratio: float | None = Field(
        default=None, ge=0, le=1, description="Largest share of non-ASCII characters; null: any.")
    drop_control: bool = Field(default=True, description="Drop rows with control characters "
                               "other than tab and newline.")
    drop_replacement: bool = Field(default=True, description="Drop rows holding U+FFFD (text "
                                   "decoded with the wrong encoding).")


class RedactStep(Spec):
    type: Literal["redact"] = Field(description="Replace PII in every text field; rows are kept.")
    emails: bool = Field(default=True, description="Replace e-mail addresses with email_token.")
    phones: bool = Field(default=True, description="Replace phone numbers with phone_token.")
    email_token: str = Field(default="[EMAIL]", description="Replacement for an e-mail address.")
    phone_token: str = Field(default="[PHONE]", description="Replacement for a phone number.")


class MixStep(Spec):
    type: Literal["mix"] = Field(description="Add a share of general rows (forgetting guard).")
    snapshot: str = Field(description="General data of the same kind: name, name@N or snapshot id.")
    share: float = Field(gt=0, lt=1, description="Share of the output that is general data.")
    seed: int = Field(default=0, description="Seed of the sample of general rows.")


Step = Annotated[DedupeStep | LengthStep | TurnsStep | CharsetStep | RedactStep | MixStep,
                 Field(discriminator="type")]


class CurateSpec(Spec):
    """A curation recipe (configs/data/curate-*.yaml)."""

    source: str = Field(description="Snapshot to curate: name, name@N or snapshot id (prefix).")
    name: str | None = Field(default=None, description="Dataset name of the result; default "
                             "'<source name>-curated'.")
    steps: list[Step] = Field(min_length=1, description="Transforms, applied in order.")


def load_curate_spec(path: str, overrides: list[str] | tuple[str, ...] = ()) -> CurateSpec:
    return load_recipe(path, CurateSpec, overrides)


EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")
# International or national numbers with at least 8 digits in groups: +1 (555) 010-9999,
# 0151 2345678, 555-010-9999. Plain long digit runs (ids, amounts) with no separators are kept.
PHONE = re.compile(r"(?<![\w+])(?:\+\d{1,3}[ .-]?)?(?:\(\d{1,4}\)[ .-]?)?\d{2,4}(?:[ .-]\d{2,4}){1,4}(?!\w)")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def _is_phone(match: str) -> bool:
    digits = sum(c.isdigit() for c in match)
    return 8 <= digits <= 15 and (match.startswith(("+", "(")) or any(c in match for c in " .-"))


class _Drop(Exception):
    def __init__(self, step: str, reason: str):
        self.step, self.reason = step, reason


def _map_text(row: dict[str, Any], kind: DatasetKind, fn) -> dict[str, Any]:
    if kind is DatasetKind.chat:
        return {"messages": [{"role": m["role"], "content": fn(m["content"])} for m in row["messages"]]}
    return {c: (fn(v) if c != "source" else v) for c, v in row.items()}


class _Runner:
    """Applies the steps to one row at a time; holds the dedupe state across rows."""

    def __init__(self, steps: list[Step], kind: DatasetKind):
        self.steps, self.kind = steps, kind
        self.seen: dict[str, int] = {}
        self.lsh: dict[int, Any] = {}
        self.redactions = 0

    def apply(self, idx: int, row: dict[str, Any]) -> dict[str, Any]:
        for i, step in enumerate(self.steps):
            row = getattr(self, f"_{step.type}")(i, step, idx, row)
        return row

    def _dedupe(self, i: int, step: DedupeStep, idx: int, row: dict[str, Any]) -> dict[str, Any]:
        text = row_text(row, self.kind)
        norm = " ".join(text.lower().split())
        digest = hashlib.sha256(norm.encode()).hexdigest()
        if digest in self.seen:
            raise _Drop("dedupe", f"exact duplicate of row {self.seen[digest]} (after lower-casing "
                        "and collapsing whitespace)")
        self.seen[digest] = idx
        if step.near_threshold is None:
            return row
        from datasketch import MinHash, MinHashLSH

        if i not in self.lsh:
            self.lsh[i] = (MinHashLSH(threshold=step.near_threshold, num_perm=step.num_perm), {})
        lsh, hashes = self.lsh[i]
        words = norm.split()
        k = step.shingle_words
        shingles = {" ".join(words[j:j + k]) for j in range(max(1, len(words) - k + 1))}
        m = MinHash(num_perm=step.num_perm, seed=1)
        m.update_batch([s.encode() for s in shingles])
        for other in sorted(lsh.query(m)):
            sim = m.jaccard(hashes[other])
            if sim >= step.near_threshold:
                raise _Drop("dedupe", f"near-duplicate of row {other} (estimated Jaccard {sim:.2f} "
                            f">= {step.near_threshold})")
        lsh.insert(idx, m)
        hashes[idx] = m
        return row

    def _length(self, i: int, step: LengthStep, idx: int, row: dict[str, Any]) -> dict[str, Any]:
        text = row_text(row, self.kind)
        n = len(text)
        if step.min_chars is not None and n < step.min_chars:
            raise _Drop("length", f"{n} characters, fewer than min_chars {step.min_chars}")
        if step.max_chars is not None and n > step.max_chars:
            raise _Drop("length", f"{n} characters, more than max_chars {step.max_chars}")
        if step.min_tokens is not None or step.max_tokens is not None:
            count, unit = token_counter(step.tokenizer)
            t = count(text)
            if step.min_tokens is not None and t < step.min_tokens:
                raise _Drop("length", f"{t} {unit}, fewer than min_tokens {step.min_tokens}")
            if step.max_tokens is not None and t > step.max_tokens:
                raise _Drop("length", f"{t} {unit}, more than max_tokens {step.max_tokens}")
        return row

    def _turns(self, i: int, step: TurnsStep, idx: int, row: dict[str, Any]) -> dict[str, Any]:
        if self.kind is DatasetKind.chat:
            msgs = row["messages"]
            for j, m in enumerate(msgs):
                if not m["content"].strip():
                    raise _Drop("turns", f"messages[{j}] ({m['role']}) is empty")
                if j and m["role"] == msgs[j - 1]["role"] and m["role"] != "tool":
                    raise _Drop("turns", f"messages[{j - 1}] and [{j}] are both {m['role']} turns")
            if not any(m["role"] == "user" for m in msgs):
                raise _Drop("turns", "no user turn")
            if step.require_assistant_last and msgs[-1]["role"] != "assistant":
                raise _Drop("turns", f"last turn is {msgs[-1]['role']}, not assistant")
        elif self.kind is DatasetKind.preference and row["chosen"].strip() == row["rejected"].strip():
            raise _Drop("turns", "chosen and rejected are the same text")
        else:
            for c, v in row.items():
                if not v.strip():
                    raise _Drop("turns", f"column {c!r} is empty")
        return row

    def _charset(self, i: int, step: CharsetStep, idx: int, row: dict[str, Any]) -> dict[str, Any]:
        text = row_text(row, self.kind)
        if step.drop_replacement and "\ufffd" in text:
            raise _Drop("charset", "holds U+FFFD replacement characters (decoded with the wrong encoding)")
        if step.drop_control and (m := _CONTROL.search(text)):
            raise _Drop("charset", f"holds control character {unicodedata.name(m.group(), hex(ord(m.group())))}"
                        f" (U+{ord(m.group()):04X})")
        if step.max_non_ascii_ratio is not None and text:
            share = sum(ord(c) > 127 for c in text) / len(text)
            if share > step.max_non_ascii_ratio:
                raise _Drop("charset", f"{share:.0%} non-ASCII characters, over {step.max_non_ascii_ratio:.0%}")
        return row

    def _redact(self, i: int, step: RedactStep, idx: int, row: dict[str, Any]) -> dict[str, Any]:
        def clean(text: str) -> str:
            if step.emails:
                text, n = EMAIL.subn(step.email_token, text)
                self.redactions += n
            if step.phones:
                def sub(m: re.Match) -> str:
                    if _is_phone(m.group()):
                        self.redactions += 1
                        return step.phone_token
                    return m.group()
                text = PHONE.sub(sub, text)
            return text
        return _map_text(row, self.kind, clean)

    def _mix(self, i: int, step: MixStep, idx: int, row: dict[str, Any]) -> dict[str, Any]:
        return row  # mixing adds rows at the end; see curate()


def iter_rows(uri: str) -> Iterator[dict[str, Any]]:
    with open_uri(uri, "rb") as f:
        for batch in pq.ParquetFile(f).iter_batches(batch_size=4096):
            yield from batch.to_pylist()


def curate(spec: CurateSpec, settings: StudioSettings, owner: Owner = None) -> dict[str, Any]:
    """Run the recipe; returns the new snapshot's id, name@version, kept and dropped counts.
    ``owner``: the key adding the version (see ``SnapshotWriter.commit``)."""
    with session_scope(settings.db_url) as s:
        ref = resolve_snapshot(s, spec.source)
        src_id, kind, src_uri = ref.snapshot.id, DatasetKind(ref.snapshot.kind), ref.snapshot.uri
        name = spec.name or (f"{ref.name}-curated" if ref.name else None)
        mixes = {}
        for step in spec.steps:
            if isinstance(step, MixStep):
                g = resolve_snapshot(s, step.snapshot).snapshot
                if g.kind != kind.value:
                    raise StudioError(f"mix snapshot {step.snapshot!r} holds {g.kind} rows, the source "
                                      f"holds {kind.value} rows", "mix in general data of the same kind")
                mixes[step.snapshot] = (g.id, g.uri)
    if name is None:
        raise StudioError(f"source {spec.source!r} is a bare snapshot id", "give the result a name (--name)")
    check_owner(settings, [name], owner)
    # Recorded parameters: mix sources pinned to their snapshot ids, so a re-run is reproducible.
    steps = [s.model_dump() | ({"snapshot": mixes[s.snapshot][0]} if isinstance(s, MixStep) else {})
             for s in spec.steps]
    runner = _Runner(spec.steps, kind)
    with SnapshotWriter(kind, Lineage(src_id, "curate", {"steps": steps})) as writer:
        for idx, row in enumerate(iter_rows(src_uri), start=1):
            try:
                writer.add(runner.apply(idx, row))
            except _Drop as d:
                writer.drop(idx, d.reason, step=d.step, data=row)
        for step in spec.steps:
            if isinstance(step, MixStep):
                _mix_in(writer, step, mixes[step.snapshot])
        if writer.row_count == 0:
            raise StudioError(f"curation of {spec.source!r} dropped every row ({writer.dropped_count})",
                              "loosen the steps; nothing was stored")
        done = writer.commit(settings, name, f"curate {spec.source} ({src_id[:12]})", owner)
    return {"snapshot_id": done.snapshot_id, "name": name, "version": done.version,
            "created": done.created, "rows": done.row_count, "dropped": done.dropped_count,
            "redactions": runner.redactions, "parent_id": src_id}


def _mix_in(writer: SnapshotWriter, step: MixStep, general: tuple[str, str]) -> None:
    own = writer.row_count
    want = round(step.share * own / (1 - step.share))
    rows = list(iter_rows(general[1]))
    picked = sorted(random.Random(step.seed).sample(range(len(rows)), min(want, len(rows))))
    for j in picked:
        writer.add(rows[j])


def rerun(snapshot_ref: str, source: str, settings: StudioSettings, name: str | None = None,
          owner: Owner = None) -> dict[str, Any]:
    """Apply the curation steps recorded on ``snapshot_ref`` to ``source``."""
    with session_scope(settings.db_url) as s:
        snap: DatasetSnapshot = resolve_snapshot(s, snapshot_ref).snapshot
        if snap.transform != "curate":
            raise StudioError(f"snapshot {snap.id[:12]} was not made by curation "
                              f"(transform: {snap.transform or 'ingest'})", "pass a curated snapshot")
        steps = snap.params["steps"]
    return curate(CurateSpec(source=source, name=name, steps=steps), settings, owner)
