"""Shared fixtures: a real database (SQLite file and PostgreSQL), settings under a temp STUDIO_HOME,
and writers for dataset files in every format the ingest reads.

PostgreSQL is found at ``STUDIO_TEST_POSTGRES_URL`` (default ``postgresql://postgres@127.0.0.1:5432/
postgres``, trust auth); the test session creates its own database there and drops it at the end.
Tests of the postgresql parameter skip, saying why, only when that server does not answer.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from psycopg import sql
from sqlalchemy.engine import make_url

from studio.errors import StudioError
from studio.settings import StudioSettings
from studio.store import db as store_db

POSTGRES_ADMIN_URL = os.environ.get(
    "STUDIO_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)


@pytest.fixture(scope="session")
def postgres_database() -> Iterator[str]:
    """URL of a database created for this test session (dropped at its end), or skip saying why.

    Each test empties it (drops and re-creates the ``public`` schema), which is ~50x cheaper than a
    new database per test; the name is unique, so concurrent test sessions don't meet.
    """
    try:
        admin = psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as e:
        reason = str(e).strip().splitlines()[0]
        pytest.skip(f"PostgreSQL is not reachable at {POSTGRES_ADMIN_URL}: {reason}")
    name = f"studio_test_{uuid.uuid4().hex[:12]}"
    admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield make_url(POSTGRES_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        store_db.get_engine.cache_clear()
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        admin.close()


@pytest.fixture(autouse=True)
def _fresh_settings() -> Iterator[None]:
    """``get_settings()`` is cached per process; a test that sets ``STUDIO_*`` with monkeypatch must
    not read the settings an earlier test cached in the same (xdist) worker: a stale STUDIO_ADMIN_KEY
    once let ``studio up`` skip its key check and start a Ray head on another test's home."""
    from studio.settings import get_settings

    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def _release_engine(url: str) -> None:
    """Close the pooled connections of ``url``'s cached engine and forget every cached engine."""
    try:
        store_db.get_engine(url).dispose()
    except StudioError:
        pass
    store_db.get_engine.cache_clear()


# Whether the session's PostgreSQL database holds the migrated schema (then a test that wants a
# migrated database only empties its tables) or was left empty by a test that wanted that.
_PG_MIGRATED = {"at_head": False}


def _pg(url: str) -> psycopg.Connection:
    conn = psycopg.connect(url, autocommit=True)
    conn.execute("SET lock_timeout = '10s'")  # a connection a test left open: fail, don't hang
    return conn


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path: Path) -> Iterator[str]:
    """A database: a new SQLite file under tmp_path, or the session's PostgreSQL database. Empty,
    unless the test also asks for ``settings``, which migrates it (from a copy of a database
    migrated once per session: see ``settings``)."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'studio.db'}"
    else:
        url = request.getfixturevalue("postgres_database")
        if "settings" not in request.fixturenames:
            with _pg(url) as conn:
                conn.execute("DROP SCHEMA public CASCADE")
                conn.execute("CREATE SCHEMA public")
            _PG_MIGRATED["at_head"] = False
    yield url
    _release_engine(url)


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite database migrated to head once per session; each test gets a copy."""
    path = tmp_path_factory.mktemp("db-template") / "studio.db"
    url = f"sqlite:///{path}"
    store_db.init_db(url)
    _release_engine(url)
    return path


def _migrated(url: str, request: pytest.FixtureRequest) -> None:
    """Make ``url`` a migrated, empty database the cheap way: a copy of the session's migrated
    SQLite file; on PostgreSQL, the session database's tables emptied (identities restarted) when
    it is already at head, else its schema re-created and migrated. Migrating per test took most
    of a light test's time (about 0.8 s a test)."""
    if url.startswith("sqlite"):
        target = Path(make_url(url).database)
        if not target.exists():
            shutil.copyfile(request.getfixturevalue("sqlite_template"), target)
            return
        store_db.init_db(url)
        return
    if _PG_MIGRATED["at_head"]:
        with _pg(url) as conn:
            tables = [r[0] for r in conn.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public' AND tablename <> 'alembic_version'")]
            if tables:
                conn.execute(sql.SQL("TRUNCATE TABLE {} RESTART IDENTITY CASCADE").format(
                    sql.SQL(", ").join(sql.Identifier(t) for t in tables)))
        return
    with _pg(url) as conn:
        conn.execute("DROP SCHEMA public CASCADE")
        conn.execute("CREATE SCHEMA public")
    store_db.init_db(url)
    _PG_MIGRATED["at_head"] = True


@pytest.fixture
def unmigrated_settings(tmp_path: Path, db_url: str) -> StudioSettings:
    """Settings under a temp STUDIO_HOME; URLs passed explicitly so STUDIO_* env vars can't leak in."""
    return StudioSettings(
        home=tmp_path / "home",
        database_url=db_url,
        artifacts_uri=None,
        mlflow_uri=None,
        redis_url=None,
        admin_key=None,
    )


@pytest.fixture
def settings(unmigrated_settings: StudioSettings, request: pytest.FixtureRequest) -> StudioSettings:
    """Settings whose database is migrated to head (and empty)."""
    _migrated(unmigrated_settings.db_url, request)
    return unmigrated_settings


Row = dict[str, Any] | str | bytes


@pytest.fixture
def write_rows(tmp_path: Path) -> Callable[..., Path]:
    """``write_rows("x.jsonl", rows)`` writes a dataset file under tmp_path/inputs.

    JSONL: a dict is dumped as one line, a str or bytes is written verbatim as one line (for broken
    lines). JSON: the rows as one array. CSV: dict rows through a DictWriter (columns of the first
    row, or ``fieldnames``). Parquet: ``pa.Table.from_pylist``.
    """
    folder = tmp_path / "inputs"
    folder.mkdir(exist_ok=True)

    def write(filename: str, rows: list[Row], fieldnames: list[str] | None = None) -> Path:
        path = folder / filename
        suffix = path.suffix
        if suffix == ".jsonl":
            with path.open("wb") as f:
                for row in rows:
                    if isinstance(row, dict):
                        row = json.dumps(row, ensure_ascii=False)
                    if isinstance(row, str):
                        row = row.encode()
                    f.write(row + b"\n")
        elif suffix == ".json":
            path.write_text(json.dumps(rows), encoding="utf-8")
        elif suffix == ".csv":
            with path.open("w", encoding="utf-8", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=fieldnames or list(rows[0]))
                writer.writeheader()
                writer.writerows(rows)
        elif suffix == ".parquet":
            pq.write_table(pa.Table.from_pylist(rows), path)
        else:
            raise ValueError(f"write_rows does not know {suffix}")
        return path

    return write



def _has_cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def pytest_configure(config):
    """tests/leaks.py: each module ends with the environment it started with; per-module report."""
    from tests.leaks import LeakWatch

    # The CLI's rich tables fit the terminal; a test must not depend on the one it runs in (a
    # pytest-xdist worker has none: rich fell back to 80 columns and cut names out of tables).
    os.environ["COLUMNS"] = "160"
    # The studio stacks the tests start run no MLflow UI (~0.7 GB, ~15 s of CPU on 2 cores each)
    # unless one asks for it (tests/e2e/conftest.py's API stack does, on a free port).
    os.environ.setdefault("STUDIO_MLFLOW_UI", "0")
    config.pluginmanager.register(LeakWatch(), "studio-leak-watch")


@pytest.fixture(scope="session")
def tiny_stack(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest):
    """The live tiny-model `studio up` that the modules in tests/stacks.TINY_STACK_MODULES share;
    each module's fixture calls ``ensure()`` (after its own preparation). Closed right after the
    last item of those modules (``pytest_runtest_teardown`` below), at the latest here."""
    from tests.stacks import TinyStack

    stack = TinyStack(tmp_path_factory.mktemp("tiny-stack-home"),
                      request.config.pluginmanager.get_plugin("studio-leak-watch"))
    _TINY_STACKS.append(stack)
    try:
        yield stack
    finally:
        _TINY_STACKS.remove(stack)
        stack.close()


@pytest.fixture(scope="session")
def demo_run(tiny_stack):
    """The demo's small profile, run once per session (tests/demo_run.py) on the shared tiny-model
    stack, which it starts and leaves up. A failed run fails every test that asks for it, with the
    same error."""
    from tests.demo_run import run_small_demo

    return run_small_demo(tiny_stack)


_TINY_STACKS: list = []  # the TinyStack of this session, once a module asked for it


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item, nextitem):
    """After a module that shares the tiny-model stack (its fixtures torn down): if the next item
    shares it too, the stack's processes are hidden from tests/leaks.py (they belong to the stack,
    not to the module); otherwise the stack is closed now: no other module runs beside its engine.
    Runs inside the leak watch's own teardown wrapper (registered after this conftest)."""
    from tests.stacks import uses_tiny_stack

    yield
    root = item.config.rootpath
    if not uses_tiny_stack(item, root) or (nextitem is not None and nextitem.path == item.path):
        return
    stack = _TINY_STACKS[0] if _TINY_STACKS else None
    if stack is None:
        return
    if uses_tiny_stack(nextitem, root):
        stack.hide_from_leak_watch()
    else:
        stack.close()


def _postgresql_for_all() -> bool:
    value = os.environ.get("STUDIO_TEST_DATABASES", "marked").strip().lower()
    if value not in ("marked", "both"):
        raise pytest.UsageError(f"STUDIO_TEST_DATABASES={value!r}: use 'marked' (the default: PostgreSQL "
                                "for the tests marked both_databases) or 'both' (every database test on both)")
    return value == "both"


def pytest_collection_modifyitems(config, items):
    """`gpu` tests need a CUDA device; without one they are skipped, with the reason. The modules
    sharing the tiny-model stack (tests/stacks.py) run one after another. A database test runs on
    SQLite, and also on PostgreSQL where it is marked ``both_databases`` (what the two databases do
    differently: locking, concurrent writers, migrations, constraints) or with
    ``STUDIO_TEST_DATABASES=both``: the PostgreSQL copy of every route and parsing test doubled the
    first lane's time and found nothing SQLite's did not."""
    from tests.stacks import group_items

    if not _postgresql_for_all():
        dropped = [item for item in items if getattr(item, "callspec", None) is not None
                   and item.callspec.params.get("db_url") == "postgresql"
                   and item.get_closest_marker("both_databases") is None]
        if dropped:
            gone = set(map(id, dropped))
            items[:] = [item for item in items if id(item) not in gone]
            config.hook.pytest_deselected(items=dropped)
    # The `parallel` modules (a browser, a studio server, model loads: 10 s to 2 min each) first: the
    # workers take modules in this order (--dist loadfile), so the long ones no longer end the lane
    # on one worker while the other idles. Stable: each module's tests keep their order.
    items.sort(key=lambda item: item.get_closest_marker("parallel") is None)
    group_items(items, config.rootpath)
    gpu_items = [item for item in items if "gpu" in item.keywords]
    if gpu_items and not _has_cuda():
        skip = pytest.mark.skip(reason="needs a CUDA GPU (marker gpu); none on this machine")
        for item in gpu_items:
            item.add_marker(skip)
