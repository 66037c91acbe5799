from __future__ import annotations

import json

import typer
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Column, Table

from studio.cli.common import console, settings_with_db
from studio.jobs.status import JobStatus
from studio.settings import StudioSettings
from studio.store.db import session_scope

app = typer.Typer(help="Jobs: list, inspect, follow the logs of, and cancel training jobs.", no_args_is_help=True)

_COLORS = {"SUCCEEDED": "green", "FAILED": "red", "CANCELLED": "yellow", "RUNNING": "cyan",
           "CHECKPOINTING": "cyan", "RETRYING": "magenta"}


def colored(status: str, width: int = 0) -> str:
    """The status in its color, padded to ``width`` visible characters (markup has no width)."""
    color = _COLORS.get(status)
    padding = " " * max(0, width - len(status))
    return (f"[{color}]{status}[/]" if color else status) + padding


def follow_in_terminal(settings: StudioSettings, job_id: int, *, logs: bool) -> int:
    """Print status changes (and log lines) with a progress bar and the job's progress line
    (``step 120/600 · epoch 1.2/3 · ETA 2m10s``; rows or chunks for an eval or synthesis) until
    the job is done. Returns the exit code: 0 when it SUCCEEDED."""
    from studio.jobs import ray_jobs
    from studio.jobs.follow import follow_job

    progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                        TextColumn("{task.fields[detail]}"), TimeElapsedColumn(), console=console, transient=True)
    task = progress.add_task(f"job {job_id}", total=None, detail="")
    factory = (lambda: ray_jobs.jobs_client(settings)) if logs else None
    end = None
    try:
        with progress:
            for ev in follow_job(settings, job_id, logs_client=factory):
                if ev.kind == "status":
                    reason = ev.data["reason"].splitlines()[0] if ev.data["reason"] else ""
                    progress.console.print(f"job {job_id} {colored(ev.data['status'])}  {reason}", highlight=False)
                    progress.update(task, description=f"job {job_id} {ev.data['status']} (attempt {ev.data['attempt']})")
                elif ev.kind == "progress":
                    progress.update(task, completed=ev.data["done"], total=ev.data["total"], detail=ev.data["text"])
                elif ev.kind == "log":
                    progress.console.print(ev.data["line"], markup=False, highlight=False)
                elif ev.kind == "end":
                    end = ev.data
    except KeyboardInterrupt:
        console.print(f"stopped following; job {job_id} goes on (`studio jobs cancel {job_id}` stops it)")
        return 130
    if end["status"] == JobStatus.SUCCEEDED:
        console.print(f"job {job_id} [green]SUCCEEDED[/] after {end['attempts']} attempt(s)")
        return 0
    console.print(f"job {job_id} {colored(end['status'])}" + (f": {end['error']}" if end["error"] else ""),
                  highlight=False)
    return 1


@app.command("ls")
def ls(
    status: list[JobStatus] = typer.Option([], "--status", help="Only jobs in this status (repeatable)."),
    limit: int = typer.Option(50, "--limit", help="How many, newest first."),
) -> None:
    """List jobs, newest first."""
    from studio.jobs.queue import job_summaries, list_jobs

    settings = settings_with_db()
    with session_scope(settings.db_url) as s:
        jobs = job_summaries(s, list_jobs(s, [x.value for x in status], limit))
    # Identifying columns keep their width in a narrow terminal; the others shrink.
    table = Table("id", "kind", Column("name", min_width=max((len(j.name) for j in jobs), default=4)), "method",
                  Column("status", min_width=13), "progress", "attempts", "by", "created", "error")
    for j in jobs:
        table.add_row(str(j.id), j.kind, j.name, j.method or "", colored(j.status),
                      j.progress.text if j.progress else "", f"{j.attempts}/{j.max_retries + 1}",
                      j.submitted_by or "", j.created_at.isoformat()[:16],
                      j.error.splitlines()[0][:60] if j.error else "")
    console.print(table)


@app.command("show")
def show(job_id: int = typer.Argument(..., help="Job id (see `studio jobs ls`).")) -> None:
    """A job's spec, status history, progress, result and error."""
    from studio.jobs.queue import get_job, job_detail, metrics_by_key

    settings = settings_with_db()
    with session_scope(settings.db_url) as s:
        d = job_detail(s, get_job(s, job_id))
        series = metrics_by_key(s, job_id)
    # The spec is the kind's own, free-form: a training job's names its method, data and base.
    spec = d.spec or {}
    console.print(f"job [bold]{d.id}[/] {d.name} · {colored(d.status)} · {spec.get('method')} "
                  f"on {spec.get('data', {}).get('dataset')} · base {spec.get('base_model')}")
    console.print(f"attempts {d.attempts}/{d.max_retries + 1} · submitted by {d.submitted_by} · "
                  f"ray submission {d.ray_submission_id or '-'} · checkpoint {d.checkpoint_uri or '-'}")
    if d.progress is not None:
        console.print(d.progress.text, highlight=False)
    # Lines, not a table: a FAILED reason carries a log tail, unreadable when wrapped in a cell.
    for e in d.events:
        first, *rest = e.reason.splitlines() or [""]
        console.print(f"{e.at.isoformat()[:19]}  {colored(e.to, 13)}  {first}", highlight=False)
        for line in rest:
            console.print(f"{'':>21}  {line}", markup=False, highlight=False)
    if series:
        console.print("metrics (last value): " + ", ".join(f"{k}={v[-1].value:.4g}@{v[-1].step}"
                                                         for k, v in series.items()), highlight=False)
    if d.result is not None and d.result.dump():
        console.print("result: " + json.dumps(d.result.dump()), highlight=False)
    if d.error:
        console.print(f"[red]error:[/] {d.error}", highlight=False)


@app.command("logs")
def logs(
    job_id: int = typer.Argument(..., help="Job id."),
    follow: bool = typer.Option(False, "--follow", "-f", help="Keep printing until the job is done."),
    attempt: int | None = typer.Option(None, "--attempt", help="An earlier attempt; default: the latest."),
) -> None:
    """The Ray job logs of a job's attempt (its training run's stdout and stderr)."""
    from studio import stack
    from studio.jobs import ray_jobs
    from studio.jobs.queue import get_job

    settings = settings_with_db()
    with session_scope(settings.db_url) as s:
        job = get_job(s, job_id)
        sid, status = job.ray_submission_id, job.status
    if follow:
        if not stack.health(settings):
            console.print("[yellow]the studio is not up[/]: no scheduler moves this job (`studio up` starts it)")
        raise typer.Exit(follow_in_terminal(settings, job_id, logs=True))
    sid = ray_jobs.submission_id(job_id, attempt) if attempt else sid
    if sid is None:
        console.print(f"job {job_id} is {status} and has not been submitted to Ray yet: no logs")
        return
    print(ray_jobs.job_logs(ray_jobs.jobs_client(settings), sid), end="")


@app.command("cancel")
def cancel(job_id: int = typer.Argument(..., help="Job id.")) -> None:
    """Cancel a job: at once if it has not started; a running one is stopped by the scheduler."""
    import getpass

    from studio.jobs.queue import request_cancel

    settings = settings_with_db()
    with session_scope(settings.db_url) as s:
        job = request_cancel(s, job_id, f"cli:{getpass.getuser()}")
        status = job.status
    if status == JobStatus.CANCELLED:
        console.print(f"job {job_id} [yellow]CANCELLED[/]")
    elif status == JobStatus.FAILED:
        console.print(f"job {job_id} stays FAILED and will not be retried")
    else:
        console.print(f"job {job_id} is {status}: cancel requested; the scheduler stops its Ray job within "
                      f"a second (`studio jobs show {job_id}`)")
