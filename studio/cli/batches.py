"""``studio batches``: the OpenAI Batch API from the studio's machine (docs/batch.md). Like every
studio command it opens the database and the artifact store itself, as the operator: batches it
creates spend on a key derived from the oldest admin key (docs/security.md). Remote users call
``/v1/files`` and ``/v1/batches`` with their key (the ``openai`` client works)."""

from __future__ import annotations

import getpass
import time
from pathlib import Path

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from studio.cli.common import console, settings_with_db
from studio.store.db import session_scope

app = typer.Typer(help="Batches: run a JSONL file of /v1 requests as a job (OpenAI's Batch API).",
                  no_args_is_help=True)
_COLORS = {"completed": "green", "failed": "red", "expired": "red", "cancelled": "yellow",
           "cancelling": "yellow", "in_progress": "cyan", "finalizing": "cyan"}


def _status(status: str) -> str:
    color = _COLORS.get(status)
    return f"[{color}]{status}[/]" if color else status


def _progress(b) -> str:
    c = b.request_counts
    return f"{c.completed + c.failed}/{c.total}" + (f" ({c.failed} failed)" if c.failed else "")


def _view(batch_id: str):
    from studio.batches import get_batch, view

    settings = settings_with_db()
    with session_scope(settings.db_url) as s:
        return view(s, get_batch(s, None, batch_id))


@app.command("ls")
def ls(limit: int = typer.Option(20, "--limit", min=1, max=100, help="How many, newest first.")) -> None:
    """List batches, newest first, with their progress (done/total)."""
    from studio.batches import list_batches, view

    settings = settings_with_db()
    with session_scope(settings.db_url) as s:
        rows = [view(s, b) for b in list_batches(s, None, limit=limit)[0]]
    table = Table("id", "status", "done/total", "endpoint", "created", "job")
    for b in rows:
        table.add_row(b.id, _status(b.status), _progress(b), b.endpoint,
                      time.strftime("%Y-%m-%d %H:%M", time.gmtime(b.created_at)), str(b.studio_job_id))
    console.print(table)


@app.command("show")
def show(batch_id: str = typer.Argument(..., help="Batch id (see `studio batches ls`)."),
         follow: bool = typer.Option(False, "--follow", "-f", help="A progress bar until it ends.")) -> None:
    """A batch's status, progress (done/total), tokens and files."""
    if follow:
        raise typer.Exit(_follow(batch_id))
    b = _view(batch_id)
    console.print(f"batch [bold]{b.id}[/] · {_status(b.status)} · {_progress(b)} · {b.endpoint} · "
                  f"input {b.input_file_id} · job {b.studio_job_id}", highlight=False)
    console.print(f"tokens: {b.usage.input_tokens} in, {b.usage.output_tokens} out · output file "
                  f"{b.output_file_id or '-'} · error file {b.error_file_id or '-'}", highlight=False)
    for e in (b.errors.data if b.errors else []):
        console.print(f"[red]error:[/] {e.code}: {e.message}", highlight=False)


def _follow(batch_id: str) -> int:
    from studio.batches.state import TERMINAL

    b = _view(batch_id)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=console, transient=True) as bar:
        task = bar.add_task(f"{batch_id} {b.status}", total=b.request_counts.total or None)
        while b.status not in TERMINAL:
            bar.update(task, completed=b.request_counts.completed + b.request_counts.failed,
                       description=f"{batch_id} {b.status}")
            time.sleep(0.5)
            b = _view(batch_id)
    console.print(f"batch {b.id} {_status(b.status)}: {_progress(b)}", highlight=False)
    return 0 if b.status == "completed" else 1


@app.command("create")
def create(
    path: Path = typer.Argument(..., exists=True, dir_okay=False, help="A JSONL file: one request per "
                                "line ({custom_id, method: POST, url, body})."),
    endpoint: str = typer.Option("/v1/chat/completions", "--endpoint", help="/v1/chat/completions or "
                                 "/v1/completions: every line's url."),
    metadata: list[str] = typer.Option([], "--metadata", help="KEY=VALUE labels (repeatable)."),
    follow: bool = typer.Option(False, "--follow", "-f", help="A progress bar until it ends."),
) -> None:
    """Upload a local JSONL file and queue it as a batch (the scheduler runs it when the studio is up)."""
    from studio.batches import BatchCreate, create_batch
    from studio.batches.files import add_file
    from studio.errors import StudioError
    from studio.store.artifacts import ArtifactStore

    labels = dict(item.split("=", 1) for item in metadata if "=" in item)
    if len(labels) != len(metadata):
        raise StudioError("--metadata takes KEY=VALUE", "e.g. --metadata team=search")
    settings = settings_with_db()
    data = path.read_bytes()
    with session_scope(settings.db_url) as s:
        source = add_file(s, ArtifactStore(settings.artifacts), data, path.name, "batch", None)
        body = BatchCreate(input_file_id=source.id, endpoint=endpoint, metadata=labels or None)
        batch = create_batch(s, settings, None, body, submitted_by=f"cli:{getpass.getuser()}")
        batch_id, total, job_id = batch.id, batch.total, batch.job_id
    console.print(f"batch {batch_id}: {total} requests from {path.name} queued as job {job_id}",
                  highlight=False)
    if follow:
        raise typer.Exit(_follow(batch_id))


@app.command("cancel")
def cancel(batch_id: str = typer.Argument(..., help="Batch id.")) -> None:
    """Cancel a batch: lines in flight finish, then it is cancelled with what finished."""
    from studio.batches import cancel_batch, view

    settings = settings_with_db()
    with session_scope(settings.db_url) as s:
        b = view(s, cancel_batch(s, settings, None, batch_id, by=f"cli:{getpass.getuser()}"))
    console.print(f"batch {b.id} {_status(b.status)}: {_progress(b)}", highlight=False)


@app.command("download")
def download(batch_id: str = typer.Argument(..., help="Batch id."),
             out_dir: Path = typer.Option(Path("."), "--dir", help="Where to write the files.")) -> None:
    """Write the batch's output and error files (BATCH_output.jsonl, BATCH_error.jsonl)."""
    from studio.batches.files import get_file, read_bytes
    from studio.errors import StudioError
    from studio.store.artifacts import ArtifactStore

    b = _view(batch_id)
    settings = settings_with_db()
    store = ArtifactStore(settings.artifacts)
    written = []
    out_dir.mkdir(parents=True, exist_ok=True)
    for file_id in (b.output_file_id, b.error_file_id):
        if file_id is None:
            continue
        with session_scope(settings.db_url) as s:
            row = get_file(s, None, file_id)
            dest = out_dir / row.filename
            dest.write_bytes(read_bytes(store, row))
        written.append(str(dest))
    if not written:
        raise StudioError(f"batch {batch_id} is {b.status} and has no output or error file yet",
                          f"wait for it to end (`studio batches show {batch_id} --follow`)")
    console.print("wrote " + ", ".join(written), highlight=False)
