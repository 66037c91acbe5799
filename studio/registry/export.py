"""A registered version leaving the studio: its adapter folder with a model card, as a streamed
``.tar.gz`` (download) or copied to any fsspec URI (push).

The model card (``README.md``) says what a reader of the folder cannot see in it: the base model,
the data snapshot, the recipe and the scores the registry holds for the version.
"""

from __future__ import annotations

import json
import posixpath
import tarfile
import time
import uuid
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import yaml
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from studio.errors import Conflict, NotFound, StudioError
from studio.registry.versions import get_version
from studio.store.artifacts import CREDENTIALS_FIX, filesystem, storage_errors
from studio.store.models import DatasetSnapshot, EvalScore, Job, ModelVersion

CARD = "README.md"
CHUNK = 1 << 20
_BLOCK = 512
_RECORD = 20 * _BLOCK  # tar pads the archive to whole records


@dataclass(frozen=True)
class VersionFiles:
    """The files of a version in the artifact store: ``(relative path, size)`` under ``path``."""

    ref: str
    fs: Any
    path: str
    files: list[tuple[str, int]]

    def open(self, rel: str):
        return self.fs.open(posixpath.join(self.path, rel), "rb")


def version_files(mv: ModelVersion) -> VersionFiles:
    """List a version's files; a 404 naming why when they are gone (deleted from the store, or
    never complete: an adapter folder without its ``adapter_config.json``)."""
    ref = f"{mv.name}@{mv.version}"
    fs, path = filesystem(mv.uri)
    path = path.rstrip("/")
    gone = f"the files of {ref} are gone"
    fix = ("the artifact store lost them (deleted or moved): register the version again from its job "
           f"(`studio models show {ref}` names it), or pick another version (`studio models ls {mv.name}`)")
    with storage_errors(mv.uri, "reading"):
        fs.invalidate_cache(path)
        if not fs.isdir(path):
            raise NotFound(f"{gone}: {mv.uri} does not exist in the artifact store", fix)
        found = fs.find(path, detail=True)
    files = sorted((posixpath.relpath(p, path), int(info.get("size") or 0)) for p, info in found.items()
                   if info.get("type") != "directory")
    names = {rel for rel, _ in files}
    if mv.adapter_type in ("lora", "qlora") and "adapter_config.json" not in names:
        raise NotFound(f"{gone}: {mv.uri} has no adapter_config.json (an incomplete adapter folder)", fix)
    if not files:
        raise NotFound(f"{gone}: {mv.uri} is empty", fix)
    return VersionFiles(ref, fs, path, files)


def eval_scores(session: Session, ref: str) -> list[dict[str, Any]]:
    """Mean score per eval run and scorer where the version was evaluated by its pinned name."""
    rows = session.execute(
        select(EvalScore.job_id, EvalScore.scorer, func.avg(EvalScore.score), func.count(EvalScore.score))
        .where(EvalScore.model == ref, EvalScore.score.is_not(None))
        .group_by(EvalScore.job_id, EvalScore.scorer).order_by(EvalScore.job_id, EvalScore.scorer)).all()
    specs = {j.id: j.spec or {} for j in session.scalars(select(Job).where(Job.id.in_({r[0] for r in rows})))}
    return [{"eval_id": job_id, "dataset": specs.get(job_id, {}).get("dataset"), "scorer": scorer,
             "mean": float(mean), "n": n} for job_id, scorer, mean, n in rows]


def model_card(session: Session, mv: ModelVersion) -> str:
    """README.md for the version's folder: what it is, what it came from, how it scored, how to load it."""
    ref = f"{mv.name}@{mv.version}"
    job = session.get(Job, mv.job_id) if mv.job_id is not None else None
    snap = session.get(DatasetSnapshot, mv.dataset_snapshot_id) if mv.dataset_snapshot_id else None
    lines = [f"# {ref}", "",
             f"A {mv.adapter_type} {'adapter' if mv.adapter_type != 'full' else 'model'} exported from LLM Studio's "
             f"registry (stage {mv.stage} when exported).", "",
             "| | |", "|---|---|",
             f"| base model | `{mv.base_model}` |",
             f"| method | {mv.method} |",
             f"| adapter type | {mv.adapter_type} |",
             f"| data snapshot | {f'`{snap.id}` ({snap.kind}, {snap.row_count} rows)' if snap else 'not recorded'} |",
             f"| training job | {job.id if job else 'not recorded'} |",
             f"| MLflow run | {mv.mlflow_run_id or 'not recorded'} |",
             f"| registered | {mv.created_at.isoformat()} |", ""]
    lines += ["## Scores", ""]
    if mv.metrics:
        lines += ["Recorded with the version (training and `eval_after`):", "", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {v:.6g} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in sorted(mv.metrics.items())]
        lines.append("")
    evals = eval_scores(session, ref)
    if evals:
        lines += [f"Evaluations of `{ref}`:", "", "| eval | dataset | scorer | mean | n |", "|---|---|---|---|---|"]
        lines += [f"| {e['eval_id']} | {e['dataset']} | {e['scorer']} | {e['mean']:.4f} | {e['n']} |" for e in evals]
        lines.append("")
    if not mv.metrics and not evals:
        lines += ["None recorded.", ""]
    if job is not None and job.spec:
        lines += ["## Recipe", "", "```yaml", yaml.safe_dump(job.spec, sort_keys=False).rstrip(), "```", ""]
    if mv.adapter_type != "full":
        lines += ["## Load it", "", "```python",
                  "from peft import PeftModel",
                  "from transformers import AutoModelForCausalLM, AutoTokenizer", "",
                  f"base = AutoModelForCausalLM.from_pretrained({json.dumps(mv.base_model)})",
                  "model = PeftModel.from_pretrained(base, \"path/to/this/folder\")",
                  f"tokenizer = AutoTokenizer.from_pretrained({json.dumps(mv.base_model)})", "```", "",
                  f"A model with the adapter merged in: `studio models merge {ref} --out DIR`.", ""]
    return "\n".join(lines)


def folder_name(mv: ModelVersion) -> str:
    return f"{mv.name}-v{mv.version}"


def _tar_header(name: str, size: int, mode: int, kind: bytes = tarfile.REGTYPE) -> bytes:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime, info.type = size, mode, int(time.time()), kind
    return info.tobuf(tarfile.PAX_FORMAT)


def _archive_chunks(files: VersionFiles, top: str, card: bytes) -> Iterator[bytes]:
    """A gzipped tar written as it is read: one file's chunk at a time, never the whole archive
    (or a whole weight file) in memory."""
    gz = zlib.compressobj(6, zlib.DEFLATED, 31)  # wbits 31: a gzip stream
    written = 0

    def put(data: bytes) -> bytes:
        nonlocal written
        written += len(data)
        return gz.compress(data)

    yield put(_tar_header(top, 0, 0o755, tarfile.DIRTYPE))
    entries = [(rel, size) for rel, size in files.files if rel != CARD]  # the card written here wins
    for rel, size in entries:
        yield put(_tar_header(f"{top}/{rel}", size, 0o644))
        sent = 0
        with files.open(rel) as f:
            while chunk := f.read(min(CHUNK, size - sent)):
                sent += len(chunk)
                yield put(chunk)
                if sent >= size:
                    break
        if sent != size:  # the file changed under us: a short tar member would corrupt the rest
            raise StudioError(f"{files.ref}: {rel} changed size while it was being archived ({sent} of {size} bytes)",
                              "download it again")
        yield put(b"\0" * (-size % _BLOCK))
    yield put(_tar_header(f"{top}/{CARD}", len(card), 0o644))
    yield put(card + b"\0" * (-len(card) % _BLOCK))
    end = 2 * _BLOCK
    yield put(b"\0" * (end + (-(written + end) % _RECORD)))
    yield gz.flush()


def adapter_archive(session: Session, ref: str) -> tuple[str, Iterator[bytes]]:
    """``(file name, chunks)`` of ``NAME-vN.tar.gz``: the version's folder (``NAME-vN/``) with
    its model card. The files are checked before the first byte, so a missing folder is a 404,
    not a broken download."""
    mv = get_version(session, ref)
    files = version_files(mv)
    card = model_card(session, mv).encode()
    top = folder_name(mv)
    return f"{top}.tar.gz", (c for c in _archive_chunks(files, top, card) if c)


def push_version(session: Session, ref: str, uri: str) -> str:
    """Copy the version's folder and its model card to ``uri`` (any fsspec URI, a local folder
    included). Everything is written under a temporary sibling name first and moved into place
    at the end, so a failure leaves nothing at ``uri``; an existing ``uri`` is refused."""
    mv = get_version(session, ref)
    files = version_files(mv)
    card = model_card(session, mv).encode()
    fs, dest = filesystem(uri)
    dest = dest.rstrip("/")
    if not dest or dest in ("/", "."):
        raise StudioError(f"push destination {uri!r} names no folder", "give a folder URI such as s3://bucket/adapters/x")
    with _writing(uri):
        fs.invalidate_cache(dest)
        if fs.exists(dest):
            raise Conflict(f"{uri} already exists; push never overwrites", "push to a new URI, or remove the old one first")
    tmp = f"{dest}.tmp-{uuid.uuid4().hex[:12]}"
    try:
        with _writing(uri):
            if _is_local(fs):  # an object store needs no folders, and s3fs' makedirs would create a bucket
                fs.makedirs(tmp, exist_ok=True)
            for rel, _ in files.files:
                if rel == CARD:
                    continue
                with files.open(rel) as src, fs.open(f"{tmp}/{rel}", "wb") as out:
                    while chunk := src.read(CHUNK):
                        out.write(chunk)
            with fs.open(f"{tmp}/{CARD}", "wb") as out:
                out.write(card)
            _move_into_place(fs, tmp, dest, [rel for rel, _ in files.files if rel != CARD] + [CARD])
    finally:
        _remove_quietly(fs, tmp)
    fs.invalidate_cache(dest)
    return uri


@contextmanager
def _writing(uri: str) -> Iterator[None]:
    """Any failure to write the destination as one line naming it and what to do."""
    elsewhere = "or push to a folder you may write (a local path, s3://bucket/prefix, gs://bucket/prefix)"
    try:
        yield
    except PermissionError as e:
        raise StudioError(f"cannot write {uri}: access denied ({e})", f"{CREDENTIALS_FIX}; {elsewhere}") from e
    except FileNotFoundError as e:  # an object store's "no such bucket"
        raise StudioError(f"cannot write {uri}: the bucket or a parent folder does not exist ({e})",
                          f"create it first, {elsewhere}") from e
    except NotImplementedError as e:  # e.g. http(s)://: fsspec reads it, never writes
        raise StudioError(f"cannot write {uri}: its filesystem is read-only", elsewhere.removeprefix("or ")) from e
    except OSError as e:  # not a folder, read-only, disk full, the store unreachable
        raise StudioError(f"cannot write {uri} ({e})", f"check the destination, {elsewhere}") from e


def _is_local(fs) -> bool:
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return protocol in ("file", "local")


def _move_into_place(fs, tmp: str, dest: str, rels: list[str]) -> None:
    """A local folder is renamed at once. An object store has no folders to rename: each object is
    copied on the server (the model card last, so a folder with its README.md is whole), and a
    failure half-way removes what was copied."""
    if _is_local(fs):
        fs.mv(tmp, dest, recursive=True)
        return
    try:
        for rel in rels:
            fs.copy(f"{tmp}/{rel}", f"{dest}/{rel}")
    except BaseException:
        _remove_quietly(fs, dest)
        raise


def _remove_quietly(fs, path: str) -> None:
    try:
        if fs.exists(path):
            fs.rm(path, recursive=True)
    except OSError:
        pass  # what is left has a .tmp- name: never mistaken for a pushed folder
