"""Synthetic generation at the engine's width: the job's own gateway client keeps
``max_concurrency`` generator calls in flight (counted at the scripted generator, the external
edge), and the width changes nothing in the snapshot it writes."""

from __future__ import annotations

import pytest

from studio.data.ingest import ingest_path
from studio.data.snapshots import load_split
from studio.data.synth import submit
from studio.data.synth.run import run_job
from studio.data.synth.spec import SynthSpec
from studio.store.db import session_scope
from studio.store.models import DatasetSnapshot
from tests.data.docs import mixed_directory
from tests.data.fake_generator import FakeGenerator


@pytest.fixture
def gen(settings, tmp_path, monkeypatch):
    ingest_path(str(mixed_directory(tmp_path / "docs")), "docs", settings, check_roots=False)
    g = FakeGenerator().start()
    # The job's own client (no client handed in) calls the gateway URL with the job's key.
    monkeypatch.setenv("STUDIO_GATEWAY_URL", g.base)
    monkeypatch.setenv("STUDIO_API_KEY", "sk-test")
    yield g
    g.stop()


def rows_of(settings, snapshot_id: str) -> list[dict]:
    with session_scope(settings.db_url) as s:
        uri = s.get(DatasetSnapshot, snapshot_id).uri
    return load_split(uri).to_pylist()


def test_the_job_keeps_its_width_in_flight_and_the_width_changes_no_row(settings, gen):
    def generate(name: str, width: int) -> dict:
        gen.width = width
        spec = SynthSpec(source="docs", name=name, model="gen", chunk_tokens=16, overlap_tokens=4,
                         max_chunks=6, max_concurrency=width)
        before = sum(gen.calls.values())
        result = run_job(submit(spec, settings, "test", local=True), settings)
        assert sum(gen.calls.values()) - before == 6
        return result

    wide = generate("wide", 3)
    assert (gen.max_in_flight, gen.stalled) == (3, 0)
    gen.max_in_flight = 0
    narrow = generate("narrow", 1)
    assert gen.max_in_flight == 1
    assert wide["chunks_done"] == narrow["chunks_done"] == 6 and wide["rows"] == narrow["rows"] > 0
    assert rows_of(settings, wide["snapshot_id"]) == rows_of(settings, narrow["snapshot_id"])
