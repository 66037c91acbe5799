"""``studio backup PATH`` / ``studio restore PATH``: operator commands (local access to STUDIO_HOME
and STUDIO_DATABASE_URL; there is no HTTP route). See docs/production.md, "Backups"."""

from __future__ import annotations

from pathlib import Path

import typer

from studio.cli.common import console, err_console
from studio.settings import get_settings


def backup(
    path: Path = typer.Argument(..., help="Directory to write (must not exist, unless --force)."),
    no_artifacts: bool = typer.Option(False, "--no-artifacts", help="Leave the artifacts under STUDIO_HOME "
                                      "out (the manifest still lists them with sizes and sha256)."),
    force: bool = typer.Option(False, "--force", help="Replace an existing backup at PATH."),
) -> None:
    """Back up the database (consistent while the studio runs), its schema revision and the artifact
    store's manifest, with the artifacts under STUDIO_HOME."""
    from studio.store.backup import backup as run_backup

    settings = get_settings()
    with console.status(f"backing up to {path} …"):
        r = run_backup(settings, path, include_artifacts=not no_artifacts, force=force)
    console.print(f"[green]backed up[/] {r.backend} database (revision {r.revision}, {r.rows} rows) to {r.path}")
    console.print(f"artifacts: {r.artifacts} referenced, {r.copied} copied ({r.files} files, "
                  f"{r.bytes / 1e6:.1f} MB hashed)")
    for uri in r.missing:
        err_console.print(f"[yellow]warning:[/] the database references {uri}, which does not exist",
                          highlight=False)


def restore(
    path: Path = typer.Argument(..., help="A directory `studio backup` wrote."),
    force: bool = typer.Option(False, "--force", help="Replace a non-empty target database and overwrite "
                               "differing files under STUDIO_HOME."),
) -> None:
    """Restore a backup into this STUDIO_HOME / STUDIO_DATABASE_URL (empty unless --force), check the
    artifacts against the manifest and migrate the database to this version's schema."""
    from studio.store.backup import restore as run_restore

    settings = get_settings()
    with console.status(f"restoring from {path} …"):
        r = run_restore(settings, path, force=force)
    migrated = f", migrated to {r.head}" if r.migrated else ""
    console.print(f"[green]restored[/] the database (revision {r.revision}{migrated}) and "
                  f"{r.restored_files} artifact file(s) into {settings.home_abs}")
    if r.relocated:
        console.print(f"artifact URIs moved from {r.relocated[0]} to {r.relocated[1]}", highlight=False)
    for problem in r.problems:
        err_console.print(f"[yellow]warning:[/] {problem}", highlight=False)
    if r.problems:
        raise typer.Exit(2)
