"""The state store: migrations on SQLite and PostgreSQL, URL errors, sessions."""

from __future__ import annotations

import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, select
from sqlalchemy.engine import make_url

from studio.errors import StudioError, Unavailable
from studio.keys import create_key
from studio.store import db as store_db
from studio.store.models import ApiKey, Base

pytestmark = pytest.mark.both_databases  # PostgreSQL too: locking, concurrent writers, constraints


def _head_revision(url: str) -> str:
    return ScriptDirectory.from_config(store_db.alembic_config(url)).get_current_head()


def test_init_db_upgrades_an_empty_database_to_head(db_url):
    engine = store_db.init_db(db_url)
    with engine.connect() as conn:
        assert MigrationContext.configure(conn).get_current_revision() == _head_revision(db_url)
        tables = set(inspect(conn).get_table_names())
    assert set(Base.metadata.tables) <= tables


def test_migrated_schema_matches_the_models(db_url):
    engine = store_db.init_db(db_url)
    with engine.connect() as conn:
        ctx = MigrationContext.configure(
            conn, opts={"compare_type": True, "compare_server_default": True}
        )
        diffs = compare_metadata(ctx, Base.metadata)
    assert diffs == [], f"migrations and studio.store.models differ: {diffs}"


def test_init_db_is_idempotent_and_keeps_data(db_url):
    store_db.init_db(db_url)
    with store_db.session_scope(db_url) as s:
        create_key(s, "kept", "user")
    store_db.init_db(db_url)
    with store_db.session_scope(db_url) as s:
        assert s.scalars(select(ApiKey.name)).all() == ["kept"]


def test_session_scope_commits_on_success_and_rolls_back_on_error(settings):
    url = settings.db_url
    with store_db.session_scope(url) as s:
        create_key(s, "committed", "user")
    with pytest.raises(RuntimeError):
        with store_db.session_scope(url) as s:
            create_key(s, "rolled-back", "user")
            s.flush()
            raise RuntimeError("boom")
    with store_db.session_scope(url) as s:
        assert s.scalars(select(ApiKey.name)).all() == ["committed"]


def test_get_engine_is_one_engine_per_url(settings):
    assert store_db.get_engine(settings.db_url) is store_db.get_engine(settings.db_url)


def test_a_failed_url_does_not_evict_working_engines(settings):
    engine = store_db.get_engine(settings.db_url)
    with pytest.raises(Unavailable):
        store_db.get_engine("postgresql://postgres@127.0.0.1:1/nowhere")
    assert store_db.get_engine(settings.db_url) is engine


@pytest.mark.parametrize(
    "url", ["postgresql://postgres@127.0.0.1:1/x", "postgres://postgres:hunter2@127.0.0.1:1/x"]
)
def test_unreachable_database_raises_unavailable_naming_the_url(url):
    with pytest.raises(Unavailable) as info:
        store_db.get_engine(url)
    message = str(info.value)
    assert "127.0.0.1:1/x" in message
    assert "hunter2" not in message  # the password is redacted
    assert "STUDIO_DATABASE_URL" in message  # and the fix is named
    assert info.value.status_code == 503


def test_missing_postgres_database_is_unavailable(postgres_database):
    url = make_url(postgres_database).set(database="studio_no_such_db")
    with pytest.raises(Unavailable, match='database "studio_no_such_db" does not exist'):
        store_db.get_engine(url.render_as_string(hide_password=False))


@pytest.mark.parametrize(
    "url",
    [
        "not a url",
        "nosuchdialect://host/db",  # parses, but no SQLAlchemy dialect has that name
        "mysql://user@127.0.0.1/db",  # a real dialect whose driver is not installed
    ],
)
def test_malformed_or_unusable_url_is_a_studio_error(url):
    with pytest.raises(StudioError) as info:
        store_db.get_engine(url)
    assert not isinstance(info.value, Unavailable)
    assert "STUDIO_DATABASE_URL" in str(info.value)


def test_timestamps_come_back_as_aware_utc(settings):
    # SQLite stores no time zone; every backend must still hand back the same aware UTC instant.
    with store_db.session_scope(settings.db_url) as s:
        _, info = create_key(s, "t", "user")
    with store_db.session_scope(settings.db_url) as s:
        created = s.scalars(select(ApiKey.created_at)).one()
    assert created.utcoffset() == timedelta(0)
    assert datetime.fromisoformat(info.created_at).utcoffset() == timedelta(0)
    assert abs(datetime.now(timezone.utc) - created) < timedelta(minutes=1)


def test_processes_migrating_a_fresh_database_at_once_all_succeed(db_url):
    # `studio up` starts replicas, jobs and the CLI together, and each calls init_db at start.
    start_at = time.time() + 2.0  # past the imports, so the upgrades really overlap
    code = (
        "import sys, time; from studio.store.db import init_db; "
        "time.sleep(max(0.0, float(sys.argv[2]) - time.time())); init_db(sys.argv[1])"
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", code, db_url, str(start_at)],
                         stderr=subprocess.PIPE, text=True, cwd=Path(__file__).parents[2])
        for _ in range(3)
    ]
    errors = [p.communicate(timeout=60)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], "\n".join(errors)
    engine = store_db.get_engine(db_url)
    with engine.connect() as conn:
        assert MigrationContext.configure(conn).get_current_revision() == _head_revision(db_url)
