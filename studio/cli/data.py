from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.table import Table

from studio.cli.common import console, settings_with_db
from studio.data.ingest import ingest_file
from studio.data.kinds import DatasetKind
from studio.data.snapshots import dataset_versions, list_datasets, load_split, resolve_snapshot
from studio.errors import StudioError
from studio.store.db import session_scope

app = typer.Typer(help="Datasets: ingest files into versioned snapshots, list, inspect.", no_args_is_help=True)


def _parse_map(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        dst, sep, src = item.partition("=")
        if not sep or not dst or not src:
            raise StudioError(f"--map {item!r} is not COLUMN=SOURCE", "e.g. --map completion=answer")
        out[dst.strip()] = src.strip()
    return out


@app.command("ingest")
def ingest(
    file: Path = typer.Argument(..., help="JSONL, JSON (array), CSV or Parquet file."),
    name: str = typer.Option(..., "--name", help="Dataset name; new content adds a version."),
    kind: DatasetKind | None = typer.Option(None, "--kind", help="Force the row kind instead of detecting it."),
    map_: list[str] = typer.Option([], "--map", help="Rename a column: --map completion=answer."),
    show_rejected: int = typer.Option(20, "--show-rejected", help="How many rejected rows to print."),
) -> None:
    """Validate every row, keep the good ones as an immutable snapshot, report the bad ones."""
    settings = settings_with_db()
    with console.status(f"ingesting {file} …"):
        report = ingest_file(file, name, settings, kind=kind, column_map=_parse_map(map_))
    verb = "created" if report.created else "unchanged (same content as"
    console.print(
        f"[green]{name}@{report.version}[/] {verb}{')' if not report.created else ''} "
        f"snapshot {report.snapshot_id[:12]} · {report.kind} · {report.row_count} rows kept · "
        f"{report.rejected_count} rejected"
    )
    for r in report.rejected[:show_rejected]:
        console.print(f"  [yellow]row {r.row}[/]: {r.reason}", highlight=False)
    if report.rejected_count > show_rejected:
        console.print(f"  … and {report.rejected_count - show_rejected} more")


@app.command("ls")
def ls() -> None:
    """List datasets with their newest version."""
    settings = settings_with_db()
    with session_scope(settings.db_url) as s:
        rows = list_datasets(s)
    table = Table("name", "version", "snapshot", "kind", "rows", "rejected", "created")
    for d in rows:
        table.add_row(d["name"], str(d["version"]), d["snapshot_id"][:12], d["kind"], str(d["rows"]),
                      str(d["rejected_rows"]), d["created_at"][:19])
    console.print(table)


@app.command("show")
def show(
    ref: str = typer.Argument(..., help="name, name@N, or a snapshot id (prefix)."),
    rows: int = typer.Option(5, "--rows", help="Rows to print."),
    split: str = typer.Option("all", "--split", help="all | train | validation"),
    validation_ratio: float = typer.Option(0.1, "--validation-ratio", help="Share held out as validation."),
    seed: int = typer.Option(0, "--seed", help="Seed of the split."),
) -> None:
    """Versions, stats and sample rows of a dataset; with --split, that split's size and rows."""
    settings = settings_with_db()
    with session_scope(settings.db_url) as s:
        resolved = resolve_snapshot(s, ref)
        snap = resolved.snapshot
        versions = dataset_versions(s, resolved.name) if resolved.name else []
    console.print(f"snapshot [bold]{snap.id}[/] · {snap.kind} · {snap.row_count} rows · {snap.uri}")
    console.print("stats: " + json.dumps(snap.stats))
    for v in versions:
        console.print(f"  {v['name']}@{v['version']}  {v['snapshot_id'][:12]}  {v['rows']} rows  "
                      f"{v['rejected_rows']} rejected  {v['created_at'][:19]}  {v['source']}")
    table = load_split(snap.uri, split, validation_ratio if split != "all" else 0.0, seed)
    console.print(f"split {split}: {table.num_rows} rows")
    for row in table.slice(0, rows).to_pylist():
        console.print(json.dumps(row, ensure_ascii=False), highlight=False)
