from __future__ import annotations

import json

import typer
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Column, Table

from studio.cli.common import console, settings_with_db
from studio.jobs.status import JobStatus
from studio.settings import StudioSettings
from studio.store.db import session_scope

app = typer.Typer(help="Jobs: list, inspect, compare, follow the logs of, and cancel training jobs.", no_args_is_help=True)

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
    train = spec.get("train", spec) if d.kind == "sweep" else spec
    console.print(f"job [bold]{d.id}[/] {d.name} · {colored(d.status)} · "
                  f"{'sweep of ' if d.kind == 'sweep' else ''}{train.get('method')} "
                  f"on {train.get('data', {}).get('dataset')} · base {train.get('base_model')}")
    if d.parent_id is not None:
        console.print(f"trial of sweep job {d.parent_id}")
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
    if d.trials is not None:
        print_trials(d.trials)


def print_trials(trials) -> None:
    """A sweep's trials table: trial job, params, eval_loss, exact match, state, time."""
    from rich.table import Table

    t = Table(title=f"trials ({len(trials)})")
    for col in ("job", "params", "eval_loss", "exact match", "state", "time (s)", "registered"):
        t.add_column(col)
    for tr in trials:
        t.add_row(str(tr.job_id), ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                            for k, v in tr.params.items()),
                  "-" if tr.eval_loss is None else f"{tr.eval_loss:.4f}",
                  "-" if tr.score is None else f"{tr.score:.3f}", colored(tr.status),
                  "-" if tr.wall_s is None else f"{tr.wall_s:.0f}", tr.registered or "")
    console.print(t)


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


def _num(x: float | None) -> str:
    return "—" if x is None else f"{x:.4g}"


@app.command("compare")
def compare(
    job_ids: list[int] = typer.Argument(..., help="2 to 8 training job ids (see `studio jobs ls`)."),
    all_fields: bool = typer.Option(False, "--all", help="Every recipe field, not only those that differ."),
    as_json: bool = typer.Option(False, "--json", help="The comparison as JSON (GET /api/jobs/compare's body)."),
) -> None:
    """Training runs side by side: the recipe fields that differ, wall time, tokens/s, peak memory,
    loss curves (first → last, best), final metrics and the eval scores of the versions they registered."""
    from studio.evals.leaderboard import version_scores
    from studio.jobs.progress import duration_text
    from studio.train.compare import compare_runs, parse_ids

    settings = settings_with_db()
    with session_scope(settings.db_url) as s:
        c = compare_runs(s, parse_ids([",".join(map(str, job_ids))]), scores=version_scores)
    if as_json:
        print(c.model_dump_json(indent=2))
        return
    heads = [f"#{r.id} {r.name}" for r in c.runs]
    runs = Table("", *heads, title="runs")
    peak = [r.peak_memory for r in c.runs]
    for label, cells in (
        ("method", [r.method or "—" for r in c.runs]),
        ("status", [colored(r.status) for r in c.runs]),
        ("wall time", ["—" if r.wall_s is None else duration_text(r.wall_s) for r in c.runs]),
        ("tokens/s", [_num(r.tokens_per_s) for r in c.runs]),
        ("peak memory", ["—" if p is None else f"{p.value:.4g} ({p.key})" for p in peak]),
        ("registered", [", ".join(v.ref for v in r.versions) or "—" for r in c.runs]),
    ):
        runs.add_row(label, *cells)
    console.print(runs)

    differing = [f for f in c.recipe if f.differs]
    recipe = Table("field", *heads, title="recipe" + ("" if all_fields else " (fields that differ; --all for every one)"))
    for f in c.recipe if all_fields else differing:
        style = "bold yellow" if f.differs else ""
        recipe.add_row(f.key, *["—" if v is None else json.dumps(v) for v in f.values], style=style)
    console.print(recipe if recipe.rows else f"recipe: the {len(c.recipe)} fields are the same in every run")

    curves = Table("curve", *heads, title="loss curves: first → last (best @ step)")
    for k in c.curve_keys:
        cells = []
        for r in c.runs:
            ps = r.curves.get(k) or []
            best = min(ps, key=lambda p: p.value) if ps else None
            cells.append("—" if not ps else f"{ps[0].value:.4g} → {ps[-1].value:.4g} ({best.value:.4g} @ {best.step})")
        curves.add_row(k, *cells)
    if c.curve_keys:
        console.print(curves)

    keys = sorted({k for r in c.runs for k in r.final_metrics})
    final = Table("metric", *heads, title="final metrics")
    for k in keys:
        final.add_row(k, *[_num(r.final_metrics.get(k)) for r in c.runs])
    console.print(final if keys else "final metrics: — (no run recorded any)")

    scores = Table("version", "eval", "dataset", "scorer", "mean", "n", title="eval scores of the registered versions")
    for r in c.runs:
        for v in r.versions:
            for sc in v.scores:
                scores.add_row(v.ref, f"#{sc.eval_id}", sc.dataset or "—", sc.scorer, _num(sc.mean), str(sc.n))
    console.print(scores if scores.rows else "eval scores: — (no eval ran on a version these runs registered)")
