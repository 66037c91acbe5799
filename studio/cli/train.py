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
    force: bool = typer.Option(False, "--force", help="Queue it even if `studio train plan` says it cannot fit."),
) -> None:
    """Check a recipe (fields, model, dataset and its kind, whether it fits: `studio train plan`) and
    queue it. The studio's scheduler starts it on Ray; with --follow, watch it to the end (exit 1
    unless it SUCCEEDED)."""
    from studio import stack
    from studio.cli.jobs import follow_in_terminal
    from studio.recipes import load_recipe
    from studio.train.queue import enqueue_train_job
    from studio.train.spec import TrainSpec

    settings = settings_with_db()
    spec = load_recipe(recipe, TrainSpec, overrides or [], home=settings.home_abs)
    with console.status("preflight: checking the model and the dataset …"), session_scope(settings.db_url) as s:
        job = enqueue_train_job(s, spec, submitted_by=f"cli:{getpass.getuser()}", check_fit=not force)
        job_id, dataset = job.id, TrainSpec.model_validate(job.spec).data.dataset
    console.print(f"job [bold]{job_id}[/] QUEUED: {spec.method} {spec.name!r} on {dataset} "
                  f"(up to {spec.max_retries + 1} attempts)", highlight=False)
    if not stack.health(settings):
        console.print("queued; run `studio up` to start it")
        return
    if follow:
        raise typer.Exit(follow_in_terminal(settings, job_id, logs=logs))
    console.print(f"follow it with `studio jobs logs {job_id} --follow` or `studio jobs show {job_id}`")


@app.command("sweep")
def sweep(
    recipe: Path = typer.Argument(..., help="A sweep, e.g. configs/sweeps/reverse_tiny_lr.yaml."),
    overrides: list[str] = typer.Argument(None, help="key=value overrides, e.g. num_trials=2 train.hyper.max_steps=20"),
    follow: bool = typer.Option(False, "--follow", "-f", help="Show status changes until done, then the trials."),
    force: bool = typer.Option(False, "--force", help="Queue it even if one trial's plan says it cannot fit."),
) -> None:
    """Check a sweep (the space's fields and domains, the recipe as `studio train submit` does) and
    queue it as one job; its trials run on Ray Tune and the best one is registered
    (docs/training.md, "Sweeps"). With --follow, watch it and print its trials (exit 1 unless it
    SUCCEEDED)."""
    from studio import stack
    from studio.cli.jobs import follow_in_terminal, print_trials
    from studio.jobs.queue import get_job, sweep_trials
    from studio.train.sweep import enqueue_sweep_job, load_sweep

    settings = settings_with_db()
    spec = load_sweep(recipe, overrides or [], home=settings.home_abs)
    with console.status("preflight: checking the space, the model and the dataset …"), session_scope(settings.db_url) as s:
        job_id = enqueue_sweep_job(s, spec, submitted_by=f"cli:{getpass.getuser()}", check_fit=not force).id
    console.print(f"sweep job [bold]{job_id}[/] QUEUED: {spec.num_trials} trial(s) of {spec.train.method} "
                  f"{spec.train.name!r} over {', '.join(spec.space)}, {spec.search} search, best by {spec.metric}",
                  highlight=False)
    if not stack.health(settings):
        console.print("queued; run `studio up` to start it")
        return
    if follow:
        code = follow_in_terminal(settings, job_id, logs=False)
        with session_scope(settings.db_url) as s:
            print_trials(sweep_trials(s, get_job(s, job_id)))
        raise typer.Exit(code)
    console.print(f"follow it with `studio jobs show {job_id}` (its trials) or `studio jobs logs {job_id} --follow`")


@app.command("plan")
def plan(
    recipe: Path = typer.Argument(..., help="A training recipe, e.g. configs/train/sft_reverse_tiny.yaml."),
    overrides: list[str] = typer.Argument(None, help="key=value overrides, e.g. hyper.batch_size=4"),
    as_json: bool = typer.Option(False, "--json", help="Print the plan as JSON (the body of POST /api/jobs/plan's answer)."),
) -> None:
    """What a recipe will need and take, before anything is queued: parameters trained, peak memory
    per worker, tokens, steps, wall time from this cluster's measured tokens/s, and whether it fits
    the free resources (exit 1 when it does not). docs/training.md, "Plan a run"."""
    from studio.recipes import load_recipe
    from studio.train.plan import plan_run
    from studio.train.spec import TrainSpec

    settings = settings_with_db()
    spec = load_recipe(recipe, TrainSpec, overrides or [], home=settings.home_abs)
    with console.status("planning: reading the model config and the dataset …"), session_scope(settings.db_url) as s:
        p = plan_run(spec, s)
    if as_json:
        console.print_json(p.model_dump_json())
    else:
        print_plan(p)
    if not p.fit.fits:
        raise typer.Exit(1)


def print_plan(p) -> None:
    from rich.table import Table

    m = p.memory
    console.print(f"[bold]{p.name}[/]: {p.method} {p.adapter} on {p.base_model} ({p.model.model_type})", highlight=False)
    console.print(f"parameters trained  {p.params_trained:,} of {p.model.params_total:,} ({100 * p.trained_share:.2f} %)")
    t = Table(title=f"peak memory per worker ({'GPU memory' if m.device == 'gpu' else 'RSS'}), MiB", show_header=False)
    for label, value in (("runtime", m.runtime_mb), ("weights", m.weights_mb), ("LoRA (fp32)", m.trained_mb),
                         ("gradients", m.gradients_mb), ("optimizer (AdamW)", m.optimizer_mb),
                         ("activations", m.activations_mb), ("data", m.data_mb), ("[bold]total[/]", m.total_mb)):
        t.add_row(label, f"{value:,.1f}")
    console.print(t)
    est = " (estimated: characters / 4)" if p.tokens_estimated else ""
    console.print(f"data                {p.rows:,} rows, {p.tokens:,} tokens{est}, longest {p.seq_length} tokens")
    console.print(f"steps               {p.steps:,} on {p.num_workers} worker(s), {p.tokens_to_train:,} tokens to train")
    if p.wall_s is None:
        console.print("wall time           unknown (no earlier job on this base model recorded tokens/s)")
    else:
        console.print(f"wall time           ~{p.wall_s / 60:,.1f} min at {p.tokens_per_s:,.0f} tokens/s "
                      f"(jobs {', '.join(map(str, p.throughput_from[:5]))})", highlight=False)
    verdict = "[green]fits[/]" if p.fit.fits else "[red]does not fit[/]"
    console.print(f"{verdict}: {p.fit.reason}", highlight=False)
    for knob in p.fit.knobs:
        console.print(f"  try {knob}", highlight=False)
