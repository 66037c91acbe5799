"""`studio backup` / `studio restore` on SQLite and PostgreSQL: a studio populated through its own
functions (an ingested dataset with a rejected row, a registered adapter, a job with a checkpoint,
an API key) is backed up, its home deleted, and restored into an empty STUDIO_HOME and an empty
database: the same registry, datasets (rows read from the restored snapshot), jobs and keys. Then
the refusals: an existing PATH, a corrupt or truncated backup (nothing changed), a non-empty
target, a schema newer than this code; an older schema is migrated to head."""

from __future__ import annotations

import json
import os
import shutil
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from alembic import command
from psycopg import sql
from sqlalchemy import select, text
from sqlalchemy.engine import make_url
from typer.testing import CliRunner

from studio.cli.main import app
from studio.data.ingest import ingest_file
from studio.data.snapshots import read_table
from studio.errors import StudioError
from studio.jobs.queue import get_job
from studio.jobs.status import create_job
from studio.keys import create_key, verify_key
from studio.registry.versions import list_versions, promote, register_version
from studio.settings import StudioSettings, get_settings
from studio.store import backup as bk
from studio.store.artifacts import ArtifactStore
from studio.store.db import alembic_config, get_engine, init_db, session_scope
from studio.store.models import DatasetSnapshot, DatasetVersion, JobEvent, StoredFile

pytestmark = pytest.mark.both_databases  # PostgreSQL too: locking, concurrent writers, constraints

# Backend-independent paths (the manifest checks, the CLI) run on SQLite only, to keep the module fast.
POSTGRES_ADMIN_URL = os.environ.get("STUDIO_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
ROWS = [{"prompt": f"q{i}", "completion": f"a{i}"} for i in range(5)]


@pytest.fixture
def target_url(db_url: str, tmp_path: Path) -> Iterator[str]:
    """An empty database of the same kind as ``db_url`` to restore into."""
    if db_url.startswith("sqlite"):
        yield f"sqlite:///{tmp_path / 'restored' / 'studio.db'}"
        return
    name = f"studio_restore_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = make_url(POSTGRES_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    yield url
    get_engine(url).dispose()
    get_engine.cache_clear()
    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as admin:
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def _target(tmp_path: Path, url: str) -> StudioSettings:
    return StudioSettings(home=tmp_path / "home2", database_url=url, artifacts_uri=None, mlflow_uri=None,
                          redis_url=None, admin_key=None)


def _populate(settings: StudioSettings, write_rows) -> dict:
    report = ingest_file(write_rows("qa.jsonl", ROWS + ["{not json"]), "qa", settings)
    store = ArtifactStore(settings.artifacts)
    adapter = store.put_bytes("models/reverse/1/adapter_model.safetensors", b"\x00weights" * 100)
    store.put_bytes("models/reverse/1/adapter_config.json", b'{"r": 8}')
    checkpoint = store.put_bytes("checkpoints/job-1/state.pt", b"step 40")
    store.put_bytes("files/file-1", b'{"custom_id": "1"}\n')
    with session_scope(settings.db_url) as s:
        secret, _ = create_key(s, "alice", "user")
        job = create_job(s, name="sft-qa", spec={"recipe": "sft", "steps": 40}, max_retries=1, submitted_by="alice")
        job.checkpoint_uri = checkpoint
        register_version(s, name="reverse", base_model="tiny", method="sft", adapter_type="lora",
                         uri=adapter.rsplit("/", 1)[0], dataset_snapshot_id=report.snapshot_id, job_id=job.id)
        promote(s, "reverse@1")
        s.add(StoredFile(id="file-1", purpose="batch", filename="in.jsonl", size_bytes=18, key="files/file-1"))
    return {"secret": secret, "snapshot": report.snapshot_id, "job": job.id}


def test_restore_into_an_empty_home_gives_the_same_studio(settings, target_url, write_rows, tmp_path):
    made = _populate(settings, write_rows)
    r = bk.backup(settings, tmp_path / "bk")
    assert r.copied == r.artifacts == 5 and not r.missing  # snapshot, rejected rows, adapter, checkpoint, file
    shutil.rmtree(settings.home)  # the old home is gone: everything must come from the backup
    new = _target(tmp_path, target_url)
    restored = bk.restore(new, tmp_path / "bk")
    assert restored.problems == [] and not restored.migrated and restored.relocated[1] == str(new.home_abs)
    home2 = str(new.home_abs)
    with session_scope(new.db_url) as s:
        (mv,) = list_versions(s, "reverse")
        assert (mv.version, mv.stage, mv.dataset_snapshot_id) == (1, "champion", made["snapshot"])
        assert mv.uri.startswith(home2) and Path(mv.uri, "adapter_config.json").read_bytes() == b'{"r": 8}'
        snap = s.get(DatasetSnapshot, made["snapshot"])
        assert snap.uri.startswith(home2) and read_table(snap.uri).to_pylist() == ROWS
        dv = s.scalar(select(DatasetVersion).where(DatasetVersion.name == "qa"))
        assert dv.rejected_rows == 1 and read_table(dv.rejected_uri).num_rows == 1
        job = get_job(s, made["job"])
        assert (job.name, job.status, job.spec["steps"]) == ("sft-qa", "QUEUED", 40)
        assert Path(job.checkpoint_uri).read_bytes() == b"step 40"
        assert verify_key(s, made["secret"]).name == "alice"
        assert ArtifactStore(new.artifacts).get_bytes(s.get(StoredFile, "file-1").key) == b'{"custom_id": "1"}\n'


def test_a_backup_taken_while_the_studio_writes_is_consistent(settings, target_url, write_rows, tmp_path):
    """Its manifest's row counts, revision and database copy are of one moment (restore compares them)."""
    made = _populate(settings, write_rows)
    started, stop, written = threading.Event(), threading.Event(), [0]

    def writer():
        while not stop.is_set():
            with session_scope(settings.db_url) as s:
                s.add(JobEvent(job_id=made["job"], from_status="QUEUED", to_status="QUEUED", reason="tick"))
            written[0] += 1
            started.set()

    t = threading.Thread(target=writer)
    t.start()
    try:
        assert started.wait(30)
        bk.backup(settings, tmp_path / "bk")
    finally:
        stop.set()
        t.join()
    restored = bk.restore(_target(tmp_path, target_url), tmp_path / "bk")
    assert restored.problems == [], restored.problems
    rows = json.loads((tmp_path / "bk" / bk.MANIFEST).read_text())["rows"]["job_events"]
    assert 1 < rows <= written[0] + 1  # the submit event, and ticks written before the copy


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)  # the same code on both backends
def test_artifacts_left_out_are_checked_where_they_are(settings, target_url, write_rows, tmp_path):
    _populate(settings, write_rows)
    r = bk.backup(settings, tmp_path / "bk", include_artifacts=False)
    assert r.copied == 0 and r.artifacts == 5 and not (tmp_path / "bk" / bk.HOME_DIR).exists()
    changed = next(Path(settings.artifacts, "checkpoints").rglob("state.pt"))
    changed.write_bytes(b"step 41")
    new = _target(tmp_path, target_url)
    init_db(new.db_url)  # migrated but empty (as `studio up` leaves it): not refused
    restored = bk.restore(new, tmp_path / "bk")
    assert restored.relocated is None  # URIs still name the artifacts where they are
    assert restored.problems == [f"{changed} changed since the backup"]


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)  # the same code on both backends
def test_a_corrupt_or_truncated_backup_changes_nothing(settings, write_rows, tmp_path):
    _populate(settings, write_rows)
    bk.backup(settings, tmp_path / "bk")
    new = _target(tmp_path, f"sqlite:///{tmp_path / 'restored' / 'studio.db'}")
    db_file = tmp_path / "bk" / json.loads((tmp_path / "bk" / bk.MANIFEST).read_text())["database"]["file"]
    data = db_file.read_bytes()
    db_file.write_bytes(data[: len(data) // 2])
    with pytest.raises(StudioError, match="incomplete or corrupt: database.* nothing was restored"):
        bk.restore(new, tmp_path / "bk")
    assert not new.home.exists() and not (tmp_path / "restored" / "studio.db").exists()
    db_file.write_bytes(data)
    manifest = tmp_path / "bk" / bk.MANIFEST
    good = manifest.read_text()
    manifest.write_text(good[:200])
    with pytest.raises(StudioError, match="backup.json does not parse"):
        bk.restore(new, tmp_path / "bk")
    m = json.loads(good)
    m["artifacts"][0]["home_path"] = "../../elsewhere"
    manifest.write_text(json.dumps(m))
    with pytest.raises(StudioError, match="leaves STUDIO_HOME"):
        bk.restore(new, tmp_path / "bk")
    manifest.unlink()
    with pytest.raises(StudioError, match="backup.json is missing"):
        bk.restore(new, tmp_path / "bk")


def test_refusals_name_the_fix(settings, write_rows, tmp_path, monkeypatch):
    _populate(settings, write_rows)
    bk.backup(settings, tmp_path / "bk")
    with pytest.raises(StudioError) as e:
        bk.backup(settings, tmp_path / "bk")
    assert "already exists" in e.value.problem and "--force" in e.value.fix
    assert bk.backup(settings, tmp_path / "bk", force=True).copied == 5
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.txt").write_text("mine")
    with pytest.raises(StudioError, match="not a studio backup"):
        bk.backup(settings, tmp_path / "notes", force=True)
    assert (tmp_path / "notes" / "a.txt").read_text() == "mine"
    with pytest.raises(StudioError) as e:  # the live database is not empty
        bk.restore(settings, tmp_path / "bk")
    assert "already holds data (api_keys: 1, dataset_snapshots: 1" in e.value.problem and "--force" in e.value.fix
    with session_scope(settings.db_url) as s:  # a change after the backup, which --force undoes
        register_version(s, name="reverse", base_model="tiny", method="sft", adapter_type="lora", uri="/x")
    assert bk.restore(settings, tmp_path / "bk", force=True).problems == []
    with session_scope(settings.db_url) as s:
        assert [v.version for v in list_versions(s, "reverse")] == [1]
    if settings.db_url.startswith("postgresql"):
        monkeypatch.setenv("PATH", str(tmp_path / "no-tools"))
        with pytest.raises(StudioError) as e:
            bk.backup(settings, tmp_path / "bk2")
        assert "pg_dump is not installed" in e.value.problem and "postgresql-client-1" in e.value.fix
        assert not (tmp_path / "bk2").exists() and not list(tmp_path.glob(".bk2.partial-*"))
        monkeypatch.undo()
    manifest = tmp_path / "bk" / bk.MANIFEST
    m = json.loads(manifest.read_text())
    manifest.write_text(json.dumps({**m, "revision": "0099"}))
    with pytest.raises(StudioError, match="revision 0099, which this studio does not know"):
        bk.restore(_target(tmp_path, f"sqlite:///{tmp_path / 'x.db'}"), tmp_path / "bk")


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)  # the same code on both backends
def test_an_older_schema_is_migrated_to_head(unmigrated_settings, tmp_path):
    cfg = alembic_config(unmigrated_settings.db_url)
    command.upgrade(cfg, "0011")
    bk.backup(unmigrated_settings, tmp_path / "bk")
    new = _target(tmp_path, f"sqlite:///{tmp_path / 'restored.db'}")
    r = bk.restore(new, tmp_path / "bk")
    assert (r.revision, r.migrated) == ("0011", True)
    with get_engine(new.db_url).connect() as conn:
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar_one() == r.head != "0011"


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)  # the same code on both backends
def test_the_cli_backs_up_and_restores(settings, write_rows, tmp_path, monkeypatch):
    _populate(settings, write_rows)
    runner = CliRunner()

    def invoke(home: Path, url: str, *args: str):
        monkeypatch.setenv("STUDIO_HOME", str(home))
        monkeypatch.setenv("STUDIO_DATABASE_URL", url)
        get_settings.cache_clear()
        return runner.invoke(app, list(args))

    r = invoke(settings.home, settings.db_url, "backup", str(tmp_path / "bk"))
    assert r.exit_code == 0 and "backed up" in r.output and "5 copied" in r.output
    r = invoke(settings.home, settings.db_url, "backup", str(tmp_path / "bk"))
    assert isinstance(r.exception, StudioError) and "--force" in r.exception.fix
    target = f"sqlite:///{tmp_path / 'home2' / 'studio.db'}"
    r = invoke(tmp_path / "home2", target, "restore", str(tmp_path / "bk"))
    assert r.exit_code == 0 and "restored" in r.output, r.output
    r = invoke(settings.home, settings.db_url, "backup", "--no-artifacts", str(tmp_path / "bk2"))
    assert r.exit_code == 0 and "0 copied" in r.output
    next(Path(settings.artifacts, "checkpoints").rglob("state.pt")).unlink()
    r = invoke(tmp_path / "home3", f"sqlite:///{tmp_path / 'home3' / 'studio.db'}", "restore", str(tmp_path / "bk2"))
    assert r.exit_code == 2 and "state.pt is missing" in r.output, r.output
    get_settings.cache_clear()


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)  # the same code on both backends
def test_a_lost_database_comes_back_in_place_rewriting_nothing(settings, write_rows, tmp_path):
    made = _populate(settings, write_rows)
    bk.backup(settings, tmp_path / "bk")
    get_engine(settings.db_url).dispose()
    for f in tmp_path.glob("studio.db*"):
        f.unlink()  # the database is lost; the artifacts under the home are still there
    r = bk.restore(settings, tmp_path / "bk")
    assert (r.restored_files, r.relocated, r.problems) == (0, None, [])
    with session_scope(settings.db_url) as s:
        assert read_table(s.get(DatasetSnapshot, made["snapshot"]).uri).to_pylist() == ROWS
