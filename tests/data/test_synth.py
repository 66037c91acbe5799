"""Synthetic generation against a scripted OpenAI-compatible server on loopback (the external
edge): chunking, robust parsing, progress, lineage, resume after the generator goes down, and the
job / API / SSE surface. The real gateway and tiny model are exercised by the e2e stack tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from studio.api.app import create_app
from studio.data.ingest import ingest_path
from studio.data.snapshots import load_split
from studio.data.synth import draft_rows, status, submit
from studio.data.synth.parse import Chunk, ParseError, chunk_document, parse_reply
from studio.data.synth.run import run_job, run_local
from studio.data.synth.spec import SynthSpec
from studio.data.tools import dropped_rows
from studio.errors import StudioError
from studio.gateway import Client
from studio.jobs.status import JobStatus, transition
from studio.keys import create_key
from studio.models.tiny import TinyModelSpec, build_tokenizer
from studio.store.db import session_scope
from studio.store.models import DatasetSnapshot
from tests.api.checks import bearer
from tests.data.docs import mixed_directory
from tests.data.fake_generator import FakeGenerator

CHUNK = Chunk(0, "a.md", "Tides rise twice a day.", 6)


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeGenerator]:
    g = FakeGenerator().start()
    yield g
    g.stop()


@pytest.fixture
def gen(fake) -> FakeGenerator:
    fake.calls.clear()
    fake.formats.clear()
    fake.down, fake.down_after, fake.answered, fake.delay_s = False, None, 0, 0.0
    return fake


def client_for(g: FakeGenerator) -> Client:
    return Client(service="synth", job_id="test", base_url=g.base, api_key="sk-test", max_retries=0)


@pytest.fixture
def docs(settings, tmp_path):
    root = mixed_directory(tmp_path / "docs")
    (root / "fenced.md").write_text("FENCED notes about rivers and deltas.\n")
    (root / "refuse.txt").write_text("PROSE only, the generator refuses this one.\n")
    ingest_path(str(root), "docs", settings, check_roots=False)  # the operator, in-process
    return settings


def spec(**kw) -> SynthSpec:
    return SynthSpec(**{"source": "docs", "name": "docs-qa", "model": "gen", "chunk_tokens": 16,
                        "overlap_tokens": 4, "chunk_retries": 1, **kw})


# --- parsing and chunking ------------------------------------------------------------------------


@pytest.mark.parametrize("reply", [
    '[{"question": "Q?", "answer": "A."}]',
    'Sure!\n```json\n[{"Question": "Q?", "Answer": "A."}]\n```\nanything else?',
    '{"pairs": [{"q": "Q?", "a": "A."}]}',
    'Here: {"question": "Q?", "answer": "A."} done',
])
def test_qa_replies_in_many_shapes_parse(reply):
    assert parse_reply(reply, CHUNK, "qa") == [{"prompt": "Q?", "completion": "A."}]


def test_cot_and_summary_parse_and_bad_replies_keep_the_reply():
    cot = parse_reply('[{"question": "Q?", "reasoning": "Because.", "answer": "A"}]', CHUNK, "cot")
    assert cot == [{"prompt": "Q?", "completion": "Because.\n\nAnswer: A"}]
    summary = parse_reply('```\n{"summary": "Tides."}\n```', CHUNK, "summary")
    assert summary[0]["completion"] == "Tides." and CHUNK.text in summary[0]["prompt"]
    for reply, mode in [("no json here", "qa"), ('[{"question": "Q?"}]', "qa"),
                        ('[{"question": "Q?", "answer": "A"}]', "cot"), ("", "summary")]:
        with pytest.raises(ParseError) as e:
            parse_reply(reply, CHUNK, mode)
        assert e.value.reply == reply


def test_chunks_are_bounded_and_overlap(tmp_path):
    text = " ".join(f"w{i}" for i in range(40))
    chunks = chunk_document(text, "d", spec(chunk_tokens=16, overlap_tokens=4), 0)
    assert [c.tokens for c in chunks] == [16, 16, 16]
    assert chunks[0].text.split()[-4:] == chunks[1].text.split()[:4]
    assert chunks[-1].text.split()[-1] == "w39"
    tok = tmp_path / "tok"
    build_tokenizer(TinyModelSpec()).save_pretrained(tok)
    by_tokens = chunk_document("reverse: 1 2 3 4 5 6 7 8 9", "d", spec(tokenizer=str(tok), chunk_tokens=16,
                                                                        overlap_tokens=2), 0)
    assert all(c.tokens <= 16 for c in by_tokens) and len(by_tokens) >= 1
    with pytest.raises(ValueError, match="overlap_tokens"):
        spec(chunk_tokens=16, overlap_tokens=16)


# --- end to end against the scripted generator ---------------------------------------------------


def test_generation_yields_a_snapshot_with_lineage(docs, gen):
    seen = []
    out = run_local(spec(), docs, "t1", client_for(gen), progress=lambda p: seen.append(p) or True)
    assert seen[-1]["chunks_done"] == seen[-1]["chunks_total"] == out["chunks_total"] >= 6
    assert seen[-1]["cost_usd"] > 0 and seen[-1]["tokens"] > 0
    assert out["parse_failures"] == 1 and out["dropped"] >= 1 and out["rows"] > 0
    with session_scope(docs.db_url) as s:
        snap = s.get(DatasetSnapshot, out["snapshot_id"])
        src = s.query(DatasetSnapshot).filter(DatasetSnapshot.id == out["parent_id"]).one()
        assert (snap.transform, src.kind, snap.kind) == ("synth", "document", "prompt_completion")
        assert snap.params["model"] == "gen" and snap.params["deployments"] == ["fake/gen-1"]
    dropped = dropped_rows(docs, "docs-qa")["rows"]
    parse = [d for d in dropped if d["step"] == "parse"]
    assert len(parse) == 1 and parse[0]["file"].startswith("refuse.txt#chunk")
    assert parse[0]["data"]["reply"].startswith("I'm sorry")
    assert "(reply kept)" in parse[0]["reason"]
    # Every call asked for the structure by JSON schema (guided decoding where the engine has it).
    schemas = [f["json_schema"]["schema"] for f in gen.formats]
    assert len(schemas) == out["chunks_total"] and all(f["type"] == "json_schema" for f in gen.formats)
    assert schemas[0]["properties"]["pairs"]["items"]["required"] == ["question", "answer"]


def test_generator_down_mid_run_fails_cleanly_and_resumes(docs, gen):
    with session_scope(docs.db_url) as s:
        assert s is not None
    job_id = submit(spec(max_concurrency=1), docs, "test", local=True)
    gen.down_after = 3
    with pytest.raises(StudioError, match="generator 'gen' failed on chunk"):
        run_job(job_id, docs, client=client_for(gen))
    info = status(docs, job_id)
    assert info.status == "FAILED" and "scripted outage" in info.error
    assert info.progress.chunks_done == 3
    assert draft_rows(docs, job_id).total > 0  # rows already generated are kept
    before = dict(gen.calls)
    # The failing chunk was tried 1 + chunk_retries times; no chunk after it was started.
    assert sorted(before.values()) == [1, 1, 1, 2]
    gen.down_after = None
    with session_scope(docs.db_url) as s:  # what the scheduler does on a retry
        transition(s, job_id, JobStatus.RETRYING, "retry")
        transition(s, job_id, JobStatus.STARTING, "attempt 2")
    result = run_job(job_id, docs, client=client_for(gen))
    assert status(docs, job_id).status == "SUCCEEDED"
    finished = [t for t, n in before.items() if n == 1 and gen.calls[t] == 1]
    assert len(finished) >= 3  # chunks done before the outage were not generated again
    assert result["chunks_done"] == result["chunks_total"]


def test_api_queues_and_streams_progress(docs, gen, settings):
    with session_scope(settings.db_url) as s:
        key = create_key(s, "alice", "user")[0]
    with TestClient(create_app(settings)) as http:
        r = http.post("/api/synth", headers=bearer(key), json={"spec": spec(mode="summary").model_dump()})
        assert r.status_code == 201, r.text
        job_id = r.json()["id"]
        assert r.json()["status"] == "QUEUED" and r.json()["progress"]["chunks_total"] >= 6
        with session_scope(settings.db_url) as s:  # the scheduler's part, then the entrypoint's
            transition(s, job_id, JobStatus.STARTING, "submitted")
        run_job(job_id, settings, client=client_for(gen))
        body = http.get(f"/api/synth/{job_id}/events", headers=bearer(key)).text
        assert "event: end" in body and '"SUCCEEDED"' in body
        got = http.get(f"/api/synth/{job_id}", headers=bearer(key)).json()
        assert got["result"]["name"] == "docs-qa" and got["progress"]["parse_failures"] == 1  # PROSE
        rows = http.get(f"/api/synth/{job_id}/rows", headers=bearer(key), params={"limit": 2}).json()
        assert rows["rows"][0]["prompt"].startswith("Summarize")
        bad = http.post("/api/synth", headers=bearer(key), json={"spec": spec(source="nope").model_dump()})
        assert bad.status_code == 404


def test_synth_output_goes_only_to_the_submitters_names(docs, gen, settings):
    """The output name is checked at submission (nothing is spent) and again when the job writes
    it, as its submitter: a name another key owns is 403 for a user, an admin's job may add."""
    import asyncio

    from studio.access import Forbidden, claim_name, name_owner
    from studio.data.synth.run import finalize, generate

    with session_scope(settings.db_url) as s:
        alice, alice_row = create_key(s, "alice", "user")
        bob, bob_row = create_key(s, "bob", "user")
        _, admin_row = create_key(s, "root", "admin")
        ids = alice_row.id, bob_row.id, admin_row.id
    with TestClient(create_app(settings)) as http:
        r = http.post("/api/synth", headers=bearer(alice), json={"spec": spec(name="mine").model_dump()})
        assert r.status_code == 201, r.text
        with session_scope(settings.db_url) as s:
            claim_name(s, "dataset", "alice-qa", ids[0])
        refused = http.post("/api/synth", headers=bearer(bob), json={"spec": spec(name="alice-qa").model_dump()})
        assert refused.status_code == 403 and "belongs to another key" in refused.json()["detail"]
        jobs = http.get("/api/jobs", headers=bearer(bob)).json()
        jobs = jobs.get("jobs", jobs) if isinstance(jobs, dict) else jobs
        assert [j["name"] for j in jobs if j.get("kind") == "synth"] == ["mine"]
    src_id, chunks = asyncio.run(generate(spec(name="alice-qa"), docs, "own", client_for(gen)))
    with pytest.raises(Forbidden, match="'alice-qa' belongs to another key"):
        finalize(spec(name="alice-qa"), docs, "own", src_id, chunks, owner=ids[1])
    out = finalize(spec(name="alice-qa"), docs, "own", src_id, chunks, owner=ids[2])
    assert out["version"] == 1
    with session_scope(settings.db_url) as s:
        assert name_owner(s, "dataset", "alice-qa") == ids[0]


def test_cli_generate_follow_shows_progress_to_the_snapshot(docs, gen, tmp_path, monkeypatch):
    """`studio data generate --recipe … --local --follow` through the gateway client (pointed at the
    scripted server with STUDIO_GATEWAY_URL): progress to the end, then the new version."""
    from typer.testing import CliRunner

    from studio.cli.main import app as cli
    from studio.settings import get_settings

    for var, value in {"STUDIO_HOME": str(docs.home), "STUDIO_DATABASE_URL": docs.db_url,
                       "STUDIO_GATEWAY_URL": gen.base, "STUDIO_API_KEY": "sk-test",
                       "COLUMNS": "300"}.items():
        monkeypatch.setenv(var, value)
    get_settings.cache_clear()
    recipe = tmp_path / "synth.yaml"
    recipe.write_text("source: docs\nname: docs-cot\nmode: cot\nmodel: gen\nchunk_tokens: 16\n"
                      "overlap_tokens: 4\n")
    try:
        r = CliRunner().invoke(cli, ["data", "generate", "--recipe", str(recipe), "--local", "--follow"])
    finally:
        get_settings.cache_clear()
    assert r.exit_code == 0, r.output
    total = status(docs, 1).progress.chunks_total
    assert f"{total}/{total}" in r.output and "1 unparsed" in r.output  # the final progress line
    assert "docs-cot@1 snapshot" in r.output and "see `studio data show docs-cot --dropped`" in r.output
    with session_scope(docs.db_url) as s:
        snap = s.query(DatasetSnapshot).filter(DatasetSnapshot.transform == "synth").one()
        assert snap.params["mode"] == "cot"
        rows = load_split(snap.uri).to_pylist()
    assert rows and all("\n\nAnswer: " in r["completion"] for r in rows)


def test_a_killed_run_resumes_without_regenerating_finished_chunks(docs, gen):
    """The job process is killed (SIGKILL) mid-run; the retry generates only the chunks that had
    not finished."""
    import os
    import signal
    import subprocess
    import sys
    import time

    gen.delay_s = 0.3
    job_id = submit(spec(max_concurrency=1), docs, "test")
    with session_scope(docs.db_url) as s:  # the scheduler's part
        transition(s, job_id, JobStatus.STARTING, "submitted")
    env = {**os.environ, "STUDIO_HOME": str(docs.home), "STUDIO_DATABASE_URL": docs.db_url,
           "STUDIO_GATEWAY_URL": gen.base, "STUDIO_API_KEY": "sk-test"}
    proc = subprocess.Popen([sys.executable, "-m", "studio.data.synth.run", "--job-id", str(job_id)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while draft_chunks(docs, job_id) < 2 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(30)
    done_before = draft_chunks(docs, job_id)
    total = status(docs, job_id).progress.chunks_total
    assert 2 <= done_before < total
    answered = dict(gen.calls)
    with session_scope(docs.db_url) as s:  # what the scheduler does when the job's process died
        transition(s, job_id, JobStatus.FAILED, "the job's process died")
        transition(s, job_id, JobStatus.RETRYING, "retry")
        transition(s, job_id, JobStatus.STARTING, "attempt 2")
    gen.delay_s = 0.0
    result = run_job(job_id, docs, client=client_for(gen))
    assert result["chunks_done"] == total and status(docs, job_id).status == "SUCCEEDED"
    # Calls of the retry: one per chunk not finished before the kill (a call in flight at the kill
    # had no stored result, so it is asked again).
    retried = sum(gen.calls.values()) - sum(answered.values())
    assert retried == total - done_before


def draft_chunks(settings, job_id: int) -> int:
    from studio.store.artifacts import ArtifactStore

    store = ArtifactStore(settings.artifacts)
    prefix = f"synth/job-{job_id}/chunks"
    return len(store.fs.find(store.path(prefix))) if store.exists(prefix) else 0


def test_raw_control_characters_in_strings_still_parse():
    # Guided decoding keeps the structure but a weak model's strings may hold raw control bytes.
    rows = parse_reply('{"pairs": [{"question": "Q\x1d?", "answer": "A\x08."}]}', CHUNK, "qa")
    assert rows == [{"prompt": "Q\x1d?", "completion": "A\x08."}]
