from __future__ import annotations

import getpass
from pathlib import Path

import typer

from studio.cli.common import console, settings_with_db
from studio.store.db import session_scope

app = typer.Typer(help="Training: submit a recipe (configs/train/*.yaml) as a job.", no_args_is_help=True)


@app.command("submit")
def submit(
    recipe: Path = typer.Argument(..., help="A training recipe, e.g. configs/train/sft-tiny.yaml."),
    overrides: list[str] = typer.Argument(None, help="key=value overrides, e.g. hyper.epochs=3 lora.r=16"),
    follow: bool = typer.Option(False, "--follow", "-f", help="Show status changes and step progress until done."),
    logs: bool = typer.Option(False, "--logs", help="With --follow: print the run's log lines too."),
) -> None:
    """Check a recipe (fields, model, dataset and its kind) and queue it. The studio's scheduler
    starts it on Ray; with --follow, watch it to the end (exit 1 unless it SUCCEEDED)."""
    from studio import stack
    from studio.cli.jobs import follow_in_terminal
    from studio.recipes import load_recipe
    from studio.train.queue import enqueue_train_job
    from studio.train.spec import TrainSpec

    settings = settings_with_db()
    spec = load_recipe(recipe, TrainSpec, overrides or [], home=settings.home_abs)
    with console.status("preflight: checking the model and the dataset …"), session_scope(settings.db_url) as s:
        job = enqueue_train_job(s, spec, submitted_by=f"cli:{getpass.getuser()}")
        job_id, dataset = job.id, TrainSpec.model_validate(job.spec).data.dataset
    console.print(f"job [bold]{job_id}[/] QUEUED: {spec.method} {spec.name!r} on {dataset} "
                  f"(up to {spec.max_retries + 1} attempts)", highlight=False)
    if not stack.health(settings):
        console.print("queued; run `studio up` to start it")
        return
    if follow:
        raise typer.Exit(follow_in_terminal(settings, job_id, logs=logs))
    console.print(f"follow it with `studio jobs logs {job_id} --follow` or `studio jobs show {job_id}`")
