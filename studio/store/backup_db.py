"""The database half of a backup: a consistent copy out, a whole-or-nothing copy in.

SQLite: the online backup API (``sqlite3.Connection.backup``) copies a consistent snapshot while
the studio keeps writing, and copies it back the same way (the target is replaced in one step).
PostgreSQL: ``pg_dump`` in custom format, run in a snapshot exported by a transaction that also
reads the Alembic revision and the row counts, so the three agree; restored by ``pg_restore`` to
SQL that ``psql`` runs in one transaction (a failure leaves the target as it was).
"""

from __future__ import annotations

import os
import re
import shutil
import sqlite3
import subprocess
import tempfile
from pathlib import Path

import psycopg
from psycopg import sql
from sqlalchemy import inspect, text
from sqlalchemy.engine import make_url

from studio.errors import StudioError
from studio.store.db import _normalize_url, get_engine, redacted_url

SQLITE_FILE = "database.sqlite"
PG_FILE = "database.pgdump"


def backend(url: str) -> str:
    return make_url(_normalize_url(url)).get_backend_name()


def sqlite_path(url: str) -> Path:
    database = make_url(url).database
    if not database or database == ":memory:":
        raise StudioError(f"the database {url} is in memory; there is nothing to back up or restore into",
                          "set STUDIO_DATABASE_URL to a file: sqlite:////abs/path/studio.db")
    return Path(database)


def _sqlite_facts(conn: sqlite3.Connection) -> tuple[str | None, dict[str, int]]:
    tables = [r[0] for r in conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")]
    counts = {t: conn.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0] for t in tables}
    revision = None
    if "alembic_version" in counts:
        row = conn.execute("SELECT version_num FROM alembic_version").fetchone()
        revision = row[0] if row else None
    counts.pop("alembic_version", None)
    return revision, counts


# --- PostgreSQL client tools -------------------------------------------------------------------

def _libpq(url: str) -> tuple[str, dict[str, str]]:
    """A libpq URL without the password (it goes in PGPASSWORD, not on a command line) and the env."""
    parsed = make_url(_normalize_url(url))
    env = dict(os.environ)
    if parsed.password:
        env["PGPASSWORD"] = parsed.password
    plain = parsed.set(drivername="postgresql", password=None)
    return plain.render_as_string(hide_password=False), env


def _tool(name: str, server_major: int) -> str:
    path = shutil.which(name)
    if path is None:
        raise StudioError(f"{name} is not installed; a PostgreSQL backup and restore need {name}, "
                          "pg_restore and psql",
                          f"install the PostgreSQL {server_major} client tools (Debian/Ubuntu: "
                          f"apt-get install postgresql-client-{server_major}) and put them on PATH")
    out = subprocess.run([path, "--version"], capture_output=True, text=True, check=False).stdout
    m = re.search(r"(\d+)(?:\.\d+)?", out)
    major = int(m.group(1)) if m else 0
    if major < server_major:
        raise StudioError(f"{path} is version {major}, older than the PostgreSQL {server_major} server",
                          f"install the PostgreSQL {server_major} client tools (Debian/Ubuntu: "
                          f"apt-get install postgresql-client-{server_major}) and put them first on PATH")
    return path


def _run(cmd: list[str], env: dict[str, str], what: str, stdout=subprocess.PIPE) -> None:
    r = subprocess.run(cmd, env=env, stdout=stdout, stderr=subprocess.PIPE, text=True, check=False)
    if r.returncode != 0:
        detail = (r.stderr or r.stdout or "").strip().splitlines()
        raise StudioError(f"{what} failed: {' / '.join(detail[-3:]) or f'exit {r.returncode}'}",
                          "check the database server and the client tools, then retry")


def _server_major(conn: psycopg.Connection) -> int:
    return int(conn.execute("SHOW server_version_num").fetchone()[0]) // 10000


def _pg_facts(conn: psycopg.Connection) -> tuple[str | None, dict[str, int]]:
    tables = [r[0] for r in conn.execute(
        "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()")]
    counts = {t: conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(t))).fetchone()[0]
              for t in tables}
    revision = None
    if "alembic_version" in counts:
        row = conn.execute("SELECT version_num FROM alembic_version").fetchone()
        revision = row[0] if row else None
    counts.pop("alembic_version", None)
    return revision, counts


# --- out ---------------------------------------------------------------------------------------

def dump(url: str, folder: Path) -> tuple[str, str | None, dict[str, int]]:
    """Write the database into ``folder``; returns (file name, Alembic revision, rows per table)."""
    kind = backend(url)
    if kind == "sqlite":
        source = sqlite_path(url)
        if not source.is_file():
            raise StudioError(f"there is no database at {source}", "check STUDIO_HOME / STUDIO_DATABASE_URL")
        src = sqlite3.connect(source, timeout=30)
        dst = sqlite3.connect(folder / SQLITE_FILE)
        try:
            src.backup(dst)
            revision, counts = _sqlite_facts(dst)
        finally:
            dst.close()
            src.close()
        return SQLITE_FILE, revision, counts
    if kind == "postgresql":
        conninfo, env = _libpq(url)
        get_engine(url)  # a dead server fails here with the usual message
        # autocommit: our own BEGIN opens the transaction, so its isolation level holds.
        with psycopg.connect(conninfo, password=env.get("PGPASSWORD"), autocommit=True) as conn:
            pg_dump = _tool("pg_dump", _server_major(conn))
            conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            snapshot = conn.execute("SELECT pg_export_snapshot()").fetchone()[0]
            revision, counts = _pg_facts(conn)
            _run([pg_dump, "--format=custom", "--no-owner", "--no-privileges", f"--snapshot={snapshot}",
                  f"--file={folder / PG_FILE}", f"--dbname={conninfo}"], env, "pg_dump")
            conn.execute("ROLLBACK")
        return PG_FILE, revision, counts
    raise StudioError(f"backups support SQLite and PostgreSQL, not {kind} ({redacted_url(url)})",
                      "back the database up with its own tools")


# --- in ----------------------------------------------------------------------------------------

def rows_held(url: str) -> dict[str, int]:
    """Tables of the target database that hold rows (none: safe to restore into without --force;
    an empty schema, e.g. one `studio up` just migrated, is replaced)."""
    if backend(url) == "sqlite" and not sqlite_path(url).exists():
        return {}
    return {t: n for t, n in counts(url).items() if n}


def counts(url: str) -> dict[str, int]:
    with get_engine(url).connect() as conn:
        names = inspect(conn).get_table_names()
        found = {t: conn.execute(text(f'SELECT count(*) FROM "{t}"')).scalar_one() for t in names}
    found.pop("alembic_version", None)
    return found


def load(url: str, dump_file: Path, kind: str) -> None:
    """Replace the target database with the dump, whole or not at all."""
    if kind == "sqlite":
        target = sqlite_path(url)
        target.parent.mkdir(parents=True, exist_ok=True)
        get_engine(url).dispose()  # no pooled connection holds the file while it is replaced
        src = sqlite3.connect(dump_file)
        dst = sqlite3.connect(target, timeout=30)
        try:
            src.backup(dst)
        finally:
            dst.close()
            src.close()
        get_engine(url).dispose()
        return
    conninfo, env = _libpq(url)
    get_engine(url).dispose()
    with psycopg.connect(conninfo, password=env.get("PGPASSWORD"), autocommit=True) as conn:
        major = _server_major(conn)
        tables = [r[0] for r in conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()")]
    pg_restore, psql = _tool("pg_restore", major), _tool("psql", major)
    with tempfile.TemporaryDirectory(prefix="studio-restore-") as tmp:
        script = Path(tmp) / "restore.sql"
        with script.open("w") as f:
            # --force: the target's own tables go in the same transaction that loads the backup.
            for t in tables:
                f.write(f'DROP TABLE IF EXISTS "{t}" CASCADE;\n')
        with script.open("a") as out:
            _run([pg_restore, "--no-owner", "--no-privileges", "--file=-", str(dump_file)], env,
                 "pg_restore", stdout=out)
        _run([psql, "-X", "-q", "--single-transaction", "-v", "ON_ERROR_STOP=1", f"--file={script}",
              f"--dbname={conninfo}"], env, "psql (loading the backup)")
