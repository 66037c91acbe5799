"""``studio backup`` / ``studio restore``: the database, its Alembic revision and the artifact store's
manifest in one directory.

A backup directory holds ``backup.json`` (written last: without it the directory is not a backup),
the database (``database.sqlite`` or ``database.pgdump``, see ``backup_db``) and, under ``home/``,
every artifact the database references that lives under ``STUDIO_HOME`` (dataset snapshots, their
dropped and rejected rows, model versions, job checkpoints, Files API bytes), unless left out. The
manifest lists every referenced artifact, inside the home or not, file by file with size and
sha256.

Restore checks everything before it changes anything: the manifest parses, the database file and
every copied artifact match their sizes and hashes, the schema revision is one this code knows,
the target database is empty and no artifact would overwrite different bytes (``--force`` allows
both). It then copies the artifacts under the new ``STUDIO_HOME``, loads the database, points the
URIs of artifacts that came from the old home at the new one (only when the home moved), migrates
to head and checks the artifacts the backup left out are where the manifest says, unchanged.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from sqlalchemy import inspect, text

from studio.errors import StudioError
from studio.settings import StudioSettings
from studio.store import backup_db
from studio.store.artifacts import filesystem
from studio.store.db import alembic_config, get_engine, init_db

FORMAT = 1
MANIFEST = "backup.json"
HOME_DIR = "home"
# Every column that names an artifact by URI, and the Files API's store keys.
URI_COLUMNS = [("dataset_snapshots", "uri"), ("dataset_snapshots", "dropped_uri"),
               ("dataset_versions", "rejected_uri"), ("jobs", "checkpoint_uri"), ("model_versions", "uri")]
_CHUNK = 1 << 20


@dataclass
class BackupReport:
    path: Path
    backend: str
    revision: str | None
    rows: int
    artifacts: int  # referenced artifact URIs
    copied: int  # of them, copied into the backup
    files: int
    bytes: int
    missing: list[str] = field(default_factory=list)  # referenced, but not found


@dataclass
class RestoreReport:
    revision: str | None  # the backup's
    head: str  # after the restore
    migrated: bool
    restored_files: int
    relocated: tuple[str, str] | None  # (old home, new home) when URIs were moved
    problems: list[str] = field(default_factory=list)  # artifacts missing or changed


def _sha256(fileobj) -> tuple[str, int]:
    h, n = hashlib.sha256(), 0
    while chunk := fileobj.read(_CHUNK):
        h.update(chunk)
        n += len(chunk)
    return h.hexdigest(), n


def _referenced(settings: StudioSettings) -> list[str]:
    engine = get_engine(settings.db_url)
    uris: set[str] = set()
    with engine.connect() as conn:
        tables = set(inspect(conn).get_table_names())
        for table, column in URI_COLUMNS:
            if table in tables:
                uris.update(r[0] for r in conn.execute(text(f"SELECT {column} FROM {table} WHERE {column} IS NOT NULL")))
        if "files" in tables:
            root = settings.artifacts.rstrip("/")
            uris.update(f"{root}/{r[0].lstrip('/')}" for r in conn.execute(text("SELECT key FROM files")))
    return sorted(u for u in uris if u)


def _under(path: str, home: Path) -> str | None:
    """``path`` relative to ``home`` when it is a local path inside it."""
    if "://" in path and not path.startswith("file://"):
        return None
    local = Path(path.removeprefix("file://"))
    try:
        return local.resolve().relative_to(home).as_posix()
    except ValueError:
        return None


def _entry(uri: str, home: Path, dest: Path | None) -> dict:
    """The manifest entry of one URI: its files with sizes and hashes; copied under ``dest`` when given."""
    fs, root = filesystem(uri)
    fs.invalidate_cache(root)
    entry: dict = {"uri": uri, "home_path": _under(uri, home), "in_backup": dest is not None, "files": []}
    if not fs.exists(root):
        entry["missing"] = True
        return entry
    paths = sorted(fs.find(root)) if fs.isdir(root) else [root]
    for p in paths:
        rel = "" if p == root else p[len(root.rstrip("/")) + 1:]
        with fs.open(p, "rb") as src:
            if dest is None:
                digest, size = _sha256(src)
            else:
                target = dest / entry["home_path"] / rel if rel else dest / entry["home_path"]
                target.parent.mkdir(parents=True, exist_ok=True)
                with target.open("wb") as out:
                    h, size = hashlib.sha256(), 0
                    while chunk := src.read(_CHUNK):
                        h.update(chunk)
                        out.write(chunk)
                        size += len(chunk)
                digest = h.hexdigest()
        entry["files"].append({"path": rel, "size": size, "sha256": digest})
    return entry


def _check_target(path: Path, force: bool) -> None:
    if not path.exists():
        return
    if not force:
        raise StudioError(f"{path} already exists", "choose a new path, or pass --force to replace that backup")
    if path.is_file() or (any(path.iterdir()) and not (path / MANIFEST).is_file()):
        raise StudioError(f"{path} exists and is not a studio backup; --force replaces only a backup",
                          "choose another path")


def backup(settings: StudioSettings, path: Path, *, include_artifacts: bool = True,
           force: bool = False) -> BackupReport:
    path = Path(path).expanduser().absolute()
    _check_target(path, force)
    home = settings.home_abs
    work = path.with_name(f".{path.name}.partial-{uuid.uuid4().hex[:8]}")
    work.mkdir(parents=True)
    try:
        db_file, revision, rows = backup_db.dump(settings.db_url, work)
        entries = []
        for uri in _referenced(settings):
            copy = include_artifacts and _under(uri, home) is not None
            entries.append(_entry(uri, home, work / HOME_DIR if copy else None))
        with (work / db_file).open("rb") as f:
            db_sha, db_size = _sha256(f)
        manifest = {
            "format": FORMAT, "created_at": datetime.now(timezone.utc).isoformat(),
            "backend": backup_db.backend(settings.db_url), "revision": revision, "rows": rows,
            "database": {"file": db_file, "size": db_size, "sha256": db_sha},
            "home": str(home), "artifacts_root": settings.artifacts, "artifacts": entries,
        }
        (work / MANIFEST).write_text(json.dumps(manifest, indent=1))
        if path.exists():  # --force, checked above: a backup, replaced only now that the new one is whole
            shutil.rmtree(path)
        os.replace(work, path)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    files = [f for e in entries for f in e["files"]]
    return BackupReport(path=path, backend=manifest["backend"], revision=revision, rows=sum(rows.values()),
                        artifacts=len(entries), copied=sum(e["in_backup"] for e in entries), files=len(files),
                        bytes=sum(f["size"] for f in files),
                        missing=[e["uri"] for e in entries if e.get("missing")])


# --- restore -----------------------------------------------------------------------------------

def _corrupt(path: Path, what: str) -> StudioError:
    return StudioError(f"the backup at {path} is incomplete or corrupt: {what}; nothing was restored",
                       "restore from another backup (or re-run `studio backup`)")


def read_manifest(path: Path) -> dict:
    """The manifest, with the database file and every copied artifact checked against it."""
    if not path.is_dir():
        raise StudioError(f"there is no backup at {path}", "pass the directory `studio backup` wrote")
    try:
        manifest = json.loads((path / MANIFEST).read_text())
        db = manifest["database"]
        entries = manifest["artifacts"]
    except FileNotFoundError:
        raise _corrupt(path, f"{MANIFEST} is missing") from None
    except (ValueError, KeyError, TypeError) as e:
        raise _corrupt(path, f"{MANIFEST} does not parse ({e})") from None
    if not isinstance(db, dict) or db.get("file") not in (backup_db.SQLITE_FILE, backup_db.PG_FILE):
        raise _corrupt(path, f"{MANIFEST} names no known database file")
    if manifest.get("format") != FORMAT:
        raise StudioError(f"the backup at {path} has format {manifest.get('format')!r}; this studio reads {FORMAT}",
                          "restore it with the studio version that wrote it")
    try:
        for e in entries:
            for f in e["files"] if e["in_backup"] else []:
                rel = Path(e["home_path"], f["path"])
                if rel.is_absolute() or ".." in rel.parts:  # hand-edited: never read or write outside
                    raise _corrupt(path, f"artifact path {rel} leaves STUDIO_HOME")
        checks = [(path / db["file"], db)] + [
            (path / HOME_DIR / e["home_path"] / f["path"] if f["path"] else path / HOME_DIR / e["home_path"], f)
            for e in entries if e["in_backup"] for f in e["files"]]
        if lacking := [k for k in ("backend", "revision", "rows", "home") if k not in manifest]:
            raise KeyError(", ".join(lacking))
    except (KeyError, TypeError) as e:
        raise _corrupt(path, f"{MANIFEST} lacks {e}") from None
    bad = []
    for file, want in checks:
        try:
            with file.open("rb") as f:
                digest, size = _sha256(f)
        except OSError as e:
            bad.append(f"{file.relative_to(path)} is missing" if isinstance(e, FileNotFoundError)
                       else f"{file.relative_to(path)} cannot be read ({e})")
            continue
        if (digest, size) != (want.get("sha256"), want.get("size")):
            bad.append(f"{file.relative_to(path)} has {size} bytes, sha256 {digest[:12]}…; "
                       f"the manifest says {want.get('size')} bytes, {str(want.get('sha256'))[:12]}…")
    if bad:
        raise _corrupt(path, "; ".join(bad[:5]) + (f" (and {len(bad) - 5} more)" if len(bad) > 5 else ""))
    return manifest


def _known_revisions(url: str) -> tuple[set[str], str]:
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(alembic_config(url))
    return {s.revision for s in script.walk_revisions()}, script.get_current_head()


def _plan_files(manifest: dict, path: Path, home: Path, force: bool) -> list[tuple[Path, Path]]:
    """(source in the backup, target under the new home) for every copied file not already there."""
    plan, clashes = [], []
    for e in manifest["artifacts"]:
        if not e["in_backup"]:
            continue
        for f in e["files"]:
            rel = Path(e["home_path"]) / f["path"] if f["path"] else Path(e["home_path"])
            target = home / rel
            if target.exists():
                with target.open("rb") as fh:
                    if _sha256(fh) == (f["sha256"], f["size"]):
                        continue  # the same bytes are already there
                clashes.append(str(target))
            plan.append((path / HOME_DIR / rel, target))
    if clashes and not force:
        raise StudioError(f"restoring would overwrite {len(clashes)} file(s) under {home} that differ from the "
                          f"backup: {', '.join(clashes[:3])}", "restore into an empty STUDIO_HOME, or pass --force")
    return plan


def _relocate(url: str, moves: dict[str, str]) -> None:
    """Point the URIs of the artifacts the restore copied (``moves``: old URI -> new path) at their
    new place. Artifacts the backup left out keep their URIs."""
    with get_engine(url).begin() as conn:
        tables = set(inspect(conn).get_table_names())
        for table, column in URI_COLUMNS:
            if table not in tables:
                continue
            for row_id, uri in conn.execute(text(f"SELECT id, {column} FROM {table} WHERE {column} IS NOT NULL")).all():
                if uri in moves:
                    conn.execute(text(f"UPDATE {table} SET {column} = :u WHERE id = :i"),
                                 {"u": moves[uri], "i": row_id})


def _check_outside(manifest: dict) -> list[str]:
    """Artifacts the backup left out: still where the manifest says, unchanged?"""
    problems = []
    for e in manifest["artifacts"]:
        if e["in_backup"] or e.get("missing"):
            continue
        fs, root = filesystem(e["uri"])
        for f in e["files"]:
            p = f"{root.rstrip('/')}/{f['path']}" if f["path"] else root
            name = f"{e['uri']}/{f['path']}" if f["path"] else e["uri"]
            try:
                with fs.open(p, "rb") as fh:
                    if _sha256(fh) != (f["sha256"], f["size"]):
                        problems.append(f"{name} changed since the backup")
            except FileNotFoundError:
                problems.append(f"{name} is missing")
    return problems


def restore(settings: StudioSettings, path: Path, *, force: bool = False) -> RestoreReport:
    path = Path(path).expanduser().absolute()
    manifest = read_manifest(path)
    url, home = settings.db_url, settings.home_abs
    known, head = _known_revisions(url)
    revision = manifest["revision"]
    if revision is not None and revision not in known:
        raise StudioError(f"the backup's schema is at revision {revision}, which this studio does not know "
                          f"(its newest is {head}): it was made by a newer version",
                          "restore it with that version of llm-studio (or upgrade this one)")
    kind = backup_db.backend(url)
    if kind != manifest["backend"]:
        raise StudioError(f"the backup holds a {manifest['backend']} database; the target "
                          f"(STUDIO_DATABASE_URL) is {kind}", "restore into a database of the same kind")
    held = backup_db.rows_held(url)
    if held and not force:
        shown = ", ".join(f"{t}: {n}" for t, n in sorted(held.items())[:4])
        raise StudioError(f"the target database already holds data ({shown} rows)",
                          "restore into an empty database, or pass --force to replace it")
    plan = _plan_files(manifest, path, home, force)
    for src, target in plan:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.restore-{uuid.uuid4().hex[:8]}")
        shutil.copyfile(src, tmp)
        os.replace(tmp, target)
    backup_db.load(url, path / manifest["database"]["file"], kind)
    problems = []
    found = backup_db.counts(url)
    for table, n in manifest["rows"].items():
        if found.get(table) != n:
            problems.append(f"table {table}: {found.get(table)} rows restored, the backup had {n}")
    old_home = manifest["home"]
    relocated = None
    moves = {e["uri"]: str(home / e["home_path"]) for e in manifest["artifacts"] if e["in_backup"]}
    moves = {old: new for old, new in moves.items() if old != new}
    if moves:
        _relocate(url, moves)
        relocated = (old_home, str(home))
    init_db(url)
    problems += _check_outside(manifest)
    problems += [f"{e['uri']} was already missing when the backup was made"
                 for e in manifest["artifacts"] if e.get("missing")]
    return RestoreReport(revision=revision, head=head, migrated=revision != head, restored_files=len(plan),
                         relocated=relocated, problems=problems)
