"""``studio models mlflow-sync``: bring MLflow's model registry in step with the studio's now (the
scheduler does it every STUDIO_MLFLOW_SYNC_INTERVAL_S; after MLflow was down, this is the hand)."""

from __future__ import annotations

import typer

from studio.cli.common import console, settings_with_db
from studio.store.db import session_scope


def mlflow_sync(name: list[str] | None = typer.Argument(None, help="Registry names to mirror; default: all."),
                ) -> None:
    """Mirror the registry into MLflow: every version as a registered model version (source = the
    adapter's URI, tags: base model, snapshot, job), @champion / @challenger aliases from the stages."""
    from studio.mlflow_links import version_url
    from studio.registry.mlflow_mirror import load, push
    from studio.store.db import redacted_url

    settings = settings_with_db()
    with session_scope(settings.db_url) as s:
        versions = load(s, name or None)
    if name and (missing := sorted(set(name) - set(versions))):
        console.print(f"[yellow]not in the registry:[/] {', '.join(missing)} (see `studio models ls`)",
                      highlight=False)
    report = push(settings.mlflow, versions)  # MirrorUnavailable: exit 1 with the problem and the fix
    console.print(f"MLflow registry at {redacted_url(settings.mlflow)}: {report.summary()}", highlight=False)
    for ref in report.created:
        n, _, v = ref.partition("@")
        if url := version_url(settings, n, int(v)):
            console.print(f"  {ref}  {url}", highlight=False)
