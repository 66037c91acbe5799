"""`studio batches` in-process (Typer's runner on the real app, the real database and store): create
from a local JSONL, list and show with done/total, run (the job in-process, as the scheduler's Ray
job runs it, spending on a key derived from the oldest admin key, as a CLI-queued job does),
download the output and error files, cancel; and the errors a user gets."""

from __future__ import annotations

import json
import re

import pytest

from studio.batches.run import run_job
from studio.settings import get_settings
from tests.cli_invoke import invoke as invoke_cli
from tests.batches.conftest import job_key_for, job_of, jsonl, line



@pytest.fixture
def cli(settings, keys, monkeypatch):
    monkeypatch.setenv("STUDIO_HOME", str(settings.home))
    monkeypatch.setenv("STUDIO_DATABASE_URL", settings.db_url)
    monkeypatch.delenv("STUDIO_ARTIFACTS_URI", raising=False)
    get_settings.cache_clear()

    def invoke(*args: str) -> tuple[int, str]:
        return invoke_cli("batches", *args)

    yield invoke
    get_settings.cache_clear()


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_create_list_run_show_download(cli, settings, gateway, upstream, tmp_path, monkeypatch):
    src = tmp_path / "requests.jsonl"
    src.write_bytes(jsonl([line("c1", "one"), line("c2", "two"), "{broken"]))
    code, out = cli("create", str(src), "--metadata", "team=cli")
    assert code == 0, out
    batch_id = re.search(r"batch (batch_\w+): 3 requests", out).group(1)
    code, out = cli("ls")
    assert batch_id in out and "validating" in out and "0/3" in out, out

    monkeypatch.setenv("STUDIO_API_KEY", job_key_for(settings, batch_id))
    assert run_job(settings, job_of(settings, batch_id).id) == 0
    code, out = cli("show", batch_id)
    assert code == 0 and "completed" in out and "3/3 (1 failed)" in out, out
    code, out = cli("download", batch_id, "--dir", str(tmp_path / "out"))
    assert code == 0, out
    answers = [json.loads(x) for x in (tmp_path / "out" / f"{batch_id}_output.jsonl").read_text().splitlines()]
    errors = (tmp_path / "out" / f"{batch_id}_error.jsonl").read_text().splitlines()
    assert [a["custom_id"] for a in answers] == ["c1", "c2"] and len(errors) == 1
    assert sorted(upstream.asked) == ["one", "two"]
    code, out = cli("cancel", batch_id)
    assert code == 1 and "already completed" in out, out


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_cancel_before_it_runs_and_errors_name_the_fix(cli, tmp_path):
    src = tmp_path / "requests.jsonl"
    src.write_bytes(jsonl([line("c1", "one")]))
    batch_id = re.search(r"(batch_\w+)", cli("create", str(src))[1]).group(1)
    code, out = cli("cancel", batch_id)
    assert code == 0 and "cancelled" in out and "0/1" in out, out
    code, out = cli("download", batch_id)
    assert code == 1 and "no output or error file" in out, out
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"\n")
    code, out = cli("create", str(empty))
    assert code == 1 and "empty" in out, out
    code, out = cli("show", "batch_nothing")
    assert code == 1 and "no batch 'batch_nothing'" in out, out
