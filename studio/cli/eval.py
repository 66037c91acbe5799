"""``studio eval``: run an EvalSpec (configs/eval/*.yaml), list runs, show one with a live
leaderboard, cancel, and the leaderboard pooled over every run on a dataset."""

from __future__ import annotations

import getpass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Group
from rich.live import Live
from rich.table import Table

from studio.cli.common import console, settings_with_db
from studio.store.db import session_scope

if TYPE_CHECKING:
    from studio.evals.views import Leaderboard

app = typer.Typer(help="Evaluation: compare models on a dataset with scorers and judges.", no_args_is_help=True)


def _fmt(x: Any, digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}f}" if isinstance(x, float) else str(x)


def leaderboard_tables(board: Leaderboard | dict[str, Any], title: str = "") -> Group:
    """Scores (mean ± 95% CI per model × scorer), pairwise win rates, latency and cost (``board``:
    the view, or its JSON as an event or the API gives it)."""
    from studio.evals.views import Leaderboard

    board = board if isinstance(board, Leaderboard) else Leaderboard.model_validate(board)
    scores = Table("model", "scorer", "mean", "95% CI", "n", "unscored", title=title or None, title_justify="left")
    for r in board.scores:
        ci = r.ci95
        scores.add_row(r.model, r.scorer, _fmt(r.mean), f"[{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "-",
                       str(r.n), str(r.unscored))
    parts: list[Any] = [scores]
    wins = [w for w in board.win_rates if w.model < w.opponent]
    if wins:
        t = Table("scorer", "model", "vs", "win rate", "n")
        for w in wins:
            t.add_row(w.scorer, w.model, w.opponent, _fmt(w.win_rate), str(w.n))
        parts.append(t)
    if board.models:
        t = Table("model", "answers", "errors", "cache hits", "latency mean ms", "p95 ms", "cost USD")
        for m in board.models:
            t.add_row(m.model, str(m.answers), str(m.errors), str(m.cache_hits),
                      _fmt(m.latency_ms_mean, 1), _fmt(m.latency_ms_p95, 1), f"{m.cost_usd:.6f}")
        parts.append(t)
    return Group(*parts)


def watch(settings, eval_id: int) -> int:
    """A live table until the run ends; exit code 0 when it SUCCEEDED."""
    from studio.evals.views import follow_eval

    status, end = "QUEUED", None
    with Live(console=console, refresh_per_second=4) as live:
        for ev in follow_eval(settings.db_url, eval_id):
            if ev.kind == "status":
                status = ev.data["status"]
                console.print(f"[{status}] {ev.data['reason']}", highlight=False)
            elif ev.kind == "task":
                d = ev.data
                console.print(f"lm-eval task {d['task']} on {d['model']}: {d['docs']} documents in "
                              f"{d['seconds']:.1f} s", highlight=False)
            elif ev.kind == "leaderboard":
                p = ev.data["progress"]
                live.update(leaderboard_tables(ev.data, f"eval {eval_id} · {status} · {p['text']}"))
            elif ev.kind == "end":
                end = ev.data
    if end and end["status"] != "SUCCEEDED":
        console.print(f"[red]eval {eval_id} ended {end['status']}[/]: {end.get('error') or ''}", highlight=False)
        return 1
    return 0


@app.command("run")
def run_cmd(
    spec_path: Path = typer.Argument(..., help="An EvalSpec YAML, e.g. configs/eval/reverse_tiny.yaml."),
    overrides: list[str] = typer.Argument(None, help="key=value overrides, e.g. limit=50 'models=[tiny,rev@2]'"),
    watch_: bool = typer.Option(False, "--watch", "-w", help="Show the live leaderboard until the run ends."),
    here: bool = typer.Option(False, "--here", help="Run in this process instead of as a Ray job "
                              "(still through the gateway of the running studio)."),
) -> None:
    """Check a spec (dataset, rows, references, model names) and run it: queued for the studio's
    scheduler (a Ray job), or in this process with --here."""
    from studio import stack
    from studio.evals.queue import enqueue_eval
    from studio.evals.run import create_here, run_job
    from studio.evals.spec import EvalSpec, runs_lm_eval
    from studio.recipes import load_recipe

    settings = settings_with_db()
    spec = load_recipe(spec_path, EvalSpec, overrides or [])
    by = f"cli:{getpass.getuser()}"
    with console.status("preflight: dataset, scorers, model names …"):
        if here:
            eval_id = create_here(settings.db_url, spec, by)
        else:
            with session_scope(settings.db_url) as s:
                eval_id = enqueue_eval(s, spec, submitted_by=by).id
    on = "lm-eval " + ", ".join(s.task for s in spec.scorers) if runs_lm_eval(spec) else spec.dataset
    console.print(f"eval [bold]{eval_id}[/]: {', '.join(spec.models)} on {on}", highlight=False)
    if here:
        if watch_:
            import threading

            t = threading.Thread(target=run_job, args=(settings, eval_id), daemon=True)
            t.start()
            code = watch(settings, eval_id)
            t.join()
            raise typer.Exit(code)
        with console.status(f"eval {eval_id} running …"):
            code = run_job(settings, eval_id)
        _show(settings, eval_id)
        raise typer.Exit(code)
    if not stack.health(settings):
        console.print("queued; run `studio up` to start it")
        return
    if watch_:
        raise typer.Exit(watch(settings, eval_id))
    console.print(f"watch it with `studio eval show {eval_id} --watch`")


@app.command("ls")
def ls(dataset: str | None = typer.Option(None, "--dataset", help="Only runs on this dataset name."),
       limit: int = typer.Option(50, "--limit")) -> None:
    """Eval runs, newest first."""
    from studio.cli.jobs import colored
    from studio.evals.queue import list_evals
    from studio.evals.views import eval_summary

    settings = settings_with_db()
    with session_scope(settings.db_url) as s:
        rows = [eval_summary(s, j) for j in list_evals(s, limit, 0, dataset)]
    table = Table("id", "name", "status", "dataset", "models", "scorers", "progress", "created")
    for r in rows:
        table.add_row(str(r.id), r.name, colored(r.status), r.dataset or "-", ", ".join(r.models),
                      ", ".join(r.scorers), r.progress.text,
                      r.created_at.isoformat()[:19])
    console.print(table)


def _show(settings, eval_id: int, results: int = 0) -> None:
    from studio.evals.queue import get_eval
    from studio.evals.views import eval_detail, results_page

    with session_scope(settings.db_url) as s:
        job = get_eval(s, eval_id)
        d = eval_detail(s, job)
        rows = results_page(s, job, limit=results) if results else []
    p = d.progress
    console.print(leaderboard_tables(d.leaderboard, f"eval {eval_id} · {d.name} · {d.status} · "
                                     f"{p.text} · {d.dataset}"))
    if d.error:
        console.print(f"[red]error[/] {d.error}", highlight=False)
    for r in rows:
        verdicts = ", ".join(f"{k}={_fmt(v.score, 2)}" + ("" if v.status == "scored" else f" ({v.status})")
                             for k, v in r.scores.items())
        console.print(f"#{r.datapoint} {r.model}: {str(r.output)[:60]!r} · {verdicts}", highlight=False)


@app.command("show")
def show(eval_id: int = typer.Argument(..., help="The eval's id (see `studio eval ls`)."),
         watch_: bool = typer.Option(False, "--watch", "-w", help="Live table until the run ends."),
         results: int = typer.Option(0, "--results", help="Also print the first N per-datapoint results.")) -> None:
    """The leaderboard of one run (mean ± 95% CI, win rates, latency, cost)."""
    settings = settings_with_db()
    if watch_:
        raise typer.Exit(watch(settings, eval_id))
    _show(settings, eval_id, results)


@app.command("cancel")
def cancel(eval_id: int = typer.Argument(..., help="The eval's id.")) -> None:
    """Cancel a queued or running eval; results stored so far stay."""
    from studio.evals.queue import get_eval
    from studio.jobs.queue import request_cancel

    settings = settings_with_db()
    with session_scope(settings.db_url) as s:
        get_eval(s, eval_id)
        status = request_cancel(s, eval_id, f"cli:{getpass.getuser()}").status
    console.print(f"eval {eval_id}: cancel requested ({status})")


@app.command("leaderboard")
def leaderboard(dataset: str = typer.Argument(..., help="Dataset name, name@N or snapshot id.")) -> None:
    """Every run on a dataset snapshot, pooled; models keyed by the version that answered."""
    from studio.data.snapshots import resolve_snapshot
    from studio.evals.leaderboard import dataset_leaderboard
    from studio.evals.views import DatasetLeaderboard

    settings = settings_with_db()
    with session_scope(settings.db_url) as s:
        board = DatasetLeaderboard.model_validate(dataset_leaderboard(s, resolve_snapshot(s, dataset).snapshot.id))
    console.print(leaderboard_tables(board, f"{dataset} · runs {', '.join(map(str, board.runs)) or 'none'}"))
