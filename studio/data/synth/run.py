"""Synthetic generation as a job: ``python -m studio.data.synth.run --job-id N``.

1. plan     the source snapshot's documents → token-bounded chunks with overlap (deterministic).
2. generate pending chunks through the gateway (``studio.gateway.Client``, service ``synth``,
            the job's cap sent to the gateway), ``max_concurrency`` calls in flight — the batch
            lane of evals and the Batch API. Each finished chunk is written at once (off the event
            loop, so the calls in flight never wait for the store) to
            ``synth/<run>/chunks/<i>.json`` in the artifact store — the draft: its parsed rows, the
            reply when it did not parse, tokens and cost — and the job's ``result.progress`` is
            updated. A re-run (retry after a crash, or the generator down) skips finished chunks.
3. finalize the chunks' rows, in chunk order, go through curation into a prompt/completion snapshot
            with lineage (source snapshot, ``synth``, mode, generator model and its deployments);
            unparseable replies are its dropped rows, with the reply kept.

When the generator stays down (after the client's and ``chunk_retries`` retries) the run stops
starting chunks, lets calls in flight finish, and fails with the reason; the job's retries resume.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from studio.data.curate import _Drop, _Runner, iter_rows
from studio.data.kinds import DatasetKind
from studio.data.snapshots import resolve_snapshot
from studio.data.synth.parse import (Chunk, ParseError, chunk_document, messages_for, parse_reply,
                                     response_format)
from studio.data.synth.spec import SynthSpec
from studio.data.writer import Lineage, SnapshotWriter
from studio.errors import StudioError
from studio.settings import StudioSettings
from studio.store.artifacts import ArtifactStore
from studio.store.db import session_scope
from studio.store.models import utcnow

if TYPE_CHECKING:
    from studio.jobs.driver import JobDriver

Progress = Callable[[dict[str, Any]], bool]  # returns False to stop (cancel requested)
_FINAL_STATUSES = {400, 401, 403, 404, 422}  # a retry cannot help


class GeneratorDown(StudioError):
    status_code = 502


def plan(spec: SynthSpec, settings: StudioSettings) -> tuple[str, list[Chunk]]:
    with session_scope(settings.db_url) as s:
        snap = resolve_snapshot(s, spec.source).snapshot
        src_id, kind, uri = snap.id, snap.kind, snap.uri
    if kind not in (DatasetKind.document, DatasetKind.text):
        raise StudioError(f"synthesis source {spec.source!r} holds {kind} rows",
                          "ingest documents (.md/.pdf/.html/.txt files or a directory) and pass that")
    chunks: list[Chunk] = []
    for n, row in enumerate(iter_rows(uri), start=1):
        chunks += chunk_document(row["text"], row.get("source") or f"row {n}", spec, len(chunks))
        if spec.max_chunks and len(chunks) >= spec.max_chunks:
            return src_id, chunks[: spec.max_chunks]
    if not chunks:
        raise StudioError(f"source {spec.source!r} has no text to chunk", "ingest documents with text")
    return src_id, chunks


def _key(run: str, i: int) -> str:
    return f"synth/{run}/chunks/{i:06d}.json"


def load_chunk(store: ArtifactStore, run: str, i: int) -> dict[str, Any] | None:
    return json.loads(store.get_bytes(_key(run, i))) if store.exists(_key(run, i)) else None


def progress_of(records: list[dict[str, Any]], total: int) -> dict[str, Any]:
    return {"chunks_done": len(records), "chunks_total": total,
            "rows": sum(len(r["rows"]) for r in records),
            "parse_failures": sum(1 for r in records if r["failure"]),
            "tokens": sum(r["prompt_tokens"] + r["completion_tokens"] for r in records),
            "cost_usd": round(sum(r["cost_usd"] for r in records), 6)}


async def generate(spec: SynthSpec, settings: StudioSettings, run: str, client: Any,
                   progress: Progress | None = None) -> tuple[str, list[Chunk]]:
    """Generate every chunk not yet done; returns the source id and the plan."""
    src_id, chunks = plan(spec, settings)
    store = ArtifactStore(settings.artifacts)
    records = [r for c in chunks if (r := load_chunk(store, run, c.index)) is not None]
    pending = [c for c in chunks if not store.exists(_key(run, c.index))]
    sem = asyncio.Semaphore(spec.max_concurrency)
    stop: list[BaseException] = []

    reporting = asyncio.Lock()  # one progress write at a time, in order: the last one is final

    async def report() -> None:
        # Off the event loop, like the chunk files: a database or artifact store that answers
        # slowly must not hold the calls in flight (the run's width is the engine's batch).
        if progress is None:
            return
        async with reporting:
            if await asyncio.to_thread(progress, progress_of(records, len(chunks))) is False and not stop:
                stop.append(StudioError("cancelled on request"))

    async def one(chunk: Chunk) -> None:
        async with sem:
            if stop:
                return
            body = await _call(client, spec, chunk, stop)
            if body is None:
                return
        reply = ((body.get("choices") or [{}])[0].get("message") or {}).get("content") or ""
        try:
            rows, failure = parse_reply(reply, chunk, spec.mode), None
        except ParseError as e:
            rows, failure = [], {"reason": str(e), "reply": e.reply[:20_000]}
        usage = body.get("usage") or {}
        gw = body.get("studio_gateway") or {}
        rec = {"chunk": chunk.index, "source": chunk.source, "chunk_tokens": chunk.tokens, "rows": rows,
               "failure": failure, "prompt_tokens": usage.get("prompt_tokens") or 0,
               "completion_tokens": usage.get("completion_tokens") or 0,
               "cost_usd": float(gw.get("cost_usd") or 0.0),
               "deployment": body.get("studio_model_version") or gw.get("deployment") or body.get("model")}
        await asyncio.to_thread(store.put_bytes, _key(run, chunk.index),
                                json.dumps(rec, ensure_ascii=False).encode())
        records.append(rec)
        await report()

    await report()
    await asyncio.gather(*(one(c) for c in pending))
    if stop:
        raise stop[0]
    return src_id, chunks


async def _call(client: Any, spec: SynthSpec, chunk: Chunk, stop: list[BaseException]) -> dict | None:
    from studio.gateway import GatewayError

    for attempt in range(spec.chunk_retries + 1):
        try:
            params: dict[str, Any] = {"temperature": spec.temperature, "max_tokens": spec.max_tokens}
            if spec.structured:
                params["response_format"] = response_format(spec)
            return await client.achat(spec.model, messages_for(chunk, spec), **params)
        except GatewayError as e:
            if e.status in _FINAL_STATUSES or attempt == spec.chunk_retries:
                if not stop:
                    stop.append(GeneratorDown(
                        f"generator {spec.model!r} failed on chunk {chunk.index} ({chunk.source}) after "
                        f"{attempt + 1} attempt(s): {e.problem}",
                        "check the model at the gateway (`studio usage`); the job resumes from the "
                        "finished chunks when retried"))
                return None
            await asyncio.sleep(min(0.5 * 2**attempt, 10.0))
            if stop:
                return None
    return None


def finalize(spec: SynthSpec, settings: StudioSettings, run: str, src_id: str,
             chunks: list[Chunk], owner: int | None = None) -> dict[str, Any]:
    """Write the generated rows as a version of ``spec.name``, owned by ``owner`` (the job's
    submitter's key id; None: the operator in-process)."""
    store = ArtifactStore(settings.artifacts)
    records = [load_chunk(store, run, c.index) for c in chunks]
    if any(r is None for r in records):
        raise StudioError(f"synthesis run {run} is not complete", "run it again to generate the rest")
    deployments = sorted({r["deployment"] for r in records if r.get("deployment")})
    params = {k: v for k, v in spec.model_dump(mode="json").items() if k not in ("source", "name")}
    params["deployments"] = deployments
    kind = DatasetKind.prompt_completion
    runner = _Runner(spec.curate, kind)
    n = 0
    with SnapshotWriter(kind, Lineage(src_id, "synth", params)) as w:
        for rec in records:
            label = f"{rec['source']}#chunk{rec['chunk']}"
            if rec["failure"]:
                w.drop(0, f"{rec['failure']['reason']} (reply kept)", step="parse", file=label,
                       data={"reply": rec["failure"]["reply"]})
            for row in rec["rows"]:
                n += 1
                try:
                    w.add(runner.apply(n, row))
                except _Drop as d:
                    w.drop(n, d.reason, step=d.step, file=label, data=row)
        if w.row_count == 0:
            raise StudioError(f"synthesis produced no usable rows ({w.dropped_count} dropped)",
                              f"see the replies with `studio data show` on the draft; try another model "
                              f"than {spec.model!r}")
        done = w.commit(settings, spec.name, f"synth {spec.mode} by {spec.model} from {src_id[:12]}",
                        owner)
    return {"snapshot_id": done.snapshot_id, "name": spec.name, "version": done.version,
            "rows": done.row_count, "dropped": done.dropped_count, "parent_id": src_id,
            "model": spec.model, "deployments": deployments, **progress_of(records, len(chunks))}


def run_local(spec: SynthSpec, settings: StudioSettings, run: str, client: Any,
              progress: Progress | None = None) -> dict[str, Any]:
    """Plan, generate and finalize in this process (tests, `studio data generate --local`)."""
    src_id, chunks = asyncio.run(generate(spec, settings, run, client, progress))
    return finalize(spec, settings, run, src_id, chunks)


# --- the job entrypoint ------------------------------------------------------------------------


def run_job(job_id: int, settings: StudioSettings, client: Any | None = None) -> dict[str, Any]:
    from studio.jobs.driver import JobDriver

    driver = JobDriver(settings.db_url, job_id, kind="synth", noun="synthesis job",
                       start_new="start a new one with `studio data generate`")
    with driver.beating(settings.job_heartbeat_s):
        return _run(driver, settings, client)


def _run(driver: JobDriver, settings: StudioSettings, client: Any | None) -> dict[str, Any]:
    from studio.jobs.status import JobStatus, transition
    from studio.store.models import Job

    job_id = driver.job_id
    with session_scope(settings.db_url) as s:
        job = driver.check(s)
        spec = SynthSpec.model_validate(job.spec)
        owner = job.owner_key_id  # the submitter's key: the output dataset is theirs
        attempt = driver.claim(s, job, "synthesis entrypoint started")
        transition(s, job_id, JobStatus.RUNNING, f"attempt {attempt}: generating with {spec.model}")
    if client is None:
        from studio.gateway import Client

        client = Client(service="synth", job_id=str(job_id), max_concurrency=spec.max_concurrency)
    last = [0.0]
    latest: list[dict[str, Any]] = []

    since: list[dict[str, Any]] = []  # this attempt's first point: rate and ETA count from it

    def progress(p: dict[str, Any]) -> bool:
        at = utcnow().isoformat()  # the time of each point, for rate and ETA (studio.jobs.progress)
        since[:] = since or [{"chunks_done": p["chunks_done"], "at": at}]
        p = {**p, "at": at, "since": since[0]}
        latest[:] = [p]
        now = time.monotonic()
        final = p["chunks_done"] == p["chunks_total"]
        if not final and now - last[0] < 0.5:  # at most two writes a second
            return True
        last[0] = now
        with session_scope(settings.db_url) as s:
            job = s.get(Job, job_id)
            job.result = {**(job.result or {}), "progress": p}
            return not job.cancel_requested

    try:
        src_id, chunks = asyncio.run(generate(spec, settings, f"job-{job_id}", client, progress))
        driver.to(JobStatus.CHECKPOINTING, "all chunks generated; writing the snapshot")
        result = finalize(spec, settings, f"job-{job_id}", src_id, chunks, owner)
    except Exception as e:  # recorded on the job; the scheduler decides on a retry
        reason = e.problem if isinstance(e, StudioError) else f"{type(e).__name__}: {e}"
        if latest:  # the throttled writes may lag: record where the run stopped
            with session_scope(settings.db_url) as s:
                job = s.get(Job, job_id)
                job.result = {**(job.result or {}), "progress": latest[0]}
        driver.fail(reason[:4000])
        raise
    driver.succeed(result, f"{result['name']}@{result['version']}: {result['rows']} rows, "
                           f"{result['dropped']} dropped")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m studio.data.synth.run")
    parser.add_argument("--job-id", type=int, required=True, help="The synth job to run.")
    args = parser.parse_args(argv)
    try:
        run_job(args.job_id, StudioSettings())
    except Exception as e:  # noqa: BLE001 — the job row has the reason; exit non-zero for Ray
        print(f"synthesis job {args.job_id} failed: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
