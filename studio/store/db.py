"""Database engine, sessions and migrations.

SQLite (WAL) under ``$STUDIO_HOME`` by default; PostgreSQL (or anything SQLAlchemy speaks) via
``STUDIO_DATABASE_URL``. The schema is owned by Alembic: ``init_db`` upgrades to head.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from studio.errors import StudioError, Unavailable

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


def _normalize_url(url: str) -> str:
    # psycopg (v3) is the driver we ship; plain postgresql:// would ask SQLAlchemy for psycopg2.
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


def redacted_url(url: str) -> str:
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url


@lru_cache(maxsize=8)
def get_engine(url: str) -> Engine:
    """One engine per URL per process; the connection is checked so a dead URL fails here, clearly."""
    given, url = url, _normalize_url(url)
    fix_url = ("set STUDIO_DATABASE_URL to e.g. postgresql://user@127.0.0.1:5432/studio "
               "or sqlite:////abs/path/studio.db")
    try:
        parsed = make_url(url)
    except ArgumentError as e:
        raise StudioError(f"database URL {given!r} is not a valid SQLAlchemy URL", fix_url) from e
    kwargs: dict = {"pool_pre_ping": True}
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        # Serve replicas, Ray jobs and the CLI write concurrently; wait for the lock, don't fail.
        kwargs["connect_args"] = {"timeout": 30, "check_same_thread": False}
    elif parsed.get_backend_name() == "postgresql":
        kwargs["connect_args"] = {"connect_timeout": 5}
    try:
        engine = create_engine(url, **kwargs)
    except (ArgumentError, ImportError) as e:  # unknown dialect, or its driver is not installed
        raise StudioError(f"database URL {redacted_url(given)} cannot be used: {e}", fix_url) from e
    if parsed.get_backend_name() == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except OperationalError as e:
        engine.dispose()
        reason = str(e.orig).strip().splitlines()[0] if e.orig else str(e)
        raise Unavailable(
            f"cannot reach the database at {redacted_url(given)}: {reason}",
            "start the database server or point STUDIO_DATABASE_URL at one that answers",
        ) from e
    return engine


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()


def alembic_config(url: str):
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    # ConfigParser interpolation would choke on '%' in passwords.
    cfg.set_main_option("sqlalchemy.url", _normalize_url(url).replace("%", "%%"))
    return cfg


def init_db(url: str) -> Engine:
    """Create or upgrade the schema to the newest migration. Safe to call on every start."""
    from alembic import command

    engine = get_engine(url)
    cfg = alembic_config(url)
    with engine.begin() as conn:
        _lock_for_migration(conn)
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")
    return engine


# Any fixed 64-bit number; PostgreSQL advisory locks are keyed by it.
_MIGRATION_LOCK_KEY = 0x5354_5544_494F_0001


def _lock_for_migration(conn) -> None:
    """Serve replicas, Ray jobs and the CLI all call ``init_db`` at start; on a fresh database they
    would create the same tables at once and all but one fail. One migrates, the others wait for
    its commit and then find the schema at head."""
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK_KEY})
    elif conn.dialect.name == "sqlite":
        # pysqlite opens no transaction before DDL; take the write lock now (waits busy_timeout).
        conn.exec_driver_sql("BEGIN IMMEDIATE")


@contextmanager
def session_scope(url: str) -> Iterator[Session]:
    """A transaction: commits on success, rolls back on any error."""
    factory = sessionmaker(bind=get_engine(url), expire_on_commit=False)
    session = factory()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()
